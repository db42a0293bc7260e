//! The hardening preamble: runs before the argv is parsed, because the caller controls the
//! environment, the inherited fds, the umask, the rlimits and the signal dispositions.

use std::ffi::OsString;
use std::sync::OnceLock;

use locald_shim_protocol::{CONTROL_FD, ShimError};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, rlim_t, setrlimit};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::sys::stat::{Mode, umask};

pub fn refuse_empty_argv(argv: &[OsString]) -> Result<(), ShimError> {
    // Linux >= 5.18 turns argc 0 into argv = [""]; refuse that shape too.
    if argv.first().is_none_or(|arg0| arg0.is_empty()) {
        return Err(ShimError::refused("started with an empty argv"));
    }
    Ok(())
}

pub fn harden() -> Result<(), ShimError> {
    wipe_environment();
    ensure_standard_fds()?;
    close_fds_from(CONTROL_FD + 1);
    umask(Mode::from_bits_truncate(0o022));
    reset_signals();
    set_non_dumpable()?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| ShimError::os("disable core dumps", e))?;
    lift_limits()
}

/// Limits a caller can lower so that a privileged write stops halfway (SIGXFSZ past a file size,
/// ENOMEM on an allocation, SIGXCPU after some CPU seconds, a crash on stack growth, EMFILE) and
/// leaves a partial file behind in /etc or /run; each with the floor the shim raises it to.
/// RLIMIT_CORE is not here: it stays 0.
const LIFTED: [(Resource, rlim_t); 6] = [
    (Resource::RLIMIT_FSIZE, RLIM_INFINITY),
    (Resource::RLIMIT_CPU, RLIM_INFINITY),
    (Resource::RLIMIT_AS, RLIM_INFINITY),
    (Resource::RLIMIT_DATA, RLIM_INFINITY),
    (Resource::RLIMIT_STACK, 8 << 20),
    (Resource::RLIMIT_NOFILE, 1024),
];

/// The caller's own values of [`LIFTED`], for what runs on the caller's behalf.
static CALLER_LIMITS: OnceLock<Vec<(Resource, rlim_t, rlim_t)>> = OnceLock::new();

fn lift_limits() -> Result<(), ShimError> {
    let mut caller = Vec::with_capacity(LIFTED.len());
    for (resource, floor) in LIFTED {
        let (soft, hard) = getrlimit(resource).map_err(|e| ShimError::os("getrlimit", e))?;
        caller.push((resource, soft, hard));
        // Raising a hard limit needs root; without it no privileged work happens anyway
        // (`version`, `--help`, or a shim that is not setuid, which the request then refuses).
        if soft < floor && nix::unistd::geteuid().is_root() {
            // Root without CAP_SYS_RESOURCE (a container's bounding set) cannot pass the hard
            // limit: go as far as it allows; the writes then fail cleanly (see SIGXFSZ below).
            setrlimit(resource, floor, hard.max(floor))
                .or_else(|_| setrlimit(resource, floor.min(hard), hard))
                .map_err(|e| ShimError::os(&format!("raise {resource:?}"), e))?;
        }
    }
    let _ = CALLER_LIMITS.set(caller);
    // Past a file size limit that could not be lifted, a write returns EFBIG, so the shim removes
    // its partial file, instead of being killed with it in place.
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) };
    Ok(())
}

/// Puts the caller's limits back, and SIGXFSZ's default with RLIMIT_FSIZE: a container inherits
/// both (the policy refuses bundle rlimits), so it must not run with what the shim lifted for its
/// own writes.
#[cfg(target_os = "linux")]
pub fn restore_caller_limits() -> Result<(), ShimError> {
    for &(resource, soft, hard) in CALLER_LIMITS.get().into_iter().flatten() {
        setrlimit(resource, soft, hard).map_err(|e| ShimError::os(&format!("restore {resource:?}"), e))?;
    }
    // SAFETY: SIG_DFL installs no handler code.
    let _ = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigDfl) };
    Ok(())
}

/// fd 3 is kept through parsing only for the subcommands that take it.
pub fn close_control_fd() {
    let _ = nix::unistd::close(CONTROL_FD);
}

fn wipe_environment() {
    #[cfg(target_os = "linux")]
    // SAFETY: main has not started a thread yet, so nothing reads the environment concurrently;
    // clearenv also drops malformed entries (no `=`, empty names) that remove_var cannot name.
    unsafe {
        libc::clearenv();
    }
    #[cfg(not(target_os = "linux"))]
    for (key, _) in std::env::vars_os() {
        let bytes = key.as_encoded_bytes();
        if bytes.is_empty() || bytes.contains(&b'=') || bytes.contains(&0) {
            continue;
        }
        // SAFETY: single-threaded at this point, see above.
        unsafe { std::env::remove_var(&key) };
    }
}

/// A caller that closes 0, 1 or 2 could make the shim's next open land there and have error
/// messages written into it.
fn ensure_standard_fds() -> Result<(), ShimError> {
    for fd in 0..=2 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            let opened = open("/dev/null", OFlag::O_RDWR, Mode::empty())
                .map_err(|e| ShimError::os("open /dev/null", e))?;
            if opened != fd {
                return Err(ShimError::os("reopen standard fds", "unexpected fd number"));
            }
        }
    }
    Ok(())
}

fn close_fds_from(first: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: close_range only closes descriptors; nothing in this process holds one of
        // these fds (std opened none of them), so no owner is left with a dangling fd.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
        if ret == 0 {
            return;
        }
    }
    // Kernels before 5.9 and other systems: close one by one up to the fd limit.
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.min(1 << 20) as i32,
        Err(_) => 1 << 16,
    };
    for fd in first..limit {
        let _ = nix::unistd::close(fd);
    }
}

/// Ignored signals and a blocked mask survive exec; the shim starts from the defaults so a
/// caller cannot, for instance, make children auto-reap by ignoring SIGCHLD.
fn reset_signals() {
    for sig in Signal::iterator() {
        // SIGPIPE stays ignored (the Rust runtime's choice) so a closed peer is an EPIPE error.
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGPIPE) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code, so there is no signal-safety concern.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn set_non_dumpable() -> Result<(), ShimError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes plain integers and touches no memory of ours.
        let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if ret != 0 {
            return Err(ShimError::os("prctl(PR_SET_DUMPABLE)", Errno::last()));
        }
    }
    Ok(())
}
