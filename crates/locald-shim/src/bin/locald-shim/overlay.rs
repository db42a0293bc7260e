//! The overlay root of `bundle run` (protocol 7): the image's layer directories, read-only and
//! shared, under the bundle's own `upper` and `work` directories, mounted onto the bundle's
//! rootfs directory in the shim's private mount namespace just before libcontainer creates the
//! container, so nothing is ever mounted on the host.
//!
//! Every directory is checked like any other caller path (`check`): reached as the caller from
//! `/` without following a symlink, a directory owned by the caller at every step below its
//! anchor (the caller's cache or the bundle), at most `MAX_LOWERS` of them.
//!
//! The overlay itself is made **inside the container's user namespace** (`mount`): a child joins
//! it, becomes its root (the caller's uid and gid, with the caller's supplementary groups) and
//! builds the overlay there with the new mount API. So overlayfs reaches the layers with the
//! caller's own credentials — the "mounter" whose permissions it checks on every lower and upper
//! operation is the caller, never host root — and a layer can never show the container anything
//! its caller could not read (an overlay mounted by root would check the lowers against root).
//! `userxattr` keeps overlayfs' own markers in `user.overlay.*` (the caller's anyway) and turns
//! off `redirect_dir` and `metacopy`, which would follow what a layer's xattrs say. The detached
//! mount comes back over a socket and the shim, as root, moves it onto the checked rootfs fd.

use std::ffi::{CString, OsString};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use locald_shim_protocol::ShimError;
use locald_shim_protocol::overlay::{self, Anchor, UPPER_DIR, WORK_DIR};
use locald_shim_protocol::protocol::BundleRunRequest;
use locald_shim_protocol::validate::absolute_components;
use nix::fcntl::{OFlag, openat};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg,
    socketpair,
};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};

use crate::privilege::Caller;
use crate::userpath::{AsCaller, open_as_caller, own, require_owned_dir};

/// The checked directories, held open from the check to the mount, with their paths.
pub struct Layers {
    /// Topmost first, as overlayfs takes them.
    lowers: Vec<Checked>,
    upper: Checked,
    work: Checked,
}

struct Checked {
    fd: OwnedFd,
    /// From `/`, to find the same directory again in the child's mount namespace.
    path: Vec<OsString>,
}

