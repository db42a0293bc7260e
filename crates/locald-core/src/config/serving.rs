//! Whether and how a service takes connections: what `up` waits for before it calls a service
//! ready, what the proxy routes, and what `up` and `status` print for it.
//!
//! The rule: a service serves HTTP on its port unless it says otherwise. `port = false` says it
//! does not serve at all (a worker): no probe, no route, no URL. `protocol = "tcp"` says it
//! serves something other than HTTP (a database): it is probed and shown as `127.0.0.1:<port>`,
//! but not routed by the proxy, which speaks only HTTP. In a `Procfile` only `web` serves
//! (Heroku's convention: the other process types get no traffic). A one-shot that has completed
//! gets no URL either, whatever it declared: nothing listens any more.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// How long a service may take from its spawn to accepting connections (or passing its health
/// check) before `up` gives up on it, when `start_timeout` is not written. Long enough for a dev
/// server's first compile.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serves {
    /// HTTP on its port: probed, routed at `https://<domain>`.
    #[default]
    Http,
    /// Another protocol on its port: probed, shown as `127.0.0.1:<port>`, not routed.
    Tcp,
    /// Nothing: no probe, no route, no URL.
    Nothing,
}

impl Serves {
    /// The proxy routes it and `/etc/hosts` lists its names.
    pub fn is_routed(self) -> bool {
        self == Serves::Http
    }

    /// `up` waits until its port accepts connections (unless a health check decides instead).
    pub fn is_probed(self) -> bool {
        self != Serves::Nothing
    }
}

/// `protocol = "http" | "tcp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

/// `port = 3000`, or `port = false` for a service that does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPort {
    Number(u16),
    Off,
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number, or false for a service that takes no connections")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                u16::try_from(v).map(RawPort::Number).map_err(|_| E::custom("port must be 1-65535"))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawPort, E> {
                if v {
                    Err(E::custom("port = true means nothing: write a number, or false for no port"))
                } else {
                    Ok(RawPort::Off)
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// What a written service declares, `port = false` winning over `protocol`.
pub fn serves(port: Option<RawPort>, protocol: Option<Protocol>) -> Serves {
    match (port, protocol) {
        (Some(RawPort::Off), _) => Serves::Nothing,
        (_, Some(Protocol::Tcp)) => Serves::Tcp,
        _ => Serves::Http,
    }
}

/// A Procfile's process type: only `web` takes traffic.
pub fn procfile_serves(name: &str) -> Serves {
    if name == "web" { Serves::Http } else { Serves::Nothing }
}

/// For `#[serde(default)]`: a config sent by an older daemon has no `start_timeout`.
pub fn default_start_timeout() -> Duration {
    DEFAULT_START_TIMEOUT
}

/// What `up` and `status` show for a service: `url` (its `http://` name, or the proxy's
/// `https://` one) when it serves HTTP, `127.0.0.1:<port>` for another protocol, nothing for one
/// that does not serve or a one-shot that completed.
pub fn shown_address(serves: Serves, completed: bool, url: &str, port: u16) -> Option<String> {
    match serves {
        _ if completed => None,
        Serves::Http => Some(url.to_owned()),
        Serves::Tcp => Some(format!("127.0.0.1:{port}")),
        Serves::Nothing => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError, resolve_procfile, resolve_toml};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        resolve_toml(&std::env::temp_dir(), Path::new("locald.toml"), text, &mut vec![])
    }

    #[test]
    fn http_by_default_tcp_when_declared_nothing_with_port_false() {
        let text = "[services.web]\ncommand = \"x\"\n\n[services.db]\ncommand = \"x\"\nprotocol = \"tcp\"\n\
                    start_timeout = \"5s\"\n\n[services.worker]\ncommand = \"x\"\nport = false\nprotocol = \"tcp\"\n";
        let config = parse(text).unwrap();
        let get = |name: &str| config.services.iter().find(|s| s.name == name).unwrap();
        assert_eq!((get("web").serves, get("web").start_timeout), (Serves::Http, DEFAULT_START_TIMEOUT));
        assert_eq!((get("db").serves, get("db").start_timeout), (Serves::Tcp, Duration::from_secs(5)));
        assert_eq!(get("worker").serves, Serves::Nothing, "port = false wins over protocol");
        assert!(!get("worker").port_written, "an assigned port is not one to refuse `up` over");
    }

    #[test]
    fn port_true_and_an_unknown_protocol_are_errors_at_their_value() {
        let e = parse("[services.web]\ncommand = \"x\"\nport = true\n").unwrap_err().to_string();
        assert!(e.starts_with("locald.toml:3:8: port = true means nothing"), "{e}");
        let e = parse("[services.web]\ncommand = \"x\"\nprotocol = \"udp\"\n").unwrap_err().to_string();
        assert!(e.starts_with("locald.toml:3:12: unknown variant `udp`"), "{e}");
        let e = parse("[services.web]\ncommand = \"x\"\nport = 0\n").unwrap_err().to_string();
        assert!(e.starts_with("locald.toml:3:8: port must be 1-65535"), "{e}");
    }

    #[test]
    fn in_a_procfile_only_web_serves() {
        let config = resolve_procfile(
            &std::env::temp_dir(),
            Path::new("Procfile"),
            "web: a\nworker: b\n",
            &mut vec![],
        )
        .unwrap();
        let serves: Vec<_> = config.services.iter().map(|s| (s.name.as_str(), s.serves)).collect();
        assert_eq!(serves, [("web", Serves::Http), ("worker", Serves::Nothing)]);
    }

    #[test]
    fn what_is_shown() {
        assert_eq!(shown_address(Serves::Http, false, "http://a", 1).as_deref(), Some("http://a"));
        assert_eq!(shown_address(Serves::Tcp, false, "http://a", 5432).as_deref(), Some("127.0.0.1:5432"));
        assert_eq!(shown_address(Serves::Nothing, false, "http://a", 1), None);
        assert_eq!(shown_address(Serves::Http, true, "http://a", 1), None, "a completed one-shot");
    }
}
