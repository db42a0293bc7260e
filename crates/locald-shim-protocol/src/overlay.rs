//! The overlay root of `bundle run` (protocol 7): which directories a caller may stack under a
//! container's root. The shim applies these rules before it opens anything; the daemon builds
//! requests that pass them.
//!
//! Lowers are named by the caller (topmost first) and must each lie strictly inside the caller's
//! cache (`--cache`) or the bundle; the upper and work directories are not named at all: they
//! are always `<bundle>/upper` and `<bundle>/work`, so the writes of a container land in its own
//! bundle and nowhere else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::ShimError;
use crate::validate::{absolute_components, join};

/// At most this many lowers (Docker's own image limit is 127 layers); the kernel's is 500, and
/// every lower is one more directory the shim opens and holds.
pub const MAX_LOWERS: usize = 128;
/// `<bundle>/upper`: the container's writes.
pub const UPPER_DIR: &str = "upper";
/// `<bundle>/work`: overlayfs' scratch directory, on the upper's filesystem.
pub const WORK_DIR: &str = "work";
/// First words of the line the shim writes on its control fd (and stderr) when the kernel
/// refuses the overlay itself, so the daemon can fall back to a copied rootfs.
pub const UNAVAILABLE: &str = "overlay-unavailable";

/// Where a lower lies: its anchor and the components below it (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lower {
    pub anchor: Anchor,
    pub below: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Inside `--cache`.
    Cache,
    /// Inside the bundle directory.
    Bundle,
}

/// Splits each lower at its anchor: strictly inside `cache` (when given) or `bundle`, without
/// `.`, `..` or `//`, at most [`MAX_LOWERS`], not the upper or work directory.
pub fn lowers(bundle: &Path, cache: Option<&Path>, lowers: &[PathBuf]) -> Result<Vec<Lower>, ShimError> {
    if lowers.is_empty() {
        return Err(ShimError::refused("an overlay root needs at least one --lower"));
    }
    if lowers.len() > MAX_LOWERS {
        return Err(ShimError::refused(format!(
            "{} lowers given; an overlay root takes at most {MAX_LOWERS}",
            lowers.len()
        )));
    }
    let bundle = absolute_components(bundle)?;
    let cache = cache.map(absolute_components).transpose()?;
    lowers
        .iter()
        .map(|lower| {
            let components = absolute_components(lower)?;
            let inside = |anchor: &[OsString]| {
                (components.len() > anchor.len() && components[..anchor.len()] == *anchor)
                    .then(|| components[anchor.len()..].to_vec())
            };
            if let Some(below) = inside(&bundle) {
                if below[0] == UPPER_DIR || below[0] == WORK_DIR {
                    return Err(ShimError::refused(format!(
                        "lower {} is the container's own {} directory",
                        lower.display(),
                        below[0].to_string_lossy()
                    )));
                }
                return Ok(Lower { anchor: Anchor::Bundle, below });
            }
            match cache.as_deref().and_then(inside) {
                Some(below) => Ok(Lower { anchor: Anchor::Cache, below }),
                None => Err(ShimError::refused(format!(
                    "lower {} is neither inside the cache ({}) nor inside the bundle ({})",
                    lower.display(),
                    cache.as_deref().map_or_else(|| "none given".to_owned(), join),
                    join(&bundle)
                ))),
            }
        })
        .collect()
}

/// Whether a failed overlay mount means "not here" (an old kernel, a filesystem that cannot be
/// an upper, overlayfs not built) rather than a fault worth stopping for: the daemon then copies
/// the rootfs instead.
pub fn means_unavailable(errno: i32) -> bool {
    [libc_errno::EINVAL, libc_errno::EPERM, libc_errno::ENODEV, libc_errno::EOPNOTSUPP, libc_errno::ENOSYS]
        .contains(&errno)
}

/// The few errno values [`means_unavailable`] names; Linux numbers (the only platform with
/// overlayfs), kept here so this crate needs no libc.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSYS: i32 = 38;
    pub const EOPNOTSUPP: i32 = 95;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lowers_: &[&str]) -> Result<Vec<Lower>, ShimError> {
        let lowers_: Vec<PathBuf> = lowers_.iter().map(PathBuf::from).collect();
        lowers(Path::new("/p/.locald/containers/web"), Some(Path::new("/home/u/.cache/locald")), &lowers_)
    }

    #[test]
    fn lowers_inside_the_cache_or_the_bundle_are_split_at_their_anchor() {
        let got =
            check(&["/home/u/.cache/locald/oci/layers/sha256/ab", "/p/.locald/containers/web/base"]).unwrap();
        assert_eq!(got[0].anchor, Anchor::Cache);
        assert_eq!(got[0].below, ["oci", "layers", "sha256", "ab"].map(OsString::from));
        assert_eq!(got[1].anchor, Anchor::Bundle);
        assert_eq!(got[1].below, [OsString::from("base")]);
    }

    #[test]
    fn lowers_elsewhere_or_in_disguise_are_refused() {
        for bad in [
            "/etc",
            "/home/u/.cache/locald",
            "/home/u/.cache/locald-other/x",
            "/home/u/.cache/locald/../../v/x",
            "/home/u/.cache/locald/./x",
            "/home/u/.cache//locald/x",
            "relative/x",
            "/p/.locald/containers/web",
            "/p/.locald/containers/web/upper",
            "/p/.locald/containers/web/work/x",
            "/p/.locald/containers/webx/base",
        ] {
            let err = check(&[bad]).unwrap_err();
            assert_eq!(err.class, crate::ExitClass::Refused, "{bad}");
        }
        assert!(check(&[]).is_err(), "no lower at all");
        let no_cache = lowers(Path::new("/p/b"), None, &[PathBuf::from("/home/u/.cache/locald/x")]);
        assert!(no_cache.is_err(), "without --cache only the bundle anchors lowers");
    }

    #[test]
    fn the_number_of_lowers_is_bounded() {
        let many: Vec<String> =
            (0..=MAX_LOWERS).map(|i| format!("/home/u/.cache/locald/oci/layers/{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(check(&refs[..MAX_LOWERS]).is_ok());
        let err = check(&refs).unwrap_err();
        assert!(err.message.contains("at most 128"), "{err}");
    }

    #[test]
    fn only_refusals_of_the_overlay_itself_mean_unavailable() {
        assert!(means_unavailable(22) && means_unavailable(1) && means_unavailable(19));
        assert!(!means_unavailable(2), "ENOENT is a fault, not a missing feature");
        assert!(!means_unavailable(13), "EACCES is a fault, not a missing feature");
    }
}