/// `None` when the request asks for no overlay (a plain rootfs directory).
pub fn check(
    caller: Caller,
    bundle: &OwnedFd,
    request: &BundleRunRequest,
) -> Result<Option<Layers>, ShimError> {
    if request.lowers.is_empty() {
        if request.cache.is_some() {
            return Err(ShimError::usage("--cache is only for an overlay root: give --lower too"));
        }
        return Ok(None);
    }
    let rules = overlay::lowers(&request.bundle, request.cache.as_deref(), &request.lowers)?;
    let cache = match &request.cache {
        Some(path) => {
            let components = absolute_components(path)?;
            let fd = open_as_caller(caller, &components, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
            require_owned_dir(&fd, caller, &components)?;
            Some(fd)
        }
        None => None,
    };
    let bundle_path = absolute_components(&request.bundle)?;
    let cache_path = request.cache.as_deref().map(absolute_components).transpose()?;
    let checked = |anchor: &OwnedFd, anchor_path: &[OsString], below: &[OsString]| {
        let fd = owned_walk(caller, anchor, below)?;
        Ok::<_, ShimError>(Checked { fd, path: [anchor_path, below].concat() })
    };
    let mut lowers = Vec::with_capacity(rules.len());
    for rule in &rules {
        lowers.push(match rule.anchor {
            Anchor::Bundle => checked(bundle, &bundle_path, &rule.below)?,
            Anchor::Cache => checked(
                cache.as_ref().expect("a cache lower implies --cache"),
                cache_path.as_deref().expect("a cache lower implies --cache"),
                &rule.below,
            )?,
        });
    }
    let upper = checked(bundle, &bundle_path, &[OsString::from(UPPER_DIR)])?;
    let work = checked(bundle, &bundle_path, &[OsString::from(WORK_DIR)])?;
    Ok(Some(Layers { lowers, upper, work }))
}

/// Opens `below` from `anchor` one component at a time as the caller, never following a
/// symlink, each one a directory of the caller's own (another user's directory on the way is
/// refused, even one the caller may enter).
fn owned_walk(caller: Caller, anchor: &OwnedFd, below: &[OsString]) -> Result<OwnedFd, ShimError> {
    let mut dir = anchor.try_clone().map_err(|e| ShimError::os("dup", e))?;
    for (i, name) in below.iter().enumerate() {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let shown = || below[..=i].iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
        dir = {
            let _identity = AsCaller::enter(caller);
            own(openat(Some(dir.as_raw_fd()), name.as_os_str(), flags, Mode::empty()).map_err(|e| {
                ShimError::refused(format!("overlay directory {}: {e} (symlinks are not followed)", shown()))
            })?)
        };
        require_owned_dir(&dir, caller, &[OsString::from(format!("overlay directory {}", shown()))])?;
    }
    Ok(dir)
}

// The new mount API (Linux 5.2); libc names the syscalls but not all of their constants.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
/// `fsconfig` copies at most this many bytes of a string value, NUL included.
const FSCONFIG_MAX_STRING: usize = 256;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Why the child could not make the overlay: the step, its errno and what overlayfs logged.
struct Failure {
    step: String,
    errno: i32,
    log: String,
}

/// Mounts the overlay of `layers` onto `rootfs`, made inside the user namespace at `userns`
/// (the container's, whose maps are written). Runs in the shim's private mount namespace.
/// A refusal by the kernel that means "no overlay here" comes back as an error whose message
/// starts with [`overlay::UNAVAILABLE`].
pub fn mount(
    caller: Caller,
    layers: &Layers,
    userns: &Path,
    rootfs: &OwnedFd,
    rootfs_path: &[OsString],
) -> Result<(), ShimError> {
    let rootfs =
        Checked { fd: rootfs.try_clone().map_err(|e| ShimError::os("dup", e))?, path: rootfs_path.to_vec() };
    let userns = nix::fcntl::open(userns, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map(own)
        .map_err(|e| ShimError::os("open the container's user namespace", e))?;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| ShimError::os("socketpair", e))?;
    // SAFETY: the shim is single-threaded here (the cgroup view's unshare already required it),
    // so the child may allocate; it only makes syscalls and leaves with _exit, never returning
    // into the parent's code.
    let child = match unsafe { fork() }.map_err(|e| ShimError::os("fork", e))? {
        ForkResult::Child => {
            drop(ours);
            let code = match make_in_userns(caller, &userns, layers, &rootfs) {
                Ok(namespace) => send(&theirs, b"ok", Some(namespace.as_raw_fd())),
                Err(f) => send(&theirs, format!("{}\0{}\0{}", f.step, f.errno, f.log).as_bytes(), None),
            };
            // SAFETY: _exit ends the child without running the parent's destructors or atexit.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    let answer = receive(&ours);
    let _ = waitpid(child, None);
    let namespace = match answer? {
        Answer::Mount(fd) => fd,
        Answer::Failed(f) => {
            let errno = nix::errno::Errno::from_raw(f.errno);
            let log = if f.log.is_empty() { String::new() } else { format!(" ({})", f.log) };
            let what = format!("{}: {errno}{log}", f.step);
            return Err(if overlay::means_unavailable(f.errno) {
                ShimError::os(overlay::UNAVAILABLE, what)
            } else {
                ShimError::os("overlay root", what)
            });
        }
    };
    // The child's mount namespace (of the container's user namespace) holds the overlay on the
    // rootfs; the shim moves into it, and libcontainer makes the container's from there. A mount
    // made in one namespace cannot be attached in another (Linux 6.15 refuses it), hence the move.
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| ShimError::os("enter the overlay's mount namespace", e))?;
    Ok(())
}

/// In the child: join the user namespace as its root with the caller's groups, take a mount
/// namespace of that user namespace (the new mount API wants CAP_SYS_ADMIN over the current
/// one), build the overlay and mount it on the rootfs there. Returns that mount namespace.
fn make_in_userns(
    caller: Caller,
    userns: &OwnedFd,
    layers: &Layers,
    rootfs: &Checked,
) -> Result<OwnedFd, Failure> {
    let fail = |step: &str| {
        let errno = nix::errno::Errno::last_raw();
        Failure { step: step.to_owned(), errno, log: String::new() }
    };
    crate::privilege::set_groups(caller.groups).map_err(|_| fail("setgroups"))?;
    // SAFETY: plain syscalls on an fd we own and integer arguments.
    unsafe {
        if libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
            return Err(fail("join the container's user namespace"));
        }
        // 0 inside is the caller outside: the overlay's mounter is the caller.
        if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            return Err(fail("become the user namespace's root"));
        }
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(fail("unshare a mount namespace"));
        }
    }
    // overlayfs takes its layers only from mounts of the current mount namespace: each checked
    // directory is found again in this copy of the shim's, by the same walk, and must be the
    // same inode (a rename meanwhile fails here instead of mounting something else).
    let again = |checked: &Checked| -> Result<OwnedFd, Failure> {
        let fd = reopen(&checked.path).map_err(|e| Failure {
            step: format!("reopen {}", locald_shim_protocol::validate::join(&checked.path)),
            errno: e as i32,
            log: String::new(),
        })?;
        let same = |a: &OwnedFd, b: &OwnedFd| {
            let (a, b) = (nix::sys::stat::fstat(a.as_raw_fd()), nix::sys::stat::fstat(b.as_raw_fd()));
            matches!((a, b), (Ok(a), Ok(b)) if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
        };
        if !same(&fd, &checked.fd) {
            return Err(Failure {
                step: format!(
                    "{} changed while it was checked",
                    locald_shim_protocol::validate::join(&checked.path)
                ),
                errno: libc::ESTALE,
                log: String::new(),
            });
        }
        Ok(fd)
    };
    let lowers = layers.lowers.iter().map(again).collect::<Result<Vec<_>, _>>()?;
    let (upper, work, target) = (again(&layers.upper)?, again(&layers.work)?, again(rootfs)?);
    let proc_fd = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    let lowerdir = lowers.iter().map(proc_fd).collect::<Vec<_>>().join(":");
    let cstring = |s: String| CString::new(s).expect("no NUL in a /proc/self/fd path");
    // fsconfig takes strings of up to 256 bytes: a longer stack goes one `lowerdir+` at a time
    // (Linux 6.8; older kernels refuse it, and the daemon copies instead).
    let mut options: Vec<(&str, Option<CString>)> = if lowerdir.len() < FSCONFIG_MAX_STRING {
        vec![("lowerdir", Some(cstring(lowerdir)))]
    } else {
        lowers.iter().map(|fd| ("lowerdir+", Some(cstring(proc_fd(fd))))).collect()
    };
    options.extend([
        ("upperdir", Some(cstring(proc_fd(&upper)))),
        ("workdir", Some(cstring(proc_fd(&work)))),
        ("userxattr", None),
    ]);
    let options: Vec<(CString, Option<CString>)> =
        options.into_iter().map(|(key, value)| (CString::new(key).expect("static key"), value)).collect();
    // SAFETY: fsopen takes a C string and flags and returns a new fd or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(fail("fsopen overlay"));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let config = |command: libc::c_uint, key: *const libc::c_char, value: *const libc::c_char| {
        // SAFETY: fsconfig with an fd we own and NUL-terminated strings (or null) that outlive
        // the call.
        unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), command, key, value, 0) }
    };
    let with_log = |mut failure: Failure| {
        failure.log = kernel_log(&fs);
        failure
    };
    for (key, value) in &options {
        let done = match value {
            Some(value) => config(FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr()),
            None => config(FSCONFIG_SET_FLAG, key.as_ptr(), std::ptr::null()),
        };
        if done != 0 {
            return Err(with_log(fail(&format!("overlay option {}", key.to_string_lossy()))));
        }
    }
    if config(FSCONFIG_CMD_CREATE, std::ptr::null(), std::ptr::null()) != 0 {
        return Err(with_log(fail("create the overlay")));
    }
    // SAFETY: fsmount with an fd we own and integer flags; returns a new fd or -1.
    let mount =
        unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, MOUNT_ATTR_NODEV) };
    if mount < 0 {
        return Err(with_log(fail("fsmount the overlay")));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let mount = unsafe { OwnedFd::from_raw_fd(mount as RawFd) };
    let empty = c"";
    // SAFETY: move_mount with two open fds, empty C strings and flags; no memory is written.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(fail("mount the overlay on the rootfs"));
    }
    nix::fcntl::open("/proc/self/ns/mnt", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map(own)
        .map_err(|_| fail("open the mount namespace"))
}

