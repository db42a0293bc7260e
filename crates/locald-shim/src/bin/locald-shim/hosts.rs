//! `admin sync-hosts`: the caller's block in `/etc/hosts`, rewritten atomically under a lock.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::protocol::SyncHostsRequest;
use locald_shim_protocol::validate::hosts_domains;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

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
    replace(&etc, &updated, st.st_uid, st.st_gid, Mode::from_bits_truncate(st.st_mode & 0o7777))
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
fn replace(etc: &OwnedFd, content: &[u8], uid: u32, gid: u32, mode: Mode) -> Result<(), ShimError> {
    let temp = TEMP;
    let dir = etc.as_raw_fd();
    // A leftover of a killed run; we hold the lock, so nobody is writing it.
    let _ = unlinkat(Some(dir), temp, UnlinkatFlags::NoRemoveDir);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = own(openat(Some(dir), temp, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| ShimError::os("create temp hosts file", e))?);
    let result = (|| {
        fchown(fd.as_raw_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        fchmod(fd.as_raw_fd(), mode)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        fsync(file.as_raw_fd())?;
        renameat(Some(dir), temp, Some(dir), HOSTS)?;
        fsync(dir)
    })();
    if let Err(e) = result {
        let _ = unlinkat(Some(dir), temp, UnlinkatFlags::NoRemoveDir);
        return Err(ShimError::os("replace /etc/hosts", e));
    }
    Ok(())
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

pub fn begin_marker(uid: u32) -> String {
    format!("# BEGIN locald uid={uid}")
}

pub fn end_marker(uid: u32) -> String {
    format!("# END locald uid={uid}")
}

/// The file with the caller's block replaced (or removed when `domains` is empty); every other
/// byte, other users' blocks included, kept as it was.
pub fn rewrite(content: &[u8], uid: u32, domains: &[String]) -> Result<Vec<u8>, String> {
    let (begin, end) = (begin_marker(uid), end_marker(uid));
    let mut out = Vec::with_capacity(content.len());
    let mut inside = false;
    for line in content.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == begin.as_bytes() {
            if inside {
                return Err(format!("/etc/hosts has a nested `{begin}`; fix it by hand"));
            }
            inside = true;
        } else if inside && text == end.as_bytes() {
            inside = false;
        } else if !inside {
            out.extend_from_slice(line);
        }
    }
    if inside {
        return Err(format!("/etc/hosts has `{begin}` without `{end}`; fix it by hand"));
    }
    if !domains.is_empty() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(begin.as_bytes());
        out.push(b'\n');
        for domain in domains {
            out.extend_from_slice(format!("127.0.0.1\t{domain}\n::1\t{domain}\n").as_bytes());
        }
        out.extend_from_slice(end.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[u8] = b"127.0.0.1\tlocalhost\n# comment \xff kept\n::1 localhost ip6-localhost\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn adds_a_block_mapping_each_name_to_both_loopbacks() {
        let out = rewrite(BASE, 1000, &names(&["a.localhost"])).unwrap();
        let expected = [
            BASE,
            b"# BEGIN locald uid=1000\n127.0.0.1\ta.localhost\n::1\ta.localhost\n# END locald uid=1000\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn replaces_only_its_own_block_and_keeps_everything_else_byte_for_byte() {
        let other = b"# BEGIN locald uid=1001\n127.0.0.1\tb.localhost\n# END locald uid=1001\n";
        let mine = b"# BEGIN locald uid=1000\n127.0.0.1\told.localhost\n# END locald uid=1000\n";
        let content = [BASE, mine, other, b"10.0.0.1 host\n"].concat();
        let out = rewrite(&content, 1000, &names(&["new.localhost"])).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("old.localhost"));
        assert!(text.contains("new.localhost"));
        assert!(out.windows(other.len()).any(|w| w == other), "another uid's block is untouched");
        assert!(out.starts_with(BASE));
        assert!(text.contains("10.0.0.1 host\n"));
    }

    #[test]
    fn no_domains_removes_the_block_and_nothing_else() {
        let with = rewrite(BASE, 7, &names(&["a.localhost"])).unwrap();
        assert_eq!(rewrite(&with, 7, &[]).unwrap(), BASE);
        assert_eq!(rewrite(BASE, 7, &[]).unwrap(), BASE, "idempotent");
    }

    #[test]
    fn a_file_without_final_newline_gets_one_before_the_block() {
        let out = rewrite(b"127.0.0.1 localhost", 1, &names(&["a.localhost"])).unwrap();
        assert!(out.starts_with(b"127.0.0.1 localhost\n# BEGIN locald uid=1\n"));
    }

    #[test]
    fn an_unterminated_block_is_refused_rather_than_eating_the_file() {
        let broken = [BASE, b"# BEGIN locald uid=5\n127.0.0.1 x.localhost\n10.0.0.1 precious\n"].concat();
        assert!(rewrite(&broken, 5, &[]).is_err());
        // Another uid's broken block is not ours to judge.
        assert!(rewrite(&broken, 6, &[]).is_ok());
    }

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

    #[test]
    fn a_marker_for_a_uid_prefix_is_not_ours() {
        let content = b"# BEGIN locald uid=10\nx\n# END locald uid=10\n";
        assert_eq!(rewrite(content, 1, &[]).unwrap(), content.to_vec());
    }
}
