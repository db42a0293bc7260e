//! `locald.toml` as written, with the source span of everything a later check may point at.
//! serde + toml give exact positions for syntax errors, unknown keys and ill-typed values; the
//! spans kept here serve the checks that need the whole file (missing dependencies, cycles,
//! interpolation).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub project: Option<RawProject>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    pub name: Option<Spanned<String>>,
    pub domain: Option<Spanned<String>>,
    /// Services get the locald CA in their trust variables (each service may say otherwise).
    pub trust_local_ca: Option<bool>,
    /// Plain HTTP requests for the project's names get a 308 to HTTPS.
    pub https_redirect: Option<bool>,
    /// Registries (`host[:port]`) pulled from over plain HTTP; loopback ones always are.
    pub insecure_registries: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub command: Option<Spanned<RawCommand>>,
    pub image: Option<Spanned<String>>,
    pub cwd: Option<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub env_file: Option<Spanned<String>>,
    /// A number, or `false` for a service that takes no connections.
    pub port: Option<Spanned<super::serving::RawPort>>,
    /// `"http"` (default) or `"tcp"` for a server of another protocol (not routed by the proxy).
    pub protocol: Option<super::serving::Protocol>,
    /// From spawn to accepting connections, before `up` gives up on it.
    pub start_timeout: Option<Dur>,
    pub domain: Option<Spanned<String>>,
    /// Extra host names the proxy routes to this service.
    pub domains: Option<Vec<Spanned<String>>>,
    /// Overrides `[project] trust_local_ca` for this service.
    pub trust_local_ca: Option<bool>,
    pub depends_on: Option<RawDepends>,
    pub health_check: Option<Spanned<RawCheck>>,
    pub liveness: Option<Spanned<RawCheck>>,
    pub restart: Option<RestartPolicy>,
    pub max_restarts: Option<u32>,
    pub backoff: Option<Dur>,
    pub max_backoff: Option<Dur>,
    pub stop_signal: Option<Signal>,
    pub stop_timeout: Option<Dur>,
    /// Image services only: `"./data:/data"` or `"./conf:/etc/app:ro"`.
    pub volumes: Option<Vec<Spanned<String>>>,
    /// Image services only: bytes, or `"256M"` / `"1.5GiB"`.
    pub memory: Option<Spanned<Size>>,
    /// Image services only: the most tasks the container may hold.
    pub pids: Option<Spanned<i64>>,
    /// Left out of `up` unless one of these profiles is asked for (`--profile`) or the service
    /// is named.
    pub profiles: Option<Vec<Spanned<String>>>,
    /// Globs, relative to the project directory, whose changes restart the service (with
    /// `locald up --watch`).
    pub watch: Option<Vec<Spanned<String>>>,
    /// Globs that never restart it, beside `.gitignore`.
    pub ignore: Option<Vec<Spanned<String>>>,
    /// Run before a restart caused by a change; a failure keeps the running copy.
    pub on_change: Option<Spanned<RawCommand>>,
    /// Image services only: who the command runs as (`name`, `uid`, `:group`), instead of the
    /// image's `User`.
    pub user: Option<Spanned<String>>,
    /// Image services only: when to pull a registry image.
    pub pull: Option<Spanned<PullPolicy>>,
}

/// When `up` pulls a registry image (compose's `pull_policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when no digest is recorded for the project or its blobs are gone.
    #[default]
    Missing,
    /// On every `up`.
    Always,
    /// Never: an image that is not in the store is an error.
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `tcp = true`: the service's port accepts a connection.
    pub tcp: Option<bool>,
    /// `http = "/health"`: GET on the service's port answers with `status` (default: any 2xx).
    pub http: Option<String>,
    pub status: Option<u16>,
    pub command: Option<Spanned<RawCommand>>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub start_period: Option<Dur>,
}

/// A string is run with `/bin/sh -c`; an array is the argv itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawCommand {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The dependency's process has been spawned.
    Started,
    /// The dependency's health check passed.
    Healthy,
    /// The dependency ran to completion with exit status 0 (migrations, builds).
    CompletedSuccessfully,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

/// `depends_on = ["db"]` or `depends_on = { db = "healthy" }`; no condition means "healthy"
/// when the dependency has a health check and "started" otherwise.
#[derive(Debug, Default)]
pub struct RawDepends(pub Vec<(Spanned<String>, Option<Condition>)>);

impl<'de> Deserialize<'de> for RawDepends {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDepends;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of service names or a table of name = condition")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawDepends, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    out.push((name, None));
                }
                Ok(RawDepends(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDepends, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    let condition = map.next_value::<Condition>()?;
                    out.push((name, Some(condition)));
                }
                Ok(RawDepends(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command string or an array of arguments")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("command is empty"));
                }
                Ok(RawCommand::Shell(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                if argv.is_empty() {
                    return Err(de::Error::custom("command is empty"));
                }
                Ok(RawCommand::Argv(argv))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A duration written as `"500ms"`, `"2s"`, `"1m 30s"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v)
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A size in bytes written as a number or `"512K"`, `"256M"`, `"1.5G"` (powers of 1024; `KiB`,
/// `MB`… are read the same way, since nobody means 10^6 when limiting a container's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(text: &str) -> Result<Size, String> {
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let factor: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            _ => return Err(format!("invalid size {text:?}: expected a number with K, M, G or T")),
        };
        let value: f64 = number.parse().map_err(|_| format!("invalid size {text:?}: no number"))?;
        let bytes = value * factor as f64;
        if !(1.0..=(i64::MAX as f64)).contains(&bytes) {
            return Err(format!("invalid size {text:?}: out of range"));
        }
        Ok(Size(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256M\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .ok()
                    .filter(|b| *b > 0)
                    .map(Size)
                    .ok_or_else(|| E::custom("a size must be positive"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A signal name, with or without `SIG`: `"TERM"`, `"SIGINT"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

pub const SIGNALS: &[(&str, i32)] = &[
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("HUP", libc::SIGHUP),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
];

impl Signal {
    pub fn parse(name: &str) -> Option<Signal> {
        let bare = name.strip_prefix("SIG").unwrap_or(name);
        SIGNALS.iter().find(|(n, _)| *n == bare).map(|(_, s)| Signal(*s))
    }

    pub fn name(self) -> &'static str {
        SIGNALS.iter().find(|(_, s)| *s == self.0).map_or("?", |(n, _)| n)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Signal::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
            de::Error::custom(format!("unknown signal {name:?}, expected one of {}", known.join(", ")))
        })
    }
}
