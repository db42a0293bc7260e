//! A service process created directly in its cgroup: `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)`
//! (Linux 5.7). Joining the cgroup after fork instead (a write to `cgroup.procs` between fork
//! and exec) migrates a task, which takes `cgroup_threadgroup_rwsem` for writing: the first
//! migration after a quiet spell waits for an RCU grace period, ~12 ms here, on every `up`.
//! Created in place, the child moves nowhere and the kernel takes that lock for reading only.
//! `std::process::Command` cannot do this (glibc 2.41's `posix_spawnattr_setcgroup_np` could;
//! Debian 12 has 2.36), so this is a spawn of our own that gives the child what `Command` gives
//! it: the same program lookup, argv, environment, cwd, stdio, process group, descriptor limit
//! and signal dispositions (SIGPIPE back to the default). One difference: the child starts
//! with no signal blocked, where `Command` passes on the spawning thread's mask.
//!
//! The child is a plain fork (no `CLONE_VM`: sharing the parent's stack would need assembly),
//! a copy of one thread of a multi-threaded daemon, so between clone3 and execve it only makes
//! async-signal-safe calls on memory prepared before the clone.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString, c_char};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// What to start: the values `Command` would be given.
pub struct Spec<'a> {
    /// `argv[0]` is the program, looked up in the child's `PATH` when it has no `/`.
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// The whole environment, as [`environment`] makes it.
    pub env: &'a [(OsString, OsString)],
    /// `RLIMIT_NOFILE` (soft, hard) to set in the child, when the daemon changed its own.
    pub nofile: Option<(u64, u64)>,
    /// A directory fd of the cgroup v2 the child is created in.
    pub cgroup: BorrowedFd<'a>,
}

/// A started child: its pid, a pidfd taken at its creation (no window in which the pid could
/// be reused before we hold it), and the read ends of its stdout and stderr.
pub struct Child {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug)]
pub enum Error {
    /// This kernel (or a seccomp filter) does not offer clone3 into a cgroup; nothing started.
    Unsupported(io::Error),
    /// The child could not be started: the error `Command` gives for the same cause.
    Failed(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Failed(e)
    }
}

static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Whether [`spawn`] is worth trying: false once it said [`Error::Unsupported`].
pub fn available() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// Remembers that clone3 into a cgroup is not available here, saying so once.
pub fn unavailable(reason: &io::Error) {
    if !UNSUPPORTED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "clone3 into a cgroup unavailable ({reason}): services join their cgroup between fork and exec"
        );
    }
}

/// The environment `Command` builds from the daemon's own and `changes` (a value set, `None`
/// removed, in order): sorted by name, one entry per name.
pub fn environment(
    changes: impl IntoIterator<Item = (OsString, Option<OsString>)>,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (key, value) in changes {
        match value {
            Some(value) => env.insert(key, value),
            None => env.remove(&key),
        };
    }
    env.into_iter().collect()
}

/// Starts `spec` in its cgroup and returns once it has exec'd (or failed to).
pub fn spawn(spec: &Spec) -> Result<Child, Error> {
    let stdin = above_stdio(File::open("/dev/null")?.into())?;
    let (stdout, stdout_w) = pipe()?;
    let (stderr, stderr_w) = pipe()?;
    let (report, report_w) = pipe()?;
    let mut plan = Plan::new(spec, [&stdin, &stdout_w, &stderr_w, &report_w].map(|fd| fd.as_raw_fd()))?;

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND,
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: spec.cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // No signal reaches the child before it is ready for one: CLONE_CLEAR_SIGHAND gives it the
    // default action for every handled signal (the daemon's handlers must not run in a copy of
    // it), and its mask, all blocked from here, is emptied just before execve.
    let old_mask = block_all_signals();
    let cloned = loop {
        // SAFETY: clone3 reads `args` (a clone_args of the size passed) and writes the pidfd
        // into `pidfd`, both alive across the call. Without CLONE_VM the child gets a copy of
        // this address space and returns here on its own copy of the stack; from here on it
        // runs only `exec_child`, which makes async-signal-safe calls on memory prepared above.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
        match rc {
            -1 if errno() == libc::EINTR => continue,
            -1 => break Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: we are the child, single-threaded, and `plan` is our copy.
                unsafe { exec_child(&mut plan) }
            }
            pid => break Ok(pid as libc::pid_t),
        }
    };
    restore_signals(&old_mask);
    let pid = match cloned {
        Ok(pid) => pid,
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG)) =>
        {
            return Err(Error::Unsupported(e));
        }
        Err(e) => return Err(Error::Failed(e)),
    };
    // SAFETY: CLONE_PIDFD put a new fd, owned by nobody else, into `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child holds its own copies now; ours must go, or the report would never end.
    drop((stdin, stdout_w, stderr_w, report_w));
    match read_report(report) {
        Ok(None) => Ok(Child { pid: pid as u32, pidfd, stdout, stderr }),
        Ok(Some(errno)) => {
            reap(pid);
            Err(Error::Failed(io::Error::from_raw_os_error(errno)))
        }
        Err(e) => {
            reap(pid);
            Err(Error::Failed(e))
        }
    }
}

/// `struct clone_args` of `<linux/sched.h>`, up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `_PATH_BSHELL`: what glibc's execvp runs a file with when the kernel cannot (ENOEXEC).
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// Everything the child needs, allocated before the clone.
struct Plan {
    /// The paths execve is tried on, in order: the program itself when it has a `/`, else
    /// each `PATH` entry joined with it, as execvp(3) does.
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    /// `/bin/sh <candidate> argv[1..]`, for a candidate without a `#!` line (execvp's
    /// fallback, which `Command` gets through execvp); slot 1 is filled in by the child.
    script: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    cwd: CString,
    nofile: Option<libc::rlimit>,
    /// stdin, stdout, stderr, then the report pipe's write end (all above 2).
    fds: [RawFd; 4],
}

