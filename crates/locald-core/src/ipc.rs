//! The CLI ↔ daemon protocol: one JSON object per line, each wrapped in a [`Frame`] carrying
//! the protocol version. A line longer than [`MAX_FRAME`] is refused before it is parsed.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Condition, Config};

pub const PROTOCOL_VERSION: u32 = 1;
/// Far above any real request or log line; keeps a broken or hostile peer from making the
/// other side buffer without bound.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Frame<T> {
    pub v: u32,
    pub msg: T,
}

/// One per CLI command. Projects are named by their directory (canonicalised by the daemon).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Is the daemon there, and which version.
    Ping,
    /// Start (or attach to) the project in `dir`; streams `Progress` until `UpDone`/`Error`.
    /// On a running project, a changed config file is applied first.
    Up {
        dir: PathBuf,
        /// Only these services and what they depend on (default: all outside a profile).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<String>,
        /// Services with one of these profiles start too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        profiles: Vec<String>,
    },
    /// Stop a project's services and forget it.
    Down {
        dir: PathBuf,
        /// Also remove what the project's containers wrote (`down --volumes`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        volumes: bool,
    },
    /// All projects and their services.
    Status,
    /// Persisted log lines, interleaved by time; with `follow`, then streams new ones.
    Logs {
        dir: PathBuf,
        services: Vec<String>,
        follow: bool,
        tail: Option<usize>,
        since_micros: Option<u64>,
    },
    Start {
        dir: PathBuf,
        services: Vec<String>,
    },
    Stop {
        dir: PathBuf,
        services: Vec<String>,
    },
    Restart {
        dir: PathBuf,
        services: Vec<String>,
    },
    /// The resolved configuration of a project (the running one, with its assigned ports).
    ConfigShow {
        dir: PathBuf,
    },
    /// Restart a running project's services when files their `watch` globs name change
    /// (`on = false`: stop watching).
    Watch {
        dir: PathBuf,
        on: bool,
    },
    /// Pull the registry images of `services` (all image services when empty) afresh and pin
    /// what was pulled; streams `Pull` until `Ok`/`Error`.
    Pull {
        dir: PathBuf,
        services: Vec<String>,
    },
    /// A service's environment as its process gets it (`locald env`, `locald exec`).
    Env {
        dir: PathBuf,
        service: String,
    },
    /// A one-time login URL for the dashboard (`locald dashboard`).
    Dashboard,
    /// Stop every project, then exit.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Pong {
        version: String,
        pid: u32,
    },
    Progress {
        service: String,
        state: ServiceState,
        detail: Option<String>,
    },
    /// A registry image being pulled (before `up` starts anything).
    Pull(PullProgress),
    /// `up` finished: every service reached its goal.
    UpDone {
        project: Box<ProjectStatus>,
        attached: bool,
        /// Where the proxy listens, so the CLI can say when it is not on 80/443.
        #[serde(default)]
        proxy: Option<ProxyStatus>,
        /// One line each about the project that the user should know (names locald cannot
        /// serve fully, …).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// `up` failed on a service; `last_lines` are the end of its log.
    UpFailed {
        service: String,
        message: String,
        last_lines: Vec<String>,
    },
    Status {
        projects: Vec<ProjectStatus>,
        #[serde(default)]
        proxy: Option<ProxyStatus>,
    },
    Log(LogLine),
    Config(Box<Config>),
    /// `watch`: the services watched, each with its globs.
    Watching {
        services: Vec<(String, Vec<String>)>,
    },
    Env(ServiceEnv),
    /// Opens the dashboard once, within a short time; never logged.
    DashboardLogin {
        url: String,
    },
    Ok,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Waiting for its dependencies.
    Waiting,
    Starting,
    Running,
    Healthy,
    Unhealthy,
    /// Exited with status 0 and is not restarted (a one-shot job).
    Completed,
    /// Waiting out the backoff delay before the next restart.
    BackingOff,
    /// Gave up: exited and no restart is left, or never got ready.
    Failed,
    Stopped,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Healthy => "healthy",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Completed => "completed",
            ServiceState::BackingOff => "backing-off",
            ServiceState::Failed => "failed",
            ServiceState::Stopped => "stopped",
        }
    }

    /// A process runs that takes requests: the proxy forwards to it. An unhealthy one still
    /// gets them (it may answer some, and its own error beats a locald page).
    pub fn serves_traffic(self) -> bool {
        matches!(self, ServiceState::Running | ServiceState::Healthy | ServiceState::Unhealthy)
    }

    /// Nothing runs and nothing will until someone asks (start, restart, `up`).
    pub fn is_terminal(self) -> bool {
        matches!(self, ServiceState::Completed | ServiceState::Failed | ServiceState::Stopped)
    }

    /// Has reached what `up` waits for: done (a one-shot), healthy, or running when there is no
    /// health check to pass.
    pub fn is_ready(self, health_checked: bool) -> bool {
        match self {
            ServiceState::Completed | ServiceState::Healthy => true,
            ServiceState::Running => !health_checked,
            _ => false,
        }
    }

    /// Will not get ready by itself: it gave up, was stopped, or fails its health check.
    /// `up` reports these as failures rather than waiting on.
    pub fn is_failing(self) -> bool {
        matches!(self, ServiceState::Failed | ServiceState::Stopped | ServiceState::Unhealthy)
    }

    /// A dependent waiting on `condition` may start. "Started" holds from the spawn on, while the
    /// process lives, and for a one-shot that completed; "healthy" only while the health check
    /// passes.
    pub fn satisfies(self, condition: Condition) -> bool {
        match condition {
            Condition::Started => {
                self.serves_traffic() || matches!(self, ServiceState::Starting | ServiceState::Completed)
            }
            Condition::Healthy => self == ServiceState::Healthy,
            Condition::CompletedSuccessfully => self == ServiceState::Completed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectStatus {
    pub name: String,
    pub dir: PathBuf,
    pub domain: String,
    /// Which git worktree the project is, when it is a linked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<crate::config::checkout::Checkout>,
    pub services: Vec<ServiceStatus>,
    /// Files are watched (`locald up --watch`).
    #[serde(default)]
    pub watching: bool,
    /// Loop mounts made with `locald mount`; filled in by the CLI from the mount table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountStatus>,
}

/// The daemon's HTTPS/HTTP proxy: the ports it really listens on and how it got them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub https_port: u16,
    pub http_port: u16,
    /// The ports came from `locald-shim bind` (80/443); false = unprivileged fallback ports.
    pub via_shim: bool,
    /// Why the proxy is not on 80/443, when it is not.
    pub note: Option<String>,
    /// Why the proxy listens on 127.0.0.1 but not on ::1, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_note: Option<String>,
    /// The local CA certificate (`locald ca`).
    pub ca: PathBuf,
}

impl ProxyStatus {
    pub const HTTPS_PORT: u16 = 443;
    pub const HTTP_PORT: u16 = 80;

    /// On 443 and 80, so URLs carry no port.
    pub fn on_standard_ports(&self) -> bool {
        self.https_port == Self::HTTPS_PORT && self.http_port == Self::HTTP_PORT
    }

    /// `https://<host>`, with the port when it is not 443.
    pub fn https_url(&self, host: &str) -> String {
        match self.https_port {
            Self::HTTPS_PORT => format!("https://{host}"),
            port => format!("https://{host}:{port}"),
        }
    }

    /// `http://<host>`, with the port when it is not 80.
    pub fn http_url(&self, host: &str) -> String {
        match self.http_port {
            Self::HTTP_PORT => format!("http://{host}"),
            port => format!("http://{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Where it listens: the port it was given, or the one its processes were found on.
    pub port: u16,
    /// `https://…` for an HTTP service, `127.0.0.1:<port>` for another protocol, none for a
    /// service that does not serve or a one-shot that has completed ([`crate::config::serving`]).
    pub url: Option<String>,
    #[serde(default)]
    pub serves: crate::config::Serves,
    /// `None` when the service has no health check.
    pub healthy: Option<bool>,
    pub restarts: u32,
    /// Since the current process started.
    pub uptime_secs: Option<u64>,
    pub exit_code: Option<i32>,
    /// The last restart a file change caused: `src/app.py (and 2 more) changed 12s ago`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<String>,
}

/// What a service's process is started with, besides the daemon's own environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEnv {
    pub cwd: PathBuf,
    /// In the order they are set; a later one of the same name wins.
    pub vars: Vec<EnvVar>,
    /// The project is not up: the ports are the ones `up` would assign now.
    pub not_running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    /// `env_file`, `env` or `locald`.
    pub layer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub service: String,
    /// Microseconds since the Unix epoch, when the daemon read the line.
    pub micros: u64,
    /// `out` or `err`.
    pub stream: String,
    pub line: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {MAX_FRAME} bytes refused")]
    TooLarge,
    #[error(
        "protocol version {0} (this side speaks {PROTOCOL_VERSION}); restart the daemon with `locald server stop`"
    )]
    Version(u32),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Frame { v: PROTOCOL_VERSION, msg }).expect("IPC types serialize");
    line.push(b'\n');
    line
}

