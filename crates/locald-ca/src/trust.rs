//! Making browsers and tools trust the local CA: the system store (Debian/Ubuntu
//! `update-ca-certificates`, Fedora `update-ca-trust`, the macOS System keychain) and the user's
//! NSS databases (`~/.pki/nssdb` for Chromium, Firefox profiles) through `certutil`. Each store
//! can also say whether the CA is in it, for `locald doctor`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// A store could not be changed. `command` is the program and arguments as they were run.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{command}: {source}")]
    Spawn { command: String, source: io::Error },
    /// `message`: the last line the command wrote to stderr.
    #[error("{command} failed: {message}")]
    Failed { command: String, status: ExitStatus, message: String },
    #[error("{}: {source}", .path.display())]
    Anchor { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// `/usr/local/share/ca-certificates/*.crt` + `update-ca-certificates`.
    Debian,
    /// `/etc/pki/ca-trust/source/anchors/` + `update-ca-trust`.
    Fedora,
    /// `security add-trusted-cert` into the System keychain.
    MacOs,
}

#[derive(Debug, Clone)]
pub struct SystemStore {
    pub kind: SystemKind,
    /// Where the certificate is copied (Debian/Fedora).
    pub anchor: PathBuf,
}

/// One certificate identity per CA, so two users' CAs (or a re-made one) never collide.
fn tag(cert_pem: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in cert_pem.trim().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", hash >> 32)
}

/// The NSS nickname of this CA.
pub fn nickname(cert_pem: &str) -> String {
    format!("locald development CA {}", tag(cert_pem))
}

fn on_path(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).is_file())
}

/// The system store of this machine, if locald knows it.
pub fn system_store(cert_pem: &str) -> Option<SystemStore> {
    let name = format!("locald-{}", tag(cert_pem));
    if cfg!(target_os = "macos") {
        return Some(SystemStore { kind: SystemKind::MacOs, anchor: PathBuf::new() });
    }
    if on_path("update-ca-certificates") && Path::new("/usr/local/share/ca-certificates").is_dir() {
        let anchor = PathBuf::from(format!("/usr/local/share/ca-certificates/{name}.crt"));
        return Some(SystemStore { kind: SystemKind::Debian, anchor });
    }
    if on_path("update-ca-trust") {
        let anchor = PathBuf::from(format!("/etc/pki/ca-trust/source/anchors/{name}.pem"));
        return Some(SystemStore { kind: SystemKind::Fedora, anchor });
    }
    None
}

fn run(command: &mut Command) -> Result<(), TrustError> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|source| TrustError::Spawn { command: shown.clone(), source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr.lines().last().unwrap_or("").trim().to_owned();
    Err(TrustError::Failed { command: shown, status: out.status, message })
}

impl SystemStore {
    /// Needs root.
    pub fn install(&self, cert_path: &Path, cert_pem: &str) -> Result<(), TrustError> {
        match self.kind {
            SystemKind::MacOs => run(Command::new("/usr/bin/security")
                .args([
                    "add-trusted-cert",
                    "-d",
                    "-r",
                    "trustRoot",
                    "-k",
                    "/Library/Keychains/System.keychain",
                ])
                .arg(cert_path)),
            SystemKind::Debian | SystemKind::Fedora => {
                std::fs::write(&self.anchor, cert_pem)
                    .map_err(|source| TrustError::Anchor { path: self.anchor.clone(), source })?;
                run(&mut self.update_command())
            }
        }
    }

