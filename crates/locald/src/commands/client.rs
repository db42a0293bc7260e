//! Talking to the daemon: connect to its socket, starting it in the background when absent
//! and waiting for its readiness byte rather than for a guessed delay.

use std::io::{BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use locald_core::ipc::{self, Request, Response};
use locald_core::paths;

pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects, starting the daemon first if none answers.
    pub fn connect() -> anyhow::Result<Self> {
        let socket = paths::socket_path()?;
        if let Ok(stream) = UnixStream::connect(&socket) {
            return Ok(Self::from(stream));
        }
        start_daemon(&socket)?;
        Ok(Self::from(
            UnixStream::connect(&socket).with_context(|| format!("connecting to {}", socket.display()))?,
        ))
    }

    /// Connects only if a daemon is running.
    pub fn existing() -> anyhow::Result<Option<Self>> {
        let socket = paths::socket_path()?;
        Ok(UnixStream::connect(&socket).ok().map(Self::from))
    }

    fn from(stream: UnixStream) -> Self {
        Self { reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        ipc::write(self.reader.get_mut(), request).context("sending to the daemon")
    }

    /// The next response; an error when the daemon hung up mid-answer.
    pub fn next(&mut self) -> anyhow::Result<Response> {
        match ipc::read(&mut self.reader).context("reading from the daemon")? {
            Some(response) => Ok(response),
            None => bail!("the daemon closed the connection"),
        }
    }

    /// Sends a request that has one answer; a daemon-side error becomes an error here.
    pub fn call(request: &Request) -> anyhow::Result<Response> {
        let mut client = Self::connect()?;
        client.send(request)?;
        match client.next()? {
            Response::Error { message } => bail!("{message}"),
            response => Ok(response),
        }
    }
}

#[cfg(target_os = "linux")]
fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// No pipe2 on macOS: the flag is set right after, before this process starts anything.
#[cfg(not(target_os = "linux"))]
fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let (read, write) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    Ok((read, write))
}

fn start_daemon(socket: &Path) -> anyhow::Result<()> {
    let state = paths::state_dir()?;
    let log_path = state.join("daemon.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let (ready_read, ready_write) = cloexec_pipe()?;
    // The daemon's copy must survive exec: a dup without CLOEXEC.
    let inherited = nix::unistd::dup(ready_write.as_raw_fd())?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(["server", "start"])
        .env(locald_daemon::server::READY_FD_VAR, inherited.to_string())
        // Not the caller's directory: the daemon must not keep a project's mount busy.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        // Its own session: neither a Ctrl-C meant for this command nor the terminal closing
        // reaches the daemon.
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let spawned = command.spawn();
    let _ = nix::unistd::close(inherited);
    drop(ready_write);
    let mut child = spawned.context("starting the daemon")?;
    let mut byte = [0u8; 1];
    let mut ready = std::fs::File::from(ready_read);
    if matches!(ready.read(&mut byte), Ok(1)) {
        // Reaped by nobody else: let a thread wait so it does not linger as a zombie.
        std::thread::spawn(move || child.wait());
        return Ok(());
    }
    // It exited without becoming ready: most often another CLI started one just now.
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
    let last = tail.lines().last().unwrap_or("no output");
    bail!("the daemon did not start ({last}); see {}", log_path.display())
}

/// The canonical project directory (default: the current one).
pub fn project_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    dir.canonicalize().with_context(|| format!("{}", dir.display()))
}