/// Parses one line (without its newline), checking size and version.
pub fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    if line.len() > MAX_FRAME {
        return Err(FrameError::TooLarge);
    }
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let Version { v } = serde_json::from_slice(line)?;
    if v != PROTOCOL_VERSION {
        return Err(FrameError::Version(v));
    }
    Ok(serde_json::from_slice::<Frame<T>>(line)?.msg)
}

pub fn write<T: Serialize>(writer: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    writer.write_all(&encode(msg))?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream. Reads at most `MAX_FRAME + 1` bytes.
pub fn read<T: DeserializeOwned>(reader: &mut impl BufRead) -> Result<Option<T>, FrameError> {
    let mut line = Vec::new();
    reader.take(MAX_FRAME as u64 + 1).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_FRAME {
            FrameError::TooLarge
        } else {
            FrameError::Io(io::ErrorKind::UnexpectedEof.into())
        });
    }
    line.pop();
    decode(&line).map(Some)
}

/// A loop mount `locald mount` made in a project, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    pub name: String,
    /// The image file behind the loop device, when the kernel says.
    pub image: Option<PathBuf>,
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode(&Request::Up { dir: "/p".into(), services: vec![], profiles: vec![] });
        let got: Option<Request> = read(&mut &bytes[..]).unwrap();
        assert!(matches!(got, Some(Request::Up { dir, .. }) if dir == std::path::Path::new("/p")));
        let other = br#"{"v":99,"msg":{"type":"ping"}}"#;
        assert!(matches!(decode::<Request>(other), Err(FrameError::Version(99))));
    }

    #[test]
    fn oversized_line_is_refused_without_reading_it_all() {
        let big = vec![b'x'; MAX_FRAME * 3];
        let mut reader = &big[..];
        assert!(matches!(read::<Request>(&mut reader), Err(FrameError::TooLarge)));
        assert_eq!(reader.len(), big.len() - MAX_FRAME - 1, "read no further than the cap");
    }
}

