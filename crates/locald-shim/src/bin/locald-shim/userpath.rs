//! Opening the caller's paths as the caller: the filesystem uid/gid and the supplementary groups
//! are switched to theirs, so root's permissions never help reach a path (and a group that denies
//! the caller denies the shim too), and every component is opened without following symlinks, so
//! nothing the caller can rename redirects the shim.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::validate::join;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{Gid, Uid, setfsgid, setfsuid};

pub use crate::fds::own;
use crate::privilege::{Caller, set_groups};

/// While alive, filesystem access is checked against the caller's uid, gid and supplementary
/// groups.
pub struct AsCaller(());

impl AsCaller {
    pub fn enter(caller: Caller) -> Self {
        // Judging a path without the caller's groups would be wrong in the caller's favour, so a
        // failure here ends the shim rather than going on.
        or_exit(set_groups(caller.groups));
        setfsgid(caller.gid);
        setfsuid(caller.uid);
        AsCaller(())
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        setfsuid(Uid::from_raw(0));
        setfsgid(Gid::from_raw(0));
        or_exit(set_groups(&[]));
    }
}

fn or_exit(result: Result<(), ShimError>) {
    if let Err(err) = result {
        eprintln!("{err}");
        std::process::exit(err.class.code());
    }
}

/// Walks `components` from `/` as the caller, no symlink anywhere; the last one is opened with
/// `last` (plus O_NOFOLLOW and O_CLOEXEC), the others as O_PATH directories.
pub fn open_as_caller(caller: Caller, components: &[OsString], last: OFlag) -> Result<OwnedFd, ShimError> {
    let _identity = AsCaller::enter(caller);
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = own(openat(None, "/", dir_flags, Mode::empty()).map_err(|e| ShimError::os("open /", e))?);
    for (i, name) in components.iter().enumerate() {
        let is_last = i + 1 == components.len();
        let flags = if is_last { last | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC } else { dir_flags };
        let fd = openat(Some(dir.as_raw_fd()), name.as_os_str(), flags, Mode::empty())
            .map_err(|e| walk_error(&components[..=i], e))?;
        dir = own(fd);
    }
    Ok(dir)
}

/// Opens directory `name` inside `dir` without following a symlink, without crossing into
/// another mount (bind mounts included) and without leaving `dir`.
pub fn open_child_dir(dir: RawFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV,
        );
    openat2(dir, name, how).map(own)
}

fn walk_error(shown: &[OsString], errno: Errno) -> ShimError {
    let path = join(shown);
    match errno {
        Errno::ELOOP | Errno::ENOTDIR => {
            ShimError::refused(format!("{path} is a symlink or not a directory; symlinks are not followed"))
        }
        Errno::EACCES | Errno::EPERM => ShimError::refused(format!("{path} is not accessible to the caller")),
        other => ShimError::os(&path, other),
    }
}

pub fn stat(fd: &OwnedFd) -> Result<FileStat, ShimError> {
    fstat(fd.as_raw_fd()).map_err(|e| ShimError::os("fstat", e))
}

pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// The `.locald` directory (or another anchor) must be a real directory owned by the caller.
pub fn require_owned_dir(fd: &OwnedFd, caller: Caller, shown: &[OsString]) -> Result<FileStat, ShimError> {
    let st = stat(fd)?;
    if !is_dir(&st) || st.st_uid != caller.uid.as_raw() {
        return Err(ShimError::refused(format!(
            "{} must be a directory owned by uid {} (it is owned by uid {})",
            join(shown),
            caller.uid,
            st.st_uid
        )));
    }
    Ok(st)
}
