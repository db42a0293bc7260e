//! `locald ca`, `locald trust`, `locald untrust`: the local CA's path, and putting it into (or
//! taking it out of) the system store and the user's NSS databases.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use locald_ca::{self as tls, ca::CA_CERT, trust};

use crate::cli::TrustArgs;

/// Prints the CA certificate's path, making the CA on first use.
pub fn ca() -> anyhow::Result<ExitCode> {
    let ca = tls::user_ca()?;
    println!("{}", ca.cert_path().display());
    Ok(ExitCode::SUCCESS)
}

/// Which CA, and whose NSS databases (none when running as root for another user).
struct Target {
    cert_path: PathBuf,
    cert_pem: String,
    nss_home: Option<PathBuf>,
}

fn target(ca: Option<PathBuf>) -> anyhow::Result<Target> {
    let root = nix::unistd::geteuid().is_root();
    let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty() && u != "root");
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let (cert_path, nss_home) = match (ca, &sudo_user) {
        (Some(path), _) => (path, if root && sudo_user.is_some() { None } else { home }),
        // Under sudo the CA to trust is the invoking user's, never root's own.
        (None, Some(user)) if root => {
            let user_home = home_of(user).with_context(|| format!("no home directory for {user}"))?;
            let path = tls::default_ca_dir(&user_home).join(CA_CERT);
            if !path.is_file() {
                bail!("{} does not exist: run `locald ca` as {user} first, or pass --ca", path.display());
            }
            (path, None)
        }
        (None, _) => (tls::user_ca()?.cert_path().to_owned(), home),
    };
    let cert_pem = std::fs::read_to_string(&cert_path).with_context(|| format!("{}", cert_path.display()))?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("{} is not a PEM certificate", cert_path.display());
    }
    Ok(Target { cert_path, cert_pem, nss_home })
}

fn home_of(user: &str) -> Option<PathBuf> {
    nix::unistd::User::from_name(user).ok().flatten().map(|u| u.dir)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Trust,
    Untrust,
}

pub fn run(action: Action, args: &TrustArgs) -> anyhow::Result<ExitCode> {
    let t = target(args.ca.clone())?;
    let mut failed = false;
    if !args.system_only {
        failed |= !nss(action, &t);
    }
    if args.user_only {
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    let Some(store) = trust::system_store(&t.cert_pem) else {
        println!("no system certificate store locald knows here; trust {} by hand", t.cert_path.display());
        return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    };
    if nix::unistd::geteuid().is_root() {
        let result = match action {
            Action::Trust => store.install(&t.cert_path, &t.cert_pem),
            Action::Untrust => store.remove(&t.cert_path),
        };
        failed |= !report(action, &store.describe(), result);
    } else if !sudo_system(action, &t.cert_path)? {
        failed = true;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The NSS part, as the user. False when a database could not be changed.
fn nss(action: Action, t: &Target) -> bool {
    let Some(home) = &t.nss_home else {
        println!(
            "NSS databases (Chromium, Firefox) are per user: run `locald trust` as yourself, without sudo"
        );
        return true;
    };
    if !trust::certutil_available() {
        println!(
            "certutil not found: NSS databases (Chromium, Firefox) not changed \
             (install libnss3-tools on Debian/Ubuntu, nss-tools on Fedora)"
        );
        return true;
    }
    let mut ok = true;
    for db in trust::nss_databases(home, action == Action::Trust) {
        let result = match action {
            Action::Trust => trust::nss_install(&db, &t.cert_path, &t.cert_pem),
            Action::Untrust => trust::nss_remove(&db, &t.cert_pem),
        };
        ok &= report(action, &format!("NSS database {}", db.display()), result);
    }
    ok
}

/// Says what became of the CA in `place`; false when the change failed.
fn report(action: Action, place: &str, result: Result<(), trust::TrustError>) -> bool {
    match result {
        Ok(()) if action == Action::Trust => println!("trusted in {place}"),
        Ok(()) => println!("removed from {place}"),
        Err(e) => {
            eprintln!("locald: {place}: {e}");
            return false;
        }
    }
    true
}

/// The system store needs root: runs this same command through sudo, saying so.
fn sudo_system(action: Action, cert_path: &Path) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating the locald binary")?;
    let verb = if action == Action::Trust { "trust" } else { "untrust" };
    let shown = format!("sudo {} {verb} --system-only --ca {}", exe.display(), cert_path.display());
    let has_sudo =
        ["/usr/bin/sudo", "/bin/sudo", "/usr/local/bin/sudo"].iter().any(|p| Path::new(p).is_file());
    if !has_sudo {
        println!("the system store needs root; run: {shown}");
        return Ok(false);
    }
    println!("the system store needs root: running {shown}");
    let status = Command::new("sudo")
        .arg(&exe)
        .args([verb, "--system-only", "--ca"])
        .arg(cert_path)
        .status()
        .context("running sudo")?;
    Ok(status.success())
}
