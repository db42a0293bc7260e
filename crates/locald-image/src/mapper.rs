//! Debian's `newuidmap`/`newgidmap` (package `uidmap`), which the unpack helper
//! ([`crate::owned`]) needs to map a user namespace onto the caller's allocation: found through
//! `PATH` and judged usable the way the kernel will judge them, setuid root or carrying the
//! capability in its file capabilities (Fedora ships them with `cap_setuid=ep`).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The two tools and the capability each one needs.
pub const TOOLS: [(&str, Cap); 2] = [("newuidmap", Cap::SETUID), ("newgidmap", Cap::SETGID)];

/// A capability number, from linux/capability.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u32);

impl Cap {
    pub const SETGID: Cap = Cap(6);
    pub const SETUID: Cap = Cap(7);
}

/// What the lookup of one tool found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    Usable(PathBuf),
    Missing,
    /// Found, but neither setuid root nor given the capability: it would refuse every map.
    Unusable(PathBuf),
}

/// `name` in the directories of `PATH` (`/usr/bin:/bin` when unset), judged usable.
pub fn find(name: &str, cap: Cap) -> Tool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    find_in(name, cap, &path)
}

/// `name` in the directories of `path` (a `PATH` value), judged usable.
pub fn find_in(name: &str, cap: Cap, path: &OsStr) -> Tool {
    let Some(file) = std::env::split_paths(path).map(|dir| dir.join(name)).find(|f| f.is_file()) else {
        return Tool::Missing;
    };
    let Ok(meta) = std::fs::metadata(&file) else { return Tool::Missing };
    let setuid_root = meta.uid() == 0 && meta.mode() & 0o4000 != 0;
    if setuid_root || file_caps(&file).is_some_and(|caps| grants(&caps, cap)) {
        Tool::Usable(file)
    } else {
        Tool::Unusable(file)
    }
}

/// Both tools when both are usable.
pub fn both() -> Option<(PathBuf, PathBuf)> {
    match TOOLS.map(|(name, cap)| find(name, cap)) {
        [Tool::Usable(uid), Tool::Usable(gid)] => Some((uid, gid)),
        _ => None,
    }
}

/// Whether `security.capability` bytes (`struct vfs_cap_data`, revision 1, 2 or 3) put `cap` in
/// the permitted set and raise it on exec (the effective flag).
pub fn grants(caps: &[u8], cap: Cap) -> bool {
    const EFFECTIVE: u32 = 0x1;
    let word = |i: usize| caps.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(magic) = word(0) else { return false };
    // Permitted sets: data[0].permitted at word 1, data[1].permitted at word 3 (revisions 2, 3).
    let permitted = match cap.0 {
        n @ 0..32 => word(1).map(|w| w >> n & 1 == 1),
        n @ 32..64 => word(3).map(|w| w >> (n - 32) & 1 == 1),
        _ => None,
    };
    magic & EFFECTIVE != 0 && permitted == Some(true)
}

/// File capabilities are Linux's (macOS runs containers in the Lima VM).
#[cfg(not(target_os = "linux"))]
fn file_caps(_file: &Path) -> Option<Vec<u8>> {
    None
}

#[cfg(target_os = "linux")]
fn file_caps(file: &Path) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: getxattr reads a NUL-terminated path and a NUL-terminated name and writes at most
    // `buf.len()` bytes into a buffer we own; it returns the length written or -1.
    let len = unsafe {
        libc::getxattr(path.as_ptr(), c"security.capability".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    let len = usize::try_from(len).ok()?;
    Some(buf[..len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `cap_setuid=ep` as setcap writes it (revision 2: magic 0x02000000 | effective).
    fn caps_v2(permitted: u32, effective: bool) -> Vec<u8> {
        let magic: u32 = 0x0200_0000 | u32::from(effective);
        [magic, permitted, 0, 0, 0].iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn file_capabilities_grant_only_the_named_capability_when_effective() {
        assert!(grants(&caps_v2(1 << 7, true), Cap::SETUID));
        assert!(!grants(&caps_v2(1 << 7, true), Cap::SETGID), "cap_setuid is not cap_setgid");
        assert!(grants(&caps_v2(1 << 6 | 1 << 7, true), Cap::SETGID));
        assert!(!grants(&caps_v2(1 << 7, false), Cap::SETUID), "permitted but not raised on exec");
        assert!(!grants(&[1, 2], Cap::SETUID), "truncated");
        assert!(!grants(&[], Cap::SETUID));
    }

    #[test]
    fn a_tool_is_missing_unusable_or_found_in_the_first_directory_that_has_it() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let path = std::env::join_paths(dirs.iter().map(|d| d.path())).unwrap();
        assert_eq!(find_in("newuidmap", Cap::SETUID, &path), Tool::Missing);
        let plain = dirs[1].path().join("newuidmap");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not setuid and no file capabilities: it could map nothing but the caller's own id.
        assert_eq!(find_in("newuidmap", Cap::SETUID, &path), Tool::Unusable(plain));
        std::fs::create_dir(dirs[0].path().join("newuidmap")).unwrap();
        assert!(
            matches!(find_in("newuidmap", Cap::SETUID, &path), Tool::Unusable(_)),
            "a directory is skipped"
        );
    }
}