#[cfg(test)]
mod state_tests {
    use super::ServiceState::{self, *};
    use crate::config::Condition;

    const ALL: [ServiceState; 9] =
        [Waiting, Starting, Running, Healthy, Unhealthy, Completed, BackingOff, Failed, Stopped];

    fn those(f: impl Fn(ServiceState) -> bool) -> Vec<ServiceState> {
        ALL.into_iter().filter(|s| f(*s)).collect()
    }

    #[test]
    fn only_a_live_process_serves_traffic_even_when_unhealthy() {
        assert_eq!(those(ServiceState::serves_traffic), [Running, Healthy, Unhealthy]);
    }

    #[test]
    fn terminal_states_are_the_ones_nothing_leaves_unasked() {
        assert_eq!(those(ServiceState::is_terminal), [Completed, Failed, Stopped]);
        // Traffic: served, coming (the starting page), or down — each state exactly one.
        for state in ALL {
            assert!(!(state.serves_traffic() && state.is_terminal()), "{state:?}");
        }
    }

    #[test]
    fn running_is_ready_only_without_a_health_check() {
        assert_eq!(those(|s| s.is_ready(false)), [Running, Healthy, Completed]);
        assert_eq!(those(|s| s.is_ready(true)), [Healthy, Completed]);
    }

    #[test]
    fn up_fails_on_given_up_stopped_and_unhealthy_and_never_on_a_ready_state() {
        assert_eq!(those(ServiceState::is_failing), [Unhealthy, Failed, Stopped]);
        for state in ALL {
            assert!(!(state.is_failing() && state.is_ready(false)), "{state:?}");
        }
    }

    #[test]
    fn dependency_conditions() {
        assert_eq!(
            those(|s| s.satisfies(Condition::Started)),
            [Starting, Running, Healthy, Unhealthy, Completed],
            "started: from the spawn on, and a finished one-shot"
        );
        assert_eq!(those(|s| s.satisfies(Condition::Healthy)), [Healthy]);
        assert_eq!(those(|s| s.satisfies(Condition::CompletedSuccessfully)), [Completed]);
    }
}

/// How far the pull of one image is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    pub image: String,
    pub layers_done: usize,
    pub layers_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Of `bytes_done`, what came over the network (the rest was in the store).
    pub downloaded: u64,
    /// The last report of this image: pulled, or found pinned and complete.
    pub done: bool,
}
