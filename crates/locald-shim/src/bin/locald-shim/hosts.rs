//! `admin sync-hosts`: the caller's block in `/etc/hosts`, rewritten atomically under a lock, or
//! in place (under the same lock) when the file is a mount point: a container's bind-mounted
//! `/etc/hosts` cannot be replaced by rename (`EBUSY`).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::hosts_block::{is_mount_point, rewrite};
use locald_shim_protocol::protocol::SyncHostsRequest;
use locald_shim_protocol::validate::hosts_domains;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, ftruncate, unlinkat};

use crate::fds::own;
use crate::privilege::Root;

const ETC: &str = "/etc";
const HOSTS: &str = "hosts";
/// Refuse to slurp something absurd: a real hosts file is kilobytes.
const MAX_HOSTS_BYTES: u64 = 16 << 20;
/// The one temp name, only ever used under the lock on /etc: a run killed between creating and
/// renaming it leaves this single file, which the next run replaces, never one per pid.
const TEMP: &str = ".hosts.locald.tmp";
/// The lock every sync-hosts takes, root's and 0600: /etc itself (the lock of protocol 3) can be
/// opened and flocked by any user, who could then park every other user's sync-hosts forever.
const LOCK: &str = ".hosts.locald.lock";
/// What shims before the fixed name left when killed mid-write: `.hosts.locald-<pid>`.
const OLD_TEMP_PREFIX: &str = ".hosts.locald-";

pub fn run(root: Root, request: &SyncHostsRequest) -> Result<(), ShimError> {
    let domains = hosts_domains(&request.domains)?;
    let uid = root.caller().uid.as_raw();

    let etc = own(openat(
        None,
        ETC,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShimError::os("open /etc", e))?);
    // Not a lock on /etc/hosts: that file is replaced by rename, so a lock on it would be a lock
    // on an inode that is about to go away.
    let _lock = lock(&etc)?;

    let st = fstatat(Some(etc.as_raw_fd()), HOSTS, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| ShimError::os("stat /etc/hosts", e))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    // An empty list asks for nothing to be written (the daemon sends one wherever the system
    // resolves every name itself, as NixOS does): done, rather than an error on every `up`.
    if kind == SFlag::S_IFLNK && domains.is_empty() {
        return Ok(());
    }
    if kind == SFlag::S_IFLNK {
        return Err(ShimError::refused(
            "/etc/hosts is a symlink, so the system manages it (NixOS: networking.hosts); locald leaves it alone — \
             *.localhost resolves through nss-myhostname there",
        ));
    }
    if kind != SFlag::S_IFREG {
        return Err(ShimError::refused("/etc/hosts is not a regular file"));
    }
    remove_old_temps(&etc);
    let current = read_hosts(&etc)?;
    let updated = rewrite(&current, uid, &domains).map_err(ShimError::refused)?;
    if updated == current {
        return Ok(());
    }
    if hosts_is_mount_point() {
        return in_place(&etc, &updated);
    }
    match replace(&etc, &updated, st.st_uid, st.st_gid, Mode::from_bits_truncate(st.st_mode & 0o7777)) {
        // A mount point the mount table did not show (another namespace's view): same answer.
        Err(Errno::EBUSY) => in_place(&etc, &updated),
        result => result.map_err(|e| ShimError::os("replace /etc/hosts", e)),
    }
}

fn hosts_is_mount_point() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|table| is_mount_point(&table, std::path::Path::new("/etc/hosts")))
}

/// Overwrites the file itself: written from the start, cut to the new length, synced. Readers
/// may see a partly written file for that moment, which is why this is only for a file that
/// rename cannot replace; writers are kept out by the lock.
fn in_place(etc: &OwnedFd, content: &[u8]) -> Result<(), ShimError> {
    let fd = own(openat(
        Some(etc.as_raw_fd()),
        HOSTS,
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShimError::os("open /etc/hosts for writing", e))?);
    let mut file = std::fs::File::from(fd);
    file.write_all(content).map_err(|e| ShimError::os("write /etc/hosts", e))?;
    let length = i64::try_from(content.len()).unwrap_or(i64::MAX);
    ftruncate(&file, length).map_err(|e| ShimError::os("truncate /etc/hosts", e))?;
    fsync(file.as_raw_fd()).map_err(|e| ShimError::os("sync /etc/hosts", e))
}

