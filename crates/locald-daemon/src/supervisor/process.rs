//! One service process: spawned as the leader of its own process group, watched through a
//! pidfd (on macOS: a thread in `waitid(WNOWAIT)`), and reaped only after its whole group got
//! SIGKILL. Holding the unreaped leader keeps
//! its pid (= the group id) from being recycled, so a signal to the group can never reach an
//! unrelated process. With a cgroup it is created in it (`spawn.rs`), else `Command` starts it.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use locald_core::config::Service;

use super::cgroup::ServiceCgroup;
#[cfg(target_os = "linux")]
use super::spawn;
use crate::shim::Privileged;
use locald_shim_protocol::protocol::BundleRunRequest;

/// Every process the daemon starts carries this variable: `<owner>` names the state dir of
/// the daemon that started it, so a later daemon on the same state can find leftovers of a
/// killed predecessor (even ones that left the process group) and nothing else.
pub const OWNER_VAR: &str = "LOCALD_OWNER";

pub struct Running {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    cgroup: Option<ServiceCgroup>,
    /// For a container: the shim's control channel. The shim is setuid and the container's
    /// parent; a signal to its group would kill it before it could pass anything on, so stop
    /// requests go through here. Dropping it (daemon gone) makes the shim kill the container.
    control: Option<UnixStream>,
    pub container: Option<String>,
}

/// The read ends of a service's stdout and stderr.
pub struct Output {
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with status {code}"),
            Exit::Signal(sig) => format!("killed by signal {sig}"),
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(sig) => 128 + sig,
        }
    }
}

pub fn spawn(service: &Service, owner: &str, cgroup: Option<ServiceCgroup>) -> io::Result<(Running, Output)> {
    let (pid, pidfd, output) = watch(start(service, owner, cgroup.as_ref(), Route::Best)?)?;
    Ok((Running { pid, pidfd, cgroup, control: None, container: None }, output))
}

/// How [`start`] may start a process in a cgroup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Created in it (Linux 5.7), unless this kernel said it cannot.
    Best,
    /// `Command`, joining it between fork and exec: the fallback, and tests' reference.
    #[cfg_attr(not(all(test, target_os = "linux")), allow(dead_code))]
    Command,
}

