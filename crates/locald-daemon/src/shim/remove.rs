//! Try-Catch-Delegate removal (RFC 0091): remove as the user; only when that fails for lack of
//! permission — a container left root-owned files behind — ask the shim.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{Shim, ShimClientError};

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("cannot remove {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path} (root-owned files inside): {source}")]
    Shim { path: PathBuf, source: ShimClientError },
}

/// Removes `path` and everything below it. `path` should be inside a `.locald` directory, which
/// is the only place the shim will help with.
pub async fn force_remove_dir_all(path: &Path) -> Result<(), RemoveError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || force_remove_dir_all_blocking(&owned, None))
        .await
        .expect("the removal does not panic")
}

/// The same, for callers already off the async threads. `shim`: the one to ask when removal
/// as the user is not permitted (discovered then when `None`).
pub fn force_remove_dir_all_blocking(path: &Path, shim: Option<&Shim>) -> Result<(), RemoveError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let cleaned = match shim {
                Some(shim) => shim.cleanup(path),
                None => Shim::discover().and_then(|shim| shim.cleanup(path)),
            };
            cleaned.map_err(|source| RemoveError::Shim { path: path.to_owned(), source })
        }
        Err(source) => Err(RemoveError::Io { path: path.to_owned(), source }),
    }
}
