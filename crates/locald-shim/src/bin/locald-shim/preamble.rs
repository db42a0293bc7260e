//! The hardening preamble: runs before the argv is parsed, because the caller controls the
//! environment, the inherited fds, the umask, the rlimits and the signal dispositions.

use std::ffi::OsString;

use locald_shim::{CONTROL_FD, ShimError};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
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
