//! Try-Catch-Delegate removal (RFC 0091): remove as the user; only when that fails for lack of
//! permission — a container left root-owned files behind — ask the shim.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Privileged, ShimClientError};

#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("cannot remove {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path} (root-owned files inside): {source}")]
    Shim { path: PathBuf, source: ShimClientError },
}

/// Removes `path` and everything below it. `path` should be inside a `.locald` directory, which
/// is the only place the shim will help with.
pub async fn force_remove_dir_all(path: &Path, privileged: Arc<dyn Privileged>) -> Result<(), RemoveError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || force_remove_dir_all_blocking(&owned, &*privileged))
        .await
        .expect("the removal does not panic")
}

/// The same, for callers already off the async threads.
pub fn force_remove_dir_all_blocking(path: &Path, privileged: &dyn Privileged) -> Result<(), RemoveError> {
    remove_or_delegate(path, privileged, locald_image::owned::remove_dir_all)
}

fn remove_or_delegate(
    path: &Path,
    privileged: &dyn Privileged,
    remove_as_user: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), RemoveError> {
    match remove_as_user(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            privileged.cleanup(path).map_err(|source| RemoveError::Shim { path: path.to_owned(), source })
        }
        Err(source) => Err(RemoveError::Io { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::fake::{Call, Fake};

    const DIR: &str = "/p/.locald/containers/db";

    fn failing(kind: ErrorKind) -> impl FnOnce(&Path) -> io::Result<()> {
        move |_| Err(io::Error::from(kind))
    }

    #[test]
    fn only_a_permission_denied_removal_asks_the_shim_to_clean_up_that_directory() {
        let fake = Fake::new();
        remove_or_delegate(Path::new(DIR), &fake, failing(ErrorKind::PermissionDenied)).unwrap();
        assert_eq!(fake.calls(), [Call::Cleanup(DIR.into())]);

        let fake = Fake::new();
        remove_or_delegate(Path::new(DIR), &fake, |_| Ok(())).unwrap();
        remove_or_delegate(Path::new(DIR), &fake, failing(ErrorKind::NotFound)).unwrap();
        let other = remove_or_delegate(Path::new(DIR), &fake, failing(ErrorKind::Other)).unwrap_err();
        assert!(matches!(other, RemoveError::Io { .. }), "{other}");
        assert_eq!(fake.calls(), [], "removal as the user did not lack permission");
    }

    #[test]
    fn the_shims_refusal_is_kept_as_the_cause() {
        let fake = Fake::new().failing("locald-shim: refused: not inside a .locald directory");
        let err =
            remove_or_delegate(Path::new(DIR), &fake, failing(ErrorKind::PermissionDenied)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot remove {DIR} (root-owned files inside): locald-shim: refused: not inside a .locald directory"
            )
        );
        assert!(matches!(err, RemoveError::Shim { source: ShimClientError::Failed { .. }, .. }));
    }
}
