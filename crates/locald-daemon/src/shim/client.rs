//! Running the shim: the version handshake and each request, with the shim's exit class and
//! one-line message turned back into a typed error.

use std::io::{IoSliceMut, Read};
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use locald_shim_protocol::protocol::{
    BundleRunRequest, CleanupRequest, DebugPortRequest, MountLoopRequest, SyncHostsRequest,
    UnmountLoopRequest,
};
use locald_shim_protocol::{
    BindRequest, CONTROL_FD, ExitClass, PROTOCOL_VERSION, Request, ShimMode, parse_version_line,
};
use nix::cmsg_space;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::Privileged;
use super::discovery::{self, Insecure};

const SETUP_HINT: &str = "run `sudo locald admin setup`";
/// A shim request is one short syscall sequence; anything slower is a hung shim.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ShimClientError {
    #[error("no usable locald-shim: {reasons} — {SETUP_HINT}")]
    NotFound { reasons: String },
    #[error("${var} points at an unusable shim: {reason}", var = discovery::ENV_OVERRIDE)]
    BadOverride { reason: Insecure },
    #[error("shim at {path} is version {found}, locald needs {needed} — {SETUP_HINT}")]
    VersionMismatch { path: PathBuf, found: String, needed: String },
    #[error("shim at {path} did not answer the version handshake: {detail} — {SETUP_HINT}")]
    Handshake { path: PathBuf, detail: String },
    #[error("could not run the shim at {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("{message}")]
    Failed { class: Option<ExitClass>, message: String },
    /// The installed shim is the `--ports-only` one and `what` needs root.
    #[error(
        "{what} needs the full locald-shim install: {} holds only cap_net_bind_service \
         (capabilities mode, binds ports 1-1023 and nothing else) — run `sudo locald admin setup` \
         for the setuid install",
        .path.display()
    )]
    PortsOnly { path: PathBuf, what: &'static str },
    /// Asked of a daemon that found no usable shim when it started: why it found none.
    #[error(transparent)]
    Unavailable(std::sync::Arc<ShimClientError>),
}

impl ShimClientError {
    /// The shim's exit class when it ran and said no.
    pub fn class(&self) -> Option<ExitClass> {
        match self {
            ShimClientError::Failed { class, .. } => *class,
            _ => None,
        }
    }
}

/// A shim that passed discovery's checks and the version handshake.
#[derive(Debug, Clone)]
pub struct Shim {
    path: PathBuf,
    mode: ShimMode,
}

impl Shim {
    /// Finds the shim the way the daemon does: `$LOCALD_SHIM`, else the standard places.
    pub fn discover() -> Result<Self, ShimClientError> {
        let env_override = std::env::var_os(discovery::ENV_OVERRIDE).filter(|v| !v.is_empty());
        let overridden = env_override.is_some();
        let mut reasons = Vec::new();
        for candidate in discovery::candidates(env_override) {
            match discovery::check_trusted(&candidate) {
                Ok(path) => return Self::handshake(path),
                Err(reason) if overridden => return Err(ShimClientError::BadOverride { reason }),
                Err(reason) => reasons.push(reason.to_string()),
            }
        }
        Err(ShimClientError::NotFound { reasons: reasons.join("; ") })
    }