/// `path` from `/`, no symlink followed, as whoever runs this (the caller, in the child).
fn reopen(path: &[OsString]) -> Result<OwnedFd, nix::errno::Errno> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = own(openat(None, "/", flags, Mode::empty())?);
    for name in path {
        dir = own(openat(Some(dir.as_raw_fd()), name.as_os_str(), flags, Mode::empty())?);
    }
    Ok(dir)
}

/// The messages overlayfs left on the fs context ("e overlayfs: ..."), on one line.
fn kernel_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = nix::unistd::read(fs.as_raw_fd(), &mut buf) {
        if n == 0 || lines.len() >= 4 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    lines.join("; ").replace('\0', " ")
}

fn send(socket: &OwnedFd, message: &[u8], fd: Option<RawFd>) -> i32 {
    let fds = fd.map(|fd| [fd]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|fds| ControlMessage::ScmRights(fds)).collect();
    let sent =
        sendmsg::<()>(socket.as_raw_fd(), &[std::io::IoSlice::new(message)], &cmsgs, MsgFlags::empty(), None);
    if sent.is_ok() && fd.is_some() { 0 } else { 1 }
}

enum Answer {
    Mount(OwnedFd),
    Failed(Failure),
}

fn receive(socket: &OwnedFd) -> Result<Answer, ShimError> {
    let mut buf = [0u8; 1024];
    let (len, fd) = {
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let message =
            recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| ShimError::os("overlay: read the child's answer", e))?;
        let mut fd = None;
        for cmsg in message.cmsgs().map_err(|e| ShimError::os("overlay: control message", e))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (message.bytes, fd)
    };
    if let Some(fd) = fd {
        return Ok(Answer::Mount(fd));
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    let mut parts = text.splitn(3, '\0');
    let step = parts.next().filter(|s| !s.is_empty()).unwrap_or("overlay child").to_owned();
    let errno = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
    let log = parts.next().unwrap_or_default().to_owned();
    Ok(Answer::Failed(Failure { step, errno, log }))
}