/// A child just started, before anything watches it.
pub(super) struct Started {
    pub pid: u32,
    /// An fd readable once the child exited; `None`: make one ([`exit_watch`]).
    pub pidfd: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub(super) fn start(
    service: &Service,
    owner: &str,
    cgroup: Option<&ServiceCgroup>,
    route: Route,
) -> io::Result<Started> {
    let command = service.command.as_ref().ok_or_else(|| io::Error::other("service has no command"))?;
    let argv = command.argv();
    #[cfg(target_os = "linux")]
    if let Some(cgroup) = cgroup
        && route == Route::Best
        && spawn::available()
    {
        match start_in(cgroup, service, owner, &argv) {
            Ok(started) => return Ok(started),
            Err(spawn::Error::Unsupported(e)) => spawn::unavailable(&e),
            Err(spawn::Error::Failed(e)) => return Err(e),
        }
    }
    let _ = route; // only Linux has another route
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&service.cwd)
        .envs(service.env.iter().map(|(k, v)| (k, v)))
        .env(OWNER_VAR, owner)
        .env_remove(crate::server::READY_FD_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::nofile::restore_in_child(&mut cmd);
    // Open until spawn returns, the child writes to its copy.
    let procs = cgroup.map(ServiceCgroup::open_procs).transpose()?;
    if let Some(procs) = &procs {
        let procs = procs.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls write(2), which is
        // async-signal-safe, on an fd that stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // "0" = the writing process: the child joins before it can fork anything.
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(started(cmd.spawn()?))
}

/// What the `Command` below gets, created in `cgroup` by clone3.
#[cfg(target_os = "linux")]
fn start_in(
    cgroup: &ServiceCgroup,
    service: &Service,
    owner: &str,
    argv: &[String],
) -> Result<Started, spawn::Error> {
    let changes = service.env.iter().map(|(k, v)| (k.into(), Some(v.into())));
    let changes =
        changes.chain([(OWNER_VAR.into(), Some(owner.into())), (crate::server::READY_FD_VAR.into(), None)]);
    let env = spawn::environment(changes);
    let spec = spawn::Spec {
        argv,
        cwd: &service.cwd,
        env: &env,
        nofile: crate::nofile::to_give_back(),
        cgroup: cgroup.dir_fd(),
    };
    let spawn::Child { pid, pidfd, stdout, stderr } = spawn::spawn(&spec)?;
    Ok(Started { pid, pidfd: Some(pidfd), stdout, stderr })
}

fn started(mut child: std::process::Child) -> Started {
    let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
    let stderr = OwnedFd::from(child.stderr.take().expect("piped"));
    Started { pid: child.id(), pidfd: None, stdout, stderr }
}

/// Takes over a just-started child: its pid pinned by an exit watch (reaped by
/// [`Running::wait`], not through a `Child`) and its output pipes.
fn watch(started: Started) -> io::Result<(u32, AsyncFd<OwnedFd>, Output)> {
    let Started { pid, pidfd, stdout, stderr } = started;
    let pidfd = match pidfd {
        Some(pidfd) => pidfd,
        None => exit_watch(pid)?,
    };
    let stdout = pipe::Receiver::from_owned_fd(stdout)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr)?;
    // SAFETY: an OwnedFd is open, always returns the same raw fd, and is closed only when the
    // AsyncFd owning it is dropped.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    Ok((pid, pidfd, Output { stdout, stderr }))
}

/// Starts `locald-shim bundle run` for a prepared bundle; the shim's stdout and stderr are the
/// container's.
pub fn spawn_container(shim: &Arc<dyn Privileged>, run: &BundleRunRequest) -> io::Result<(Running, Output)> {
    let (ours, theirs) = UnixStream::pair()?;
    let id = &run.id;
    let mut cmd = shim.bundle_run(run, theirs.as_raw_fd()).map_err(io::Error::other)?;
    // Its own group: a terminal's Ctrl-C to the daemon must not reach the shim directly.
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // The shim hands the container the limits it was started with.
    crate::nofile::restore_in_child(&mut cmd);
    let child = cmd.spawn()?;
    drop(theirs);
    let (pid, pidfd, output) = watch(started(child))?;
    let running = Running { pid, pidfd, cgroup: None, control: Some(ours), container: Some(id.to_owned()) };
    Ok((running, output))
}

impl Running {
    /// Waits until the leader exits, kills what is left of its group, then reaps it.
    pub async fn wait(&self) -> Exit {
        loop {
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        let exit = loop {
            match waitpid(Pid::from_raw(self.pid as i32), None) {
                Ok(WaitStatus::Exited(_, code)) => break Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Exit::Signal(sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break Exit::Signal(libc::SIGKILL),
            }
        };
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove().await;
        }
        exit
    }

    /// Sends `signal` to the whole group (for a container: asks the shim to signal it). Valid
    /// until [`wait`](Self::wait) has returned.
    pub fn signal_group(&self, signal: i32) {
        if let Some(control) = &self.control {
            let name = Signal::try_from(signal).map_or("SIGKILL", |s| s.as_str());
            let _ = (&*control).write_all(format!("{name}\n").as_bytes());
            return;
        }
        if let Ok(signal) = Signal::try_from(signal) {
            let _ = killpg(Pid::from_raw(self.pid as i32), signal);
        }
        if signal == libc::SIGKILL
            && let Some(cgroup) = &self.cgroup
        {
            cgroup.kill();
        }
    }

    /// The last resort when a shim does not act on a stop request: kill the shim itself (the
    /// container goes with it when the shim's cleanup cannot run, which is why this comes last).
    pub fn kill_shim(&self) {
        if self.control.is_some() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// A second handle on a container's control socket.
    pub fn control_clone(&self) -> Option<UnixStream> {
        self.control.as_ref()?.try_clone().ok()
    }

    /// Whether the service runs in its own cgroup (shown by `status`).
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }
}

/// A container's first line on its control socket: `started <pid>` once it runs, or the shim's
/// reason it could not mount the overlay root (`overlay-unavailable …`); `None` when the shim
/// ended without a word, or said nothing within `timeout`. Blocking.
pub fn first_line(control: UnixStream, timeout: Duration) -> Option<String> {
    control.set_read_timeout(Some(timeout)).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match std::io::Read::read(&mut &control, &mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned())
}

/// An fd that becomes readable once the child `pid` has exited, without reaping it.
#[cfg(target_os = "linux")]
fn exit_watch(pid: u32) -> io::Result<OwnedFd> {
    pidfd_open(pid)
}

/// Where there are no pidfds: a thread waits for the exit with `WNOWAIT` (the zombie keeps the
/// pid) and then closes the write end of a pipe, which makes the read end readable (EOF).
#[cfg(not(target_os = "linux"))]
fn exit_watch(pid: u32) -> io::Result<OwnedFd> {
    wnowait_watch(pid)
}

#[cfg_attr(target_os = "linux", allow(dead_code))]
fn wnowait_watch(pid: u32) -> io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe()?;
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    std::thread::Builder::new().name(format!("exit-{pid}")).stack_size(64 * 1024).spawn(move || {
        loop {
            // SAFETY: siginfo_t is plain data that waitid fills in; zeroed is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes only into `info`, which lives across the call.
            let rc = unsafe {
                libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
            };
            if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        drop(write);
    })?;
    Ok(read)
}

#[cfg(target_os = "linux")]
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// SIGKILLs every process of this user that carries `OWNER_VAR=<owner>`: leftovers of a daemon
/// that was killed. Each target is pinned with a pidfd and checked again before the signal, so
/// a pid recycled in between is left alone. Returns how many were killed.
#[cfg(target_os = "linux")]
pub fn kill_leftovers(owner: &str) -> usize {
    let marker = format!("{OWNER_VAR}={owner}");
    let me = std::process::id();
    let mut killed = 0;
    let mut victims = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me || !carries(pid, &marker) {
            continue;
        }
        let Ok(pidfd) = pidfd_open(pid) else { continue };
        if !carries(pid, &marker) {
            continue;
        }
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a null siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if rc == 0 {
            killed += 1;
            victims.push(pidfd);
        }
    }
    // Wait for them to be gone, so their ports are free again when the projects come back.
    for pidfd in victims {
        let mut fds =
            [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(2000u16));
    }
    killed
}

/// Without /proc and pidfds there is no race-free way to find and signal another process by
/// its environment, so a killed daemon's leftovers stay (their process groups die with the
/// terminal session or a reboot); `up` reports a port they still hold.
#[cfg(not(target_os = "linux"))]
pub fn kill_leftovers(_owner: &str) -> usize {
    0
}

#[cfg(target_os = "linux")]
fn carries(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::process::{Command, Stdio};

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    fn readable(fd: &std::os::fd::OwnedFd, timeout_ms: u16) -> bool {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(timeout_ms)).unwrap() == 1
    }

    /// The watch macOS uses: quiet while the child runs, readable once it exited, and the child
    /// is still there to be reaped (with its status) by the supervisor afterwards.
    #[test]
    fn wnowait_watch_fires_on_exit_and_leaves_the_zombie() {
        let mut child =
            Command::new("sh").args(["-c", "read line; exit 7"]).stdin(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let watch = super::wnowait_watch(pid).unwrap();
        assert!(!readable(&watch, 200), "the watch fired while the child was running");
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(readable(&watch, 10_000), "the watch did not fire after the child exited");
        // Had the watch reaped it, this would fail with ECHILD instead of returning the status.
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
}
