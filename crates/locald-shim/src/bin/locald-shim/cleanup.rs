//! `admin cleanup`: remove what a container left behind as root inside the caller's `.locald`.
//!
//! The walk to `.locald` is made as the caller; the removal below it as root, fd-relative,
//! never following a symlink, never entering another mount, never removing a mount point.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use locald_shim::ShimError;
use locald_shim::protocol::CleanupRequest;
use locald_shim::validate::{cleanup_path, join};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::privilege::Root;
use crate::userpath::{open_as_caller, open_child_dir, require_owned_dir};

/// Deeper trees are refused rather than risking fd exhaustion; locald's own state is shallow.
const MAX_DEPTH: usize = 256;

pub fn run(root: Root, request: &CleanupRequest) -> Result<(), ShimError> {
    let plan = cleanup_path(&request.path)?;
    let caller = root.caller();
    let anchor = open_as_caller(caller, &plan.anchor, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    require_owned_dir(&anchor, caller, &plan.anchor)?;

    let (parents, last) = plan.rest.split_at(plan.rest.len() - 1);
    let mut dir = anchor;
    for (i, name) in parents.iter().enumerate() {
        dir = match open_child_dir(dir.as_raw_fd(), name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(descent_error(&plan.anchor, &parents[..=i], e)),
        };
    }
    let mut remover = Remover { kept_mounts: Vec::new() };
    remover.remove(dir.as_raw_fd(), &last[0], &plan.rest, 0)?;
    if !remover.kept_mounts.is_empty() {
        return Err(ShimError::refused(format!(
            "left mount point(s) in place: {}",
            remover
                .kept_mounts
                .iter()
                .map(|p| format!("{}{}", join(&plan.anchor), join(p)))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

struct Remover {
    kept_mounts: Vec<Vec<OsString>>,
}

impl Remover {
    fn remove(
        &mut self,
        dir: RawFd,
        name: &OsStr,
        shown: &[OsString],
        depth: usize,
    ) -> Result<(), ShimError> {
        let st = match fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(ShimError::os(&format!("stat {}", name.to_string_lossy()), e)),
        };
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            return unlink(dir, name, UnlinkatFlags::NoRemoveDir);
        }
        if depth >= MAX_DEPTH {
            return Err(ShimError::refused(format!("directory tree deeper than {MAX_DEPTH} levels")));
        }
        let child = match open_child_dir(dir, name) {
            Ok(child) => child,
            // Another filesystem or bind mount: neither entered nor removed.
            Err(Errno::EXDEV) => {
                self.kept_mounts.push(shown.to_vec());
                return Ok(());
            }
            // Swapped for a symlink or a file since the stat: remove the entry itself only.
            Err(Errno::ELOOP | Errno::ENOTDIR) => return unlink(dir, name, UnlinkatFlags::NoRemoveDir),
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(ShimError::os(&format!("open {}", name.to_string_lossy()), e)),
        };
        let kept_before = self.kept_mounts.len();
        for entry in entries(child.try_clone().map_err(|e| ShimError::os("dup", e))?)? {
            let mut path = shown.to_vec();
            path.push(entry.clone());
            self.remove(child.as_raw_fd(), &entry, &path, depth + 1)?;
        }
        if self.kept_mounts.len() > kept_before {
            return Ok(()); // a mount point below keeps this directory non-empty
        }
        unlink(dir, name, UnlinkatFlags::RemoveDir)
    }
}

fn entries(fd: OwnedFd) -> Result<Vec<OsString>, ShimError> {
    let mut dir = Dir::from_fd(fd.into_raw_fd()).map_err(|e| ShimError::os("fdopendir", e))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| ShimError::os("readdir", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

fn unlink(dir: RawFd, name: &OsStr, flags: UnlinkatFlags) -> Result<(), ShimError> {
    match unlinkat(Some(dir), name, flags) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(ShimError::os(&format!("remove {}", name.to_string_lossy()), e)),
    }
}

fn descent_error(anchor: &[OsString], rest: &[OsString], errno: Errno) -> ShimError {
    let path = format!("{}{}", join(anchor), join(rest));
    match errno {
        Errno::ELOOP | Errno::ENOTDIR => {
            ShimError::refused(format!("{path} is a symlink or not a directory"))
        }
        Errno::EXDEV => ShimError::refused(format!("{path} is on another filesystem or a mount point")),
        Errno::ENOSYS => ShimError::os(&path, "openat2 is needed (Linux 5.6 or later)"),
        other => ShimError::os(&path, other),
    }
}
