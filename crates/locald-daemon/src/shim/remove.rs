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
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let owned = path.to_owned();
            tokio::task::spawn_blocking(move || Shim::discover().and_then(|shim| shim.cleanup(&owned)))
                .await
                .expect("the shim call does not panic")
                .map_err(|source| RemoveError::Shim { path: path.to_owned(), source })
        }
        Err(source) => Err(RemoveError::Io { path: path.to_owned(), source }),
    }
}