    /// Checks and handshakes the shim at exactly `path`.
    pub fn at(path: &Path) -> Result<Self, ShimClientError> {
        let path = discovery::check_trusted(path)
            .map_err(|reason| ShimClientError::NotFound { reasons: reason.to_string() })?;
        Self::handshake(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the shim said it holds its privilege: [`ShimMode::Setuid`] or
    /// [`ShimMode::Capabilities`] (a shim holding neither fails the handshake).
    pub fn mode(&self) -> ShimMode {
        self.mode
    }

    /// Why the requests beyond `bind` cannot be served, if they cannot.
    pub fn refuses_beyond_bind(&self, what: &'static str) -> Result<(), ShimClientError> {
        match self.mode {
            ShimMode::Capabilities => Err(ShimClientError::PortsOnly { path: self.path.clone(), what }),
            _ => Ok(()),
        }
    }

    fn handshake(path: PathBuf) -> Result<Self, ShimClientError> {
        let output = base_command(&path, &Request::Version)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| ShimClientError::Spawn { path: path.clone(), source })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().next().unwrap_or("").trim();
        let Some((version, protocol)) = parse_version_line(line) else {
            let detail =
                if line.is_empty() { stderr_line(&output.stderr) } else { format!("answered {line:?}") };
            return Err(ShimClientError::Handshake { path, detail });
        };
        let needed_version = env!("CARGO_PKG_VERSION");
        if protocol != PROTOCOL_VERSION || version != needed_version {
            return Err(ShimClientError::VersionMismatch {
                path,
                found: format!("{version} (protocol {protocol})"),
                needed: format!("{needed_version} (protocol {PROTOCOL_VERSION})"),
            });
        }
        let mode = stdout.lines().nth(1).and_then(ShimMode::parse_line);
        match mode {
            Some(mode @ (ShimMode::Setuid | ShimMode::Capabilities)) => Ok(Self { path, mode }),
            Some(ShimMode::Unprivileged) => Err(ShimClientError::Handshake {
                path,
                detail: "it runs without root or cap_net_bind_service (mounted nosuid? \
                         installed without its setuid bit or file capability?)"
                    .to_owned(),
            }),
            None => Err(ShimClientError::Handshake { path, detail: "no `mode` line".to_owned() }),
        }
    }

    /// Runs a request that answers on stdout and exits.
    fn run(&self, request: &Request) -> Result<String, ShimClientError> {
        let output = base_command(&self.path, request)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| ShimClientError::Spawn { path: self.path.clone(), source })?;
        if !output.status.success() {
            return Err(ShimClientError::Failed {
                class: output.status.code().and_then(ExitClass::from_code),
                message: stderr_line(&output.stderr),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn os_error(&self, what: &str, err: impl std::fmt::Display) -> ShimClientError {
        ShimClientError::Failed { class: None, message: format!("{what} ({}): {err}", self.path.display()) }
    }
}

/// Every request as one run of the shim; the `--ports-only` shim is refused here, before it is
/// run, for everything beyond `bind`.
impl Privileged for Shim {
    fn unavailable(&self) -> Option<Arc<ShimClientError>> {
        None
    }

    fn mode(&self) -> Option<ShimMode> {
        Some(self.mode)
    }

    fn unavailable_beyond_bind(&self, what: &'static str) -> Option<Arc<ShimClientError>> {
        self.refuses_beyond_bind(what).err().map(Arc::new)
    }

    /// Bound by the shim and passed back as an fd.
    fn bind(&self, port: u16, address: Option<IpAddr>) -> Result<TcpListener, ShimClientError> {
        let request = Request::Bind(BindRequest { port, address });
        // close-on-exec on both ends, as std sets it on every platform.
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| self.os_error("socketpair", e))?;
        let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeout).map_err(|e| self.os_error("SO_RCVTIMEO", e))?;

        let mut command = base_command(&self.path, &request);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        pass_as_control_fd(&mut command, theirs.as_raw_fd());
        let mut child =
            command.spawn().map_err(|source| ShimClientError::Spawn { path: self.path.clone(), source })?;
        drop(theirs);

        let received = receive_fd(ours.as_raw_fd());
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_end(&mut stderr);
        }
        let status = child.wait().map_err(|e| self.os_error("wait for shim", e))?;
        if !status.success() {
            return Err(ShimClientError::Failed {
                class: status.code().and_then(ExitClass::from_code),
                message: stderr_line(&stderr),
            });
        }
        let fd = received.map_err(|e| self.os_error("receive listener from shim", e))?;
        let listener = TcpListener::from(fd);
        match listener.local_addr() {
            Ok(addr) if addr.port() == port => Ok(listener),
            other => Err(ShimClientError::Failed {
                class: None,
                message: format!("shim passed back a socket not bound to port {port}: {other:?}"),
            }),
        }
    }

    fn cleanup(&self, path: &Path) -> Result<(), ShimClientError> {
        self.refuses_beyond_bind("removing root-owned files")?;
        self.run(&Request::Cleanup(CleanupRequest { path: path.to_owned() })).map(drop)
    }

    fn sync_hosts(&self, domains: &[String]) -> Result<(), ShimClientError> {
        self.refuses_beyond_bind("writing /etc/hosts")?;
        self.run(&Request::SyncHosts(SyncHostsRequest { domains: domains.to_vec() })).map(drop)
    }

    fn mount_loop(
        &self,
        image: &Path,
        target: &Path,
        fstype: &str,
        read_write: bool,
    ) -> Result<(), ShimClientError> {
        self.refuses_beyond_bind("a loop mount")?;
        let request = MountLoopRequest {
            image: image.to_owned(),
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            read_write,
        };
        self.run(&Request::MountLoop(request)).map(drop)
    }

    fn unmount_loop(&self, target: &Path) -> Result<(), ShimClientError> {
        self.refuses_beyond_bind("a loop unmount")?;
        self.run(&Request::UnmountLoop(UnmountLoopRequest { target: target.to_owned() })).map(drop)
    }

    fn debug_port(&self, port: u16) -> Result<Vec<PortOwner>, ShimClientError> {
        self.refuses_beyond_bind("naming a port's holder")?;
        let stdout = self.run(&Request::DebugPort(DebugPortRequest { port }))?;
        Ok(stdout.lines().filter_map(PortOwner::parse).collect())
    }

    fn bundle_run(&self, run: &BundleRunRequest, control: RawFd) -> Result<Command, ShimClientError> {
        self.refuses_beyond_bind("running a container")?;
        let mut command = base_command(&self.path, &Request::BundleRun(run.clone()));
        pass_as_control_fd(&mut command, control);
        Ok(command)
    }
}

/// The shim's environment is wiped by the shim itself; clearing it here too keeps the daemon's
/// secrets out of a process that is not ours to trust with them.
fn base_command(path: &Path, request: &Request) -> Command {
    let mut command = Command::new(path);
    command.args(request.to_args()).env_clear().stdin(Stdio::null());
    command
}

fn pass_as_control_fd(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and calls only dup2/fcntl, which are
    // async-signal-safe; it touches no memory shared with other threads.
    unsafe {
        command.pre_exec(move || {
            if fd == CONTROL_FD {
                // dup2 onto itself keeps FD_CLOEXEC, so clear it explicitly.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CONTROL_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn receive_fd(socket: RawFd) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = cmsg_space!([RawFd; 1]);
    #[cfg(target_os = "linux")]
    let flags = MsgFlags::MSG_CMSG_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let flags = MsgFlags::empty();
    let msg = recvmsg::<()>(socket, &mut iov, Some(&mut space), flags)?;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: SCM_RIGHTS just installed this fd in our table; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    received.ok_or_else(|| std::io::Error::other("the shim sent no file descriptor"))
}

fn stderr_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("exited without a message");
    line.trim().to_owned()
}

/// One line of `debug port`: `pid=<pid> uid=<uid> comm=<name>` for the caller's own processes,
/// `uid=<uid>` alone for another user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOwner {
    /// The process and its command name: only for the caller's own processes.
    pub process: Option<(u32, String)>,
    pub uid: u32,
}

impl PortOwner {
    pub fn parse(line: &str) -> Option<Self> {
        if let Some(uid) = line.strip_prefix("uid=") {
            return Some(Self { process: None, uid: uid.parse().ok()? });
        }
        let mut fields = line.splitn(3, ' ');
        let pid = fields.next()?.strip_prefix("pid=")?.parse().ok()?;
        let uid = fields.next()?.strip_prefix("uid=")?.parse().ok()?;
        let comm = fields.next()?.strip_prefix("comm=")?.to_owned();
        Some(Self { process: Some((pid, comm)), uid })
    }
}

impl std::fmt::Display for PortOwner {
    /// "pid 123 (uid 1000, python3)", or "a process of uid 1001".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.process {
            Some((pid, comm)) => write!(f, "pid {pid} (uid {}, {comm})", self.uid),
            None => write!(f, "a process of uid {}", self.uid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_owner_lines_parse() {
        assert_eq!(
            PortOwner::parse("pid=12 uid=1000 comm=python3 x"),
            Some(PortOwner { process: Some((12, "python3 x".into())), uid: 1000 })
        );
        assert_eq!(PortOwner::parse("uid=1001"), Some(PortOwner { process: None, uid: 1001 }));
        assert_eq!(PortOwner::parse("uid=1001").unwrap().to_string(), "a process of uid 1001");
        assert_eq!(PortOwner::parse("pid=x uid=1 comm=a"), None);
        assert_eq!(PortOwner::parse(""), None);
    }

    #[test]
    fn the_last_stderr_line_is_the_message() {
        assert_eq!(stderr_line(b"noise\nlocald-shim: refused: no\n"), "locald-shim: refused: no");
        assert_eq!(stderr_line(b""), "exited without a message");
    }
}
