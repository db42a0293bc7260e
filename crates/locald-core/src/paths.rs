//! Where locald keeps things: the socket in the runtime dir, state and logs in the state dir.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: must be a directory owned by you with mode 0700 (not a symlink); remove it or fix it")]
    Unsafe(PathBuf),
    #[error("HOME is not set (nor the XDG_*_HOME variable that would replace it)")]
    NoHome,
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// `$XDG_RUNTIME_DIR/locald`, or `/tmp/locald-<uid>` when unset; created 0700 and checked to be
/// ours and private either way, since in /tmp another user may have planted it first.
pub fn runtime_dir() -> Result<PathBuf, PathError> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base).join("locald"),
        None => std::env::temp_dir().join(format!("locald-{}", uid())),
    };
    private_dir(&dir)?;
    Ok(dir)
}

pub fn socket_path() -> Result<PathBuf, PathError> {
    Ok(runtime_dir()?.join("locald.sock"))
}

/// `$XDG_STATE_HOME/locald` (default `~/.local/state/locald`): logs and supervisor state.
pub fn state_dir() -> Result<PathBuf, PathError> {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

/// `$XDG_CACHE_HOME/locald` (default `~/.cache/locald`): unpacked container images.
pub fn cache_dir() -> Result<PathBuf, PathError> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// The directory locald owns inside each XDG base directory.
const APP_DIR: &str = "locald";

/// `$<var>/locald`, or `~/<default>/locald`; created private to the user.
fn xdg_dir(var: &str, default: &str) -> Result<PathBuf, PathError> {
    let base = match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(PathError::NoHome)?).join(default),
    };
    let dir = base.join(APP_DIR);
    fs::create_dir_all(&base).map_err(|source| PathError::Io { path: base.clone(), source })?;
    private_dir(&dir)?;
    Ok(dir)
}

/// `$XDG_DATA_HOME/locald` (default `~/.local/share/locald`): the local CA lives in `ca/` here.
pub fn data_dir() -> Result<PathBuf, PathError> {
    xdg_dir("XDG_DATA_HOME", DATA_HOME)
}

/// Where [`data_dir`] is for a user whose environment is not at hand (another user's, under
/// sudo): the default under their home.
pub fn default_data_dir(home: &Path) -> PathBuf {
    home.join(DATA_HOME).join(APP_DIR)
}

const DATA_HOME: &str = ".local/share";

/// `<project>/.locald/containers`: what a project's image services keep between runs (their
/// bundles and writes), which `down` keeps and `down --volumes` removes.
pub fn containers_dir(project: &Path) -> PathBuf {
    project.join(".locald").join("containers")
}

/// Creates `dir` with mode 0700 or accepts an existing one only if it is a real directory owned
/// by the current user and closed to others.
pub fn private_dir(dir: &Path) -> Result<(), PathError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(PathError::Io { path: dir.to_owned(), source }),
    }
    let meta = fs::symlink_metadata(dir).map_err(|source| PathError::Io { path: dir.to_owned(), source })?;
    if !meta.is_dir() || meta.uid() != uid() {
        return Err(PathError::Unsafe(dir.to_owned()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        // Ours, only too open (e.g. made by an older tool with the default umask): tighten.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|source| PathError::Io { path: dir.to_owned(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `locald trust` under sudo reads is where the user's own `locald ca` writes by default.
    #[test]
    fn the_default_data_dir_is_the_xdg_default_under_home() {
        assert_eq!(default_data_dir(Path::new("/home/u")), Path::new("/home/u/.local/share/locald"));
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        let base = std::env::temp_dir().join(format!("locald-paths-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let dir = base.join("d");
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(private_dir(&link), Err(PathError::Unsafe(_))));
        fs::remove_dir_all(&base).unwrap();
    }
}
