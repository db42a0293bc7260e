//! The caller's subordinate ids, read by the shim itself as root from `/etc/subuid` and
//! `/etc/subgid` (and their name from `/etc/passwd`). A file counts only when it is a regular
//! file owned by root and writable by no one else, reached from `/` without a symlink through
//! directories only root can write: otherwise whoever can write it could grant themselves
//! another user's ids. A missing file is no allocation.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::subid::{self, Allocations, MAX_FILE_BYTES};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::privilege::Caller;
use crate::userpath::{is_dir, is_regular, own, stat};

pub fn of_caller(caller: Caller) -> Result<Allocations, ShimError> {
    let uid = caller.uid.as_raw();
    let name = read_trusted("passwd")?.and_then(|passwd| subid::user_name(&passwd, uid));
    let ranges = |file: &str| -> Result<Vec<subid::Range>, ShimError> {
        Ok(read_trusted(file)?.map(|c| subid::ranges_of(&c, name.as_deref(), uid)).unwrap_or_default())
    };
    Ok(Allocations { uids: ranges("subuid")?, gids: ranges("subgid")? })
}

/// `/etc/<name>`, or `None` when it does not exist.
fn read_trusted(name: &str) -> Result<Option<String>, ShimError> {
    let shown = format!("/etc/{name}");
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let root = own(openat(None, "/", dir_flags, Mode::empty()).map_err(|e| ShimError::os("open /", e))?);
    only_root_writes(&root, "/", true)?;
    let etc = own(openat(Some(root.as_raw_fd()), "etc", dir_flags, Mode::empty())
        .map_err(|e| refused_open("/etc", e))?);
    only_root_writes(&etc, "/etc", true)?;
    // O_NONBLOCK: a FIFO there must not hang the shim.
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match openat(Some(etc.as_raw_fd()), name, flags, Mode::empty()) {
        Ok(fd) => own(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(refused_open(&shown, e)),
    };
    only_root_writes(&file, &shown, false)?;
    let mut bytes = Vec::new();
    fs::File::from(file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ShimError::os(&format!("read {shown}"), e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ShimError::refused(format!("{shown} is larger than 1 MiB")));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn refused_open(shown: &str, errno: Errno) -> ShimError {
    match errno {
        Errno::ELOOP => {
            ShimError::refused(format!("{shown} is a symlink; the shim does not follow one there"))
        }
        other => ShimError::os(&format!("open {shown}"), other),
    }
}

fn only_root_writes(fd: &OwnedFd, shown: &str, directory: bool) -> Result<(), ShimError> {
    let st = stat(fd)?;
    let kind_ok = if directory { is_dir(&st) } else { is_regular(&st) };
    if !kind_ok || st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        let kind = if directory { "directory" } else { "regular file" };
        return Err(ShimError::refused(format!(
            "{shown} must be a {kind} owned by root and writable by no one else (uid {}, mode {:o})",
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}