impl Plan {
    fn new(spec: &Spec, fds: [RawFd; 4]) -> io::Result<Self> {
        let _argv =
            spec.argv.iter().map(|a| c_string(a.as_bytes().to_vec())).collect::<io::Result<Vec<_>>>()?;
        let program =
            _argv.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let _envp = spec
            .env
            .iter()
            .map(|(k, v)| c_string([k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        let path = spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone().into_vec());
        let candidates = candidates(program.as_bytes(), path.as_deref())?;
        let argv = null_terminated(&_argv);
        let mut script = vec![SHELL.as_ptr(), std::ptr::null()];
        script.extend_from_slice(&argv[1..]);
        Ok(Plan {
            candidates,
            argv,
            script,
            envp: null_terminated(&_envp),
            _argv,
            _envp,
            cwd: c_string(spec.cwd.as_os_str().as_bytes().to_vec())?,
            nofile: spec.nofile.map(|(soft, hard)| libc::rlimit { rlim_cur: soft, rlim_max: hard }),
            fds,
        })
    }
}

/// execvp(3)'s search: no search for a name with a `/`; else each entry of the child's `PATH`
/// (glibc's `/bin:/usr/bin` without one), an empty entry meaning the working directory.
fn candidates(program: &[u8], path: Option<&[u8]>) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Ok(Vec::new()); // execvp: ENOENT, which the child reports with no candidate
    }
    if program.contains(&b'/') {
        return Ok(vec![c_string(program.to_vec())?]);
    }
    let path = path.unwrap_or(b"/bin:/usr/bin");
    path.split(|b| *b == b':')
        .map(|dir| match dir {
            [] => c_string(program.to_vec()),
            dir => c_string([dir, b"/", program].concat()),
        })
        .collect()
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    // `Command`'s error for the same input.
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data"))
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect()
}

/// The child, from clone3 to execve. Only async-signal-safe calls: no allocation, no lock, no
/// panic (no indexing that could fail, no formatting); every failure is reported as its errno.
///
/// # Safety
/// Only in the child of a clone without CLONE_VM, with `plan` as prepared by [`Plan::new`].
unsafe fn exec_child(plan: &mut Plan) -> ! {
    let [stdin, stdout, stderr, report] = plan.fds;
    // SAFETY: every call below is a plain syscall on fds, NUL-terminated strings and
    // null-terminated pointer arrays that `plan` owns; the process is single-threaded.
    unsafe {
        for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
            // Distinct fds (all above 2), so dup2 always clears CLOEXEC on the target.
            while libc::dup2(fd, target) < 0 {
                if errno() != libc::EINTR {
                    fail(report, errno());
                }
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(report, errno());
        }
        if libc::setpgid(0, 0) != 0 {
            fail(report, errno());
        }
        if let Some(limit) = &plan.nofile
            && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
        {
            fail(report, errno());
        }
        // As std does: SIGPIPE is ignored by Rust programs, and their children must not be.
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            fail(report, errno());
        }
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
            fail(report, errno());
        }
        // execvp(3)'s rules: go on past a missing or inaccessible candidate, stop at any other
        // error; EACCES wins over ENOENT at the end.
        let (mut last, mut denied) = (libc::ENOENT, false);
        for candidate in &plan.candidates {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            if errno() == libc::ENOEXEC
                && let Some(slot) = plan.script.get_mut(1)
            {
                *slot = candidate.as_ptr();
                libc::execve(SHELL.as_ptr(), plan.script.as_ptr(), plan.envp.as_ptr());
            }
            last = errno();
            match last {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(report, last),
            }
        }
        fail(report, if denied { libc::EACCES } else { last })
    }
}

/// Writes `errno` to the report pipe and exits; the parent reaps the child.
///
/// # Safety
/// Only in the child of [`spawn`].
unsafe fn fail(report: RawFd, errno: i32) -> ! {
    let bytes = errno.to_ne_bytes();
    // SAFETY: write(2) from a local buffer and _exit(2), both async-signal-safe.
    unsafe {
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// The child's errno, or `None` once the report pipe ended without one (it exec'd: the pipe
/// was closed on exec).
fn read_report(report: OwnedFd) -> io::Result<Option<i32>> {
    let mut report = File::from(report);
    let (mut buf, mut got) = ([0u8; 4], 0);
    while got < buf.len() {
        match report.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match got {
        0 => Ok(None),
        4 => Ok(Some(i32::from_ne_bytes(buf))),
        _ => Err(io::Error::other("the child's exec report was cut short")),
    }
}

fn reap(pid: libc::pid_t) {
    // SAFETY: waitpid on our own child, with no status pointer.
    while unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) } < 0 && errno() == libc::EINTR {}
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((read, above_stdio(write)?))
}

/// `fd` moved above 2 if it is 0–2 (the daemon was started with one of those closed), so no
/// dup2 onto 0–2 in the child can overwrite another of its fds.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Blocks every signal on this thread, returning the mask it had.
fn block_all_signals() -> libc::sigset_t {
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask reads it and initialises `old`
    // (it cannot fail with a valid `how`).
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        old.assume_init()
    }
}

fn restore_signals(mask: &libc::sigset_t) {
    // SAFETY: `mask` is a mask pthread_sigmask returned.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno, always valid to read; it is a
    // plain TLS access, fine between fork and exec.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
#[path = "spawn/tests.rs"]
mod tests;