    /// Needs root. Not being there is not an error.
    pub fn remove(&self, cert_path: &Path) -> Result<(), TrustError> {
        match self.kind {
            SystemKind::MacOs => {
                run(Command::new("/usr/bin/security").args(["remove-trusted-cert", "-d"]).arg(cert_path))
            }
            SystemKind::Debian | SystemKind::Fedora => {
                match std::fs::remove_file(&self.anchor) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(source) => return Err(TrustError::Anchor { path: self.anchor.clone(), source }),
                }
                let mut update = self.update_command();
                if self.kind == SystemKind::Debian {
                    update.arg("--fresh");
                }
                run(&mut update)
            }
        }
    }

    fn update_command(&self) -> Command {
        match self.kind {
            SystemKind::Debian => Command::new("update-ca-certificates"),
            _ => Command::new("update-ca-trust"),
        }
    }

    pub fn contains(&self, cert_path: &Path, cert_pem: &str) -> bool {
        match self.kind {
            SystemKind::MacOs => Command::new("/usr/bin/security")
                .args(["verify-cert", "-c"])
                .arg(cert_path)
                .output()
                .is_ok_and(|o| o.status.success()),
            SystemKind::Debian | SystemKind::Fedora => {
                std::fs::read_to_string(&self.anchor).is_ok_and(|text| text.trim() == cert_pem.trim())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self.kind {
            SystemKind::MacOs => "the macOS System keychain".into(),
            SystemKind::Debian => {
                format!("the system store ({}, update-ca-certificates)", self.anchor.display())
            }
            SystemKind::Fedora => format!("the system store ({}, update-ca-trust)", self.anchor.display()),
        }
    }
}

pub fn certutil_available() -> bool {
    on_path("certutil")
}

/// The user's NSS databases: `~/.pki/nssdb` (Chromium, made when missing and `create` is set)
/// and every Firefox profile holding a `cert9.db`.
pub fn nss_databases(home: &Path, create: bool) -> Vec<PathBuf> {
    let mut dbs = Vec::new();
    let shared = home.join(".pki/nssdb");
    if shared.join("cert9.db").is_file() {
        dbs.push(shared);
    } else if create && certutil_available() {
        let made = std::fs::create_dir_all(&shared).is_ok()
            && Command::new("certutil")
                .args(["-N", "--empty-password", "-d"])
                .arg(format!("sql:{}", shared.display()))
                .output()
                .is_ok_and(|o| o.status.success());
        if made {
            dbs.push(shared);
        }
    }
    for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        let Ok(entries) = std::fs::read_dir(home.join(profiles)) else { continue };
        let mut found: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.join("cert9.db").is_file()).collect();
        found.sort();
        dbs.extend(found);
    }
    dbs
}

fn certutil(db: &Path) -> Command {
    let mut command = Command::new("certutil");
    command.arg("-d").arg(format!("sql:{}", db.display()));
    command
}

pub fn nss_install(db: &Path, cert_path: &Path, cert_pem: &str) -> Result<(), TrustError> {
    run(certutil(db).args(["-A", "-t", "C,,", "-n", &nickname(cert_pem), "-i"]).arg(cert_path))
}

pub fn nss_remove(db: &Path, cert_pem: &str) -> Result<(), TrustError> {
    if !nss_contains(db, cert_pem) {
        return Ok(());
    }
    run(certutil(db).args(["-D", "-n", &nickname(cert_pem)]))
}

pub fn nss_contains(db: &Path, cert_pem: &str) -> bool {
    certutil(db).args(["-L", "-n", &nickname(cert_pem)]).output().is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_the_certificate() {
        assert_eq!(nickname("A"), nickname("A\n"));
        assert_ne!(nickname("A"), nickname("B"));
    }

    #[test]
    fn a_failing_command_keeps_its_status_and_last_stderr_line() {
        let err = run(Command::new("sh").args(["-c", "echo noise >&2; echo 'certutil: bad db' >&2; exit 3"]))
            .unwrap_err();
        assert!(err.to_string().ends_with(" failed: certutil: bad db"), "{err}");
        assert!(matches!(err, TrustError::Failed { status, .. } if status.code() == Some(3)));

        let err = run(&mut Command::new("/nonexistent/certutil")).unwrap_err();
        assert!(err.to_string().starts_with("\"/nonexistent/certutil\": "), "{err}");
        let TrustError::Spawn { source, .. } = err else { panic!("{err}") };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_anchor_that_cannot_be_written_is_named_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let anchor = dir.path().join("missing-dir/locald.crt");
        let store = SystemStore { kind: SystemKind::Debian, anchor: anchor.clone() };
        let err = store.install(&anchor, "PEM").unwrap_err();
        assert!(
            matches!(&err, TrustError::Anchor { path, source } if path == &anchor && source.kind() == io::ErrorKind::NotFound)
        );
        assert!(err.to_string().starts_with(&format!("{}: ", anchor.display())), "{err}");
    }

    #[test]
    fn firefox_profiles_with_a_cert_db_are_found() {
        let home = tempfile::tempdir().unwrap();
        let profile = home.path().join(".mozilla/firefox/abc.default");
        std::fs::create_dir_all(&profile).unwrap();
        std::fs::write(profile.join("cert9.db"), b"").unwrap();
        std::fs::create_dir_all(home.path().join(".mozilla/firefox/empty")).unwrap();
        assert_eq!(nss_databases(home.path(), false), [profile]);
    }
}
