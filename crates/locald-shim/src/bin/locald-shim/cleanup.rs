//! `admin cleanup`: remove what a container left behind as root inside the caller's `.locald`.
//!
//! The walk to `.locald` is made as the caller; the removal below it as root, fd-relative,
//! never following a symlink, never entering another mount, never removing a mount point, and
//! touching only entries owned by root or the caller: anything else is another user's, which the
//! caller could have moved into their `.locald` but could not have removed themselves.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::protocol::CleanupRequest;
use locald_shim_protocol::validate::{cleanup_path, join};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::privilege::{Caller, Root};
use crate::userpath::{is_dir, open_as_caller, open_child_dir, require_owned_dir, stat};

/// Deeper trees are refused rather than risking fd exhaustion; locald's own state is shallow.
const MAX_DEPTH: usize = 256;
/// The error line names at most this many kept entries.
const SHOWN_KEPT: usize = 8;

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
        // Unlinking inside another user's directory would change what is theirs.
        let owner = stat(&dir)?.st_uid;
        if !may_touch(caller, owner) {
            return Err(ShimError::refused(format!(
                "{}{} is owned by uid {owner}, not by the caller or root",
                join(&plan.anchor),
                join(&parents[..=i])
            )));
        }
    }
    let mut remover = Remover { caller, kept: Vec::new() };
    remover.remove(dir.as_raw_fd(), &last[0], &plan.rest, 0)?;
    if remover.kept.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = remover
        .kept
        .iter()
        .take(SHOWN_KEPT)
        .map(|(path, why)| format!("{}{} ({why})", join(&plan.anchor), join(path)))
        .collect();
    if remover.kept.len() > SHOWN_KEPT {
        shown.push(format!("and {} more", remover.kept.len() - SHOWN_KEPT));
    }
    Err(ShimError::refused(format!("left in place: {}", shown.join(", "))))
}

/// Root's leftovers are what cleanup is for; the caller's own entries they could remove anyway.
fn may_touch(caller: Caller, owner: u32) -> bool {
    owner == 0 || owner == caller.uid.as_raw()
}

struct Remover {
    caller: Caller,
    /// Entries neither entered nor removed, and why: mount points and other users' entries.
    kept: Vec<(Vec<OsString>, String)>,
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
        // A hard link the caller made to someone else's file is theirs too, and stays.
        if !may_touch(self.caller, st.st_uid) {
            self.kept.push((shown.to_vec(), format!("owned by uid {}", st.st_uid)));
            return Ok(());
        }
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
                self.kept.push((shown.to_vec(), "a mount point".to_owned()));
                return Ok(());
            }
            // Swapped for a symlink or a file since the stat: remove the entry itself only.
            Err(Errno::ELOOP | Errno::ENOTDIR) => return unlink(dir, name, UnlinkatFlags::NoRemoveDir),
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(ShimError::os(&format!("open {}", name.to_string_lossy()), e)),
        };
        // The stat above may describe an entry since swapped: judge the directory actually opened.
        let opened = stat(&child)?;
        if !is_dir(&opened) || !may_touch(self.caller, opened.st_uid) {
            self.kept.push((shown.to_vec(), format!("owned by uid {}", opened.st_uid)));
            return Ok(());
        }
        let kept_before = self.kept.len();
        for entry in entries(child.try_clone().map_err(|e| ShimError::os("dup", e))?)? {
            let mut path = shown.to_vec();
            path.push(entry.clone());
            self.remove(child.as_raw_fd(), &entry, &path, depth + 1)?;
        }
        if self.kept.len() > kept_before {
            return Ok(()); // a kept entry below keeps this directory non-empty
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
