//! Who may use the dashboard: a browser holding the daemon user's secret in a cookie. The
//! secret (32 random bytes) lives in `<state dir>/dashboard.secret`, 0600 in the 0700 state
//! directory, so only that user (and root) can read it. `locald dashboard` asks the daemon over
//! its private socket for a login token: random, single-use, short-lived, kept only in memory.
//! Opening `/login?token=…` trades it for the cookie. Every comparison is constant-time.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub(crate) const COOKIE: &str = "locald_dashboard";
/// How long a login URL works.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// Most login tokens pending at once (each `locald dashboard` makes one).
const MAX_PENDING: usize = 16;

pub(crate) struct Auth {
    /// Hex of the secret: the cookie's value.
    secret: String,
    pending: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    /// Loads the secret from `state_dir`, making it on the first start.
    pub(crate) fn load(state_dir: &Path) -> io::Result<Self> {
        let path = state_dir.join("dashboard.secret");
        let secret = match fs::read_to_string(&path) {
            Ok(text) if text.trim().len() == 64 && text.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
                // Tighten what an older umask or a copy left too open.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                text.trim().to_owned()
            }
            _ => {
                let secret = hex(&random::<32>()?);
                let tmp = state_dir.join("dashboard.secret.tmp");
                let _ = fs::remove_file(&tmp);
                let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                file.write_all(secret.as_bytes())?;
                file.sync_all()?;
                fs::rename(&tmp, &path)?;
                secret
            }
        };
        Ok(Self { secret, pending: Mutex::new(HashMap::new()) })
    }

    /// A new login token, valid once within [`TOKEN_LIFETIME`].
    pub(crate) fn issue(&self) -> io::Result<String> {
        let token = hex(&random::<24>()?);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, issued| issued.elapsed() < TOKEN_LIFETIME);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(token.clone(), Instant::now());
        Ok(token)
    }

    /// Whether `token` is a pending, unexpired one; it is used up either way.
    pub(crate) fn redeem(&self, token: &str) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Compared against every pending token in constant time, not looked up by hash.
        let found = pending.keys().find(|k| constant_time_eq(k.as_bytes(), token.as_bytes())).cloned();
        match found.and_then(|k| pending.remove(&k)) {
            Some(issued) => issued.elapsed() < TOKEN_LIFETIME,
            None => false,
        }
    }

    /// Whether a request's `Cookie` fields hold the secret.
    pub(crate) fn cookie_ok(&self, cookie: Option<&str>) -> bool {
        let Some(cookie) = cookie else { return false };
        let mut ok = false;
        for pair in cookie.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == COOKIE
            {
                ok |= constant_time_eq(value.as_bytes(), self.secret.as_bytes());
            }
        }
        ok
    }

    /// The `Set-Cookie` value after a login: host-only (no `Domain`), so no
    /// `<service>.<project>.localhost` ever receives it; not readable by scripts; HTTPS only; never
    /// sent with a request another site starts.
    pub(crate) fn set_cookie(&self) -> String {
        format!("{COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=31536000", self.secret)
    }
}

/// Equal length and bytes, in time that depends on the length only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_a_wrong_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path()).unwrap();
        let token = auth.issue().unwrap();
        assert!(!auth.redeem("0"));
        assert!(!auth.redeem(&token[1..]));
        assert!(auth.redeem(&token));
        assert!(!auth.redeem(&token), "single use");
    }

    #[test]
    fn the_secret_is_private_and_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = Auth::load(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join("dashboard.secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Auth::load(dir.path()).unwrap();
        assert_eq!(first.secret, again.secret);
        let cookie = format!("a=b; {COOKIE}={}", first.secret);
        assert!(again.cookie_ok(Some(&cookie)));
        assert!(!again.cookie_ok(Some(&format!("{COOKIE}={}x", first.secret))));
        assert!(!again.cookie_ok(Some("locald_dashboard=")));
        assert!(!again.cookie_ok(None));
    }
}
