//! The `locald.toml` model: parsing with positioned errors ([`raw`]), then resolution into a
//! [`Config`] whose services have ports, environments, domains and a start order.

pub mod checkout;
pub mod dotenv;
mod error;
pub mod ports;
pub mod raw;
mod resolve;
mod select;
pub mod serving;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, line_col};
pub use raw::{Condition, PullPolicy, RestartPolicy};
pub use resolve::{LOCAL_SUFFIXES, PortSource, resolve_procfile, resolve_toml};
pub use select::SelectError;
pub use serving::Serves;

pub const FILE_NAME: &str = "locald.toml";
pub const PROCFILE: &str = "Procfile";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub project: Project,
    /// In start order: every service comes after the services it depends on.
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub domain: String,
    /// The canonical project directory; it identifies the project in the daemon.
    pub dir: PathBuf,
    /// `locald.toml` or `Procfile`.
    pub source: PathBuf,
    /// Requests on the proxy's HTTP port for this project's names are redirected to HTTPS.
    #[serde(default)]
    pub https_redirect: bool,
    /// Registries pulled from over plain HTTP besides the loopback ones.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Set when the project is in a linked git worktree: every name it has starts with
    /// `<label>.`, so it runs beside the repository's main checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<checkout::Checkout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub command: Option<Command>,
    /// Set for services that run in a container; `command` is then run inside it (or, when
    /// absent, the image's own entrypoint).
    pub container: Option<Container>,
    pub cwd: PathBuf,
    /// Fully interpolated, in the order they are set (env_file, env, then PORT).
    pub env: Vec<(String, String)>,
    /// How many of `env`, from the start, came from `env_file` (or a Procfile's `.env`); those
    /// after them up to `PORT` from `env` ([`Service::env_layer`]).
    #[serde(default)]
    pub env_from_file: usize,
    pub port: u16,
    /// Whether it takes connections on `port`, and which kind ([`serving`]).
    #[serde(default)]
    pub serves: Serves,
    /// From spawn to accepting connections (or passing its health check), before `up` fails.
    #[serde(with = "duration_text", default = "serving::default_start_timeout")]
    pub start_timeout: Duration,
    /// The port was written in `locald.toml` (not assigned): only then may `up` refuse to start
    /// because something else holds it; an assigned one is simply picked again.
    #[serde(default)]
    pub port_written: bool,
    pub domain: String,
    /// Extra names the proxy routes here (`domains = [...]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// The service's process gets variables that make common TLS clients trust the locald CA.
    #[serde(default)]
    pub trust_local_ca: bool,
    pub url: String,
    pub depends_on: Vec<Dependency>,
    pub health_check: Option<Check>,
    pub liveness: Option<Check>,
    pub restart: Restart,
    pub stop_signal: i32,
    #[serde(with = "duration_text")]
    pub stop_timeout: Duration,
    /// Started only when one of them is active or the service is named ([`Config::select`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// What restarts it when files change, with `locald up --watch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Watch>,
}

/// A service's file watch: `paths` and `ignore` are globs relative to the project directory
/// (`src/**`, `package.json`, `**/*.tmp`); `.gitignore`, `.git/` and `.locald/` are never
/// watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// A build step run in the service's directory with its environment before it restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_change: Option<Command>,
}

impl Service {
    /// Which layer set `env[index]`: `env_file`, `env`, or `locald` (`PORT`, and the CA
    /// variables the daemon appends for `trust_local_ca`).
    pub fn env_layer(&self, index: usize) -> &'static str {
        let port_at = self.env.iter().position(|(key, _)| key == "PORT").unwrap_or(self.env.len());
        if index < self.env_from_file.min(port_at) {
            "env_file"
        } else if index < port_at {
            "env"
        } else {
            "locald"
        }
    }

    /// Every name the proxy routes to this service, lowercase: its domain, then the
    /// `<service>.<project domain>` alias when the service has the project's domain, then its
    /// `domains`. The route table and the `/etc/hosts` sync both take their names from here, so
    /// a name served by the proxy can never be missing from the hosts file or the other way round.
    pub fn host_names(&self, project_domain: &str) -> Vec<String> {
        let mut names = vec![self.domain.clone()];
        if self.domain == project_domain {
            names.push(format!("{}.{}", self.name.replace('_', "-"), self.domain));
        }
        names.extend(self.domains.iter().cloned());
        for name in &mut names {
            name.make_ascii_lowercase();
        }
        names
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// As written: a path relative to the project (directory, OCI layout or archive) or a
    /// registry reference (`postgres:16`, `host:5000/app@sha256:…`).
    pub image: String,
    #[serde(default)]
    pub pull: PullPolicy,
    pub volumes: Vec<Volume>,
    /// The working directory inside the container (`cwd` of an image service).
    pub workdir: Option<String>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<i64>,
    /// `user = "..."`: overrides the image's `User`, resolved in the image's own files.
    #[serde(default)]
    pub user: Option<String>,
}

/// A host directory bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Absolute: project-relative paths are resolved against the project directory.
    pub host: PathBuf,
    /// Absolute, without `.` or `..`.
    pub container: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            Command::Argv(argv) => argv.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Probe {
    Tcp { port: u16 },
    Http { port: u16, path: String, status: Option<u16> },
    Command { command: Command },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub probe: Probe,
    #[serde(with = "duration_text")]
    pub interval: Duration,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive failures before the check counts as failed.
    pub retries: u32,
    /// Failures during this time after start do not count.
    #[serde(with = "duration_text")]
    pub start_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    /// Restarts in a row (without a healthy period in between) before giving up.
    pub max_restarts: u32,
    #[serde(with = "duration_text")]
    pub backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
}

impl Restart {
    /// Delay before restart number `attempt` (0-based): doubling from `backoff`, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Finds and resolves the project in `dir`: `locald.toml`, or else a `Procfile` (+ `.env`).
pub fn load(dir: &Path, ports: &mut dyn PortSource) -> Result<Config, ConfigError> {
    let dir = dir.canonicalize().map_err(|e| ConfigError::whole_file(dir, format!("cannot open: {e}")))?;
    let toml_path = dir.join(FILE_NAME);
    if toml_path.is_file() {
        let text = read(&toml_path)?;
        return resolve_toml(&dir, &toml_path, &text, ports);
    }
    let procfile = dir.join(PROCFILE);
    if procfile.is_file() {
        let text = read(&procfile)?;
        return resolve_procfile(&dir, &procfile, &text, ports);
    }
    Err(ConfigError::whole_file(&dir, format!("no {FILE_NAME} or {PROCFILE} here")))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))
}

/// Durations as humantime text (`"1s 500ms"`) in `config show` and on the wire.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