/// Concurrent callers serialize on a root-only file next to the hosts file, which no other user
/// can open and so none can hold.
fn lock(etc: &OwnedFd) -> Result<Flock<OwnedFd>, ShimError> {
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = own(openat(Some(etc.as_raw_fd()), LOCK, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| ShimError::os("open /etc/.hosts.locald.lock", e))?);
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| ShimError::os("stat /etc/.hosts.locald.lock", e))?;
    // Only root can create files in /etc, so this is ours; still, a lock others could open would
    // be no lock at all.
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG || st.st_uid != 0 {
        return Err(ShimError::refused("/etc/.hosts.locald.lock is not a regular file owned by root"));
    }
    if st.st_mode & 0o077 != 0 {
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o600))
            .map_err(|e| ShimError::os("chmod lock", e))?;
    }
    Flock::lock(fd, FlockArg::LockExclusive)
        .map_err(|(_, e)| ShimError::os("lock /etc/.hosts.locald.lock", e))
}

fn read_hosts(etc: &OwnedFd) -> Result<Vec<u8>, ShimError> {
    let fd = openat(
        Some(etc.as_raw_fd()),
        HOSTS,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShimError::os("open /etc/hosts", e))?;
    let mut content = Vec::new();
    std::fs::File::from(own(fd))
        .take(MAX_HOSTS_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| ShimError::os("read /etc/hosts", e))?;
    if content.len() as u64 > MAX_HOSTS_BYTES {
        return Err(ShimError::refused("/etc/hosts is larger than 16 MiB"));
    }
    Ok(content)
}

/// Temp file in /etc, same owner and mode, fsync, rename over, fsync the directory: readers see
/// the old file or the new one, never a torn one.
fn replace(etc: &OwnedFd, content: &[u8], uid: u32, gid: u32, mode: Mode) -> Result<(), Errno> {
    let temp = TEMP;
    let dir = etc.as_raw_fd();
    // A leftover of a killed run; we hold the lock, so nobody is writing it.
    let _ = unlinkat(Some(dir), temp, UnlinkatFlags::NoRemoveDir);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = own(openat(Some(dir), temp, flags, Mode::from_bits_truncate(0o600))?);
    let result = (|| {
        fchown(fd.as_raw_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        fchmod(fd.as_raw_fd(), mode)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        fsync(file.as_raw_fd())?;
        renameat(Some(dir), temp, Some(dir), HOSTS)?;
        fsync(dir)
    })();
    if result.is_err() {
        let _ = unlinkat(Some(dir), temp, UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Temp files of earlier shims, one per killed pid; we hold the lock, so none is being written.
fn remove_old_temps(etc: &OwnedFd) {
    let Ok(mut entries) = nix::dir::Dir::openat(
        Some(etc.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let names: Vec<std::ffi::CString> = entries
        .iter()
        .flatten()
        .filter(|entry| entry.file_type() == Some(nix::dir::Type::File))
        .map(|entry| entry.file_name().to_owned())
        .filter(|name| is_old_temp(name.to_bytes()))
        .collect();
    for name in names {
        let _ = unlinkat(Some(etc.as_raw_fd()), name.as_c_str(), UnlinkatFlags::NoRemoveDir);
    }
}

fn is_old_temp(name: &[u8]) -> bool {
    name.strip_prefix(OLD_TEMP_PREFIX.as_bytes())
        .is_some_and(|pid| !pid.is_empty() && pid.len() <= 10 && pid.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_old_per_pid_temp_names_are_cleared() {
        assert!(is_old_temp(b".hosts.locald-4242"));
        for kept in [
            &b"hosts"[..],
            b".hosts.locald-",
            b".hosts.locald-12a",
            b".hosts.locald.tmp",
            b"x.hosts.locald-1",
        ] {
            assert!(!is_old_temp(kept), "{}", String::from_utf8_lossy(kept));
        }
    }
}
