//! Which shim may be used: only one that is root-owned, setuid or carrying exactly the file
//! capability `cap_net_bind_service=ep` (the `--ports-only` install), and reachable through a
//! directory chain that only root can write. Anything else could be swapped by a user between
//! our check and its exec, so it is ignored however convenient (a development build next to
//! the binary, a copy in the home directory).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::filecap::{self, FileCaps};

pub const SHIM_NAME: &str = "locald-shim";
/// NixOS installs setuid programs as wrappers here (`security.wrappers`).
pub const NIXOS_WRAPPER: &str = "/run/wrappers/bin/locald-shim";
/// Where `sudo locald admin setup` installs the shim by default.
pub const DEFAULT_INSTALL_DIR: &str = "/usr/local/libexec/locald";
/// Points at another shim; it must pass exactly the same checks.
pub const ENV_OVERRIDE: &str = "LOCALD_SHIM";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Insecure {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{path} is owned by uid {uid}, not root")]
    NotRootOwned { path: PathBuf, uid: u32 },
    #[error("{0} is neither setuid nor carries exactly the file capability cap_net_bind_service=ep")]
    NotPrivileged(PathBuf),
    #[error("{path} is writable by group or others (mode {mode:o})")]
    Writable { path: PathBuf, mode: u32 },
    #[error("cannot inspect {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

/// The places searched, in order: `$LOCALD_SHIM` alone when set, else the NixOS wrapper and the
/// default install location.
pub fn candidates(env_override: Option<OsString>) -> Vec<PathBuf> {
    match env_override {
        Some(path) if !path.is_empty() => vec![PathBuf::from(path)],
        _ => vec![PathBuf::from(NIXOS_WRAPPER), Path::new(DEFAULT_INSTALL_DIR).join(SHIM_NAME)],
    }
}

/// Checks `path` and returns its canonical form, which is what must be executed: the checks
/// were made on it, not on a symlink that could be re-pointed.
pub fn check_trusted(path: &Path) -> Result<PathBuf, Insecure> {
    let canonical = fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Insecure::Missing(path.to_owned()),
        _ => Insecure::Unreadable { path: path.to_owned(), reason: e.to_string() },
    })?;
    let meta = stat(&canonical)?;
    // Only root (CAP_SETFCAP) can write the attribute, and any write to the file or chown of it
    // makes the kernel drop it, as it drops the setuid bit.
    let bind_capability = meta.is_file()
        && filecap::read(&canonical)
            .map_err(|e| Insecure::Unreadable { path: canonical.clone(), reason: e.to_string() })?
            == Some(FileCaps::BIND_ONLY);
    judge_file(&canonical, meta.is_file(), meta.uid(), meta.mode(), bind_capability)?;
    check_dir_chain(canonical.parent().unwrap_or(Path::new("/")))?;
    Ok(canonical)
}

/// Every directory from `dir` up to `/` must be owned by root and writable by nobody else.
pub fn check_dir_chain(dir: &Path) -> Result<(), Insecure> {
    for ancestor in dir.ancestors() {
        let meta = stat(ancestor)?;
        judge_dir(ancestor, meta.uid(), meta.mode())?;
    }
    Ok(())
}

fn stat(path: &Path) -> Result<fs::Metadata, Insecure> {
    fs::symlink_metadata(path)
        .map_err(|e| Insecure::Unreadable { path: path.to_owned(), reason: e.to_string() })
}

fn judge_file(
    path: &Path,
    is_file: bool,
    uid: u32,
    mode: u32,
    bind_capability: bool,
) -> Result<(), Insecure> {
    if !is_file {
        return Err(Insecure::NotAFile(path.to_owned()));
    }
    if uid != 0 {
        return Err(Insecure::NotRootOwned { path: path.to_owned(), uid });
    }
    if mode & 0o4000 == 0 && !bind_capability {
        return Err(Insecure::NotPrivileged(path.to_owned()));
    }
    if mode & 0o022 != 0 {
        return Err(Insecure::Writable { path: path.to_owned(), mode: mode & 0o7777 });
    }
    Ok(())
}

/// Strict on purpose: a sticky world-writable directory (like /tmp) is refused too, since its
/// other users could still pre-create names in it.
fn judge_dir(path: &Path, uid: u32, mode: u32) -> Result<(), Insecure> {
    if uid != 0 {
        return Err(Insecure::NotRootOwned { path: path.to_owned(), uid });
    }
    if mode & 0o022 != 0 {
        return Err(Insecure::Writable { path: path.to_owned(), mode: mode & 0o7777 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/x/locald-shim";

    #[test]
    fn a_root_owned_setuid_file_not_writable_by_others_is_trusted() {
        assert_eq!(judge_file(Path::new(P), true, 0, 0o104755, false), Ok(()));
        assert_eq!(judge_file(Path::new(P), true, 0, 0o104750, false), Ok(()));
    }

    #[test]
    fn a_root_owned_file_with_the_bind_capability_is_trusted_under_the_same_rules() {
        let p = Path::new(P);
        assert_eq!(judge_file(p, true, 0, 0o100755, true), Ok(()));
        assert!(matches!(judge_file(p, true, 1000, 0o100755, true), Err(Insecure::NotRootOwned { .. })));
        assert!(matches!(judge_file(p, true, 0, 0o100775, true), Err(Insecure::Writable { .. })));
        assert!(matches!(judge_file(p, true, 0, 0o100757, true), Err(Insecure::Writable { .. })));
    }

    #[test]
    fn files_that_a_user_could_have_made_or_changed_are_not() {
        let p = Path::new(P);
        assert!(matches!(judge_file(p, false, 0, 0o104755, false), Err(Insecure::NotAFile(_))));
        assert!(matches!(
            judge_file(p, true, 1000, 0o104755, false),
            Err(Insecure::NotRootOwned { uid: 1000, .. })
        ));
        assert!(matches!(judge_file(p, true, 0, 0o100755, false), Err(Insecure::NotPrivileged(_))));
        assert!(matches!(judge_file(p, true, 0, 0o104775, false), Err(Insecure::Writable { .. })));
        assert!(matches!(judge_file(p, true, 0, 0o104757, false), Err(Insecure::Writable { .. })));
    }

    #[test]
    fn directories_must_be_root_owned_and_closed() {
        let d = Path::new("/x");
        assert_eq!(judge_dir(d, 0, 0o40755), Ok(()));
        assert!(judge_dir(d, 1000, 0o40755).is_err());
        assert!(judge_dir(d, 0, 0o40775).is_err());
        assert!(judge_dir(d, 0, 0o41777).is_err(), "sticky /tmp-like directories are refused");
    }

    #[test]
    fn the_override_replaces_the_search_list() {
        assert_eq!(candidates(Some("/opt/s".into())), vec![PathBuf::from("/opt/s")]);
        assert_eq!(candidates(Some("".into())).len(), 2);
        assert_eq!(candidates(None)[0], PathBuf::from(NIXOS_WRAPPER));
    }

    #[test]
    fn a_user_owned_file_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locald-shim");
        fs::write(&file, "#!/bin/sh\n").unwrap();
        // Whatever the mode, a file we just created is ours (or lies in a non-root chain).
        assert!(check_trusted(&file).is_err());
        assert!(matches!(check_trusted(&dir.path().join("nope")), Err(Insecure::Missing(_))));
    }
}
