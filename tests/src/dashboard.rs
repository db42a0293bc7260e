//! The dashboard's fixture: a daemon (no shim, so the proxy is on its fallback ports) with one
//! project, the login URL `locald dashboard --print` gives, and curl aimed at the proxy.

use std::path::PathBuf;
use std::process::Command;

use crate::daemon::Daemon;

pub struct Dash {
    pub daemon: Daemon,
    pub dir: PathBuf,
    pub port: u16,
    pub ca: String,
}

impl Dash {
    /// `toml`'s project (named `project`) up, without a shim.
    pub fn up(project: &str, toml: &str) -> Self {
        let daemon = Daemon::new();
        let dir = daemon.project(project, toml);
        let out =
            daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").arg("up").arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", crate::text(&out));
        let ca = daemon.ok(&["ca"]).trim().to_owned();
        let mut dash = Self { daemon, dir, port: 0, ca };
        let url = dash.login_url();
        dash.port = url
            .strip_prefix("https://locald.localhost:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("login URL without the fallback port: {url}"));
        dash
    }

    /// Another project (named `project`) up beside the first; its directory.
    pub fn up_another(&self, project: &str, toml: &str) -> PathBuf {
        let dir = self.daemon.project(project, toml);
        let out = self
            .daemon
            .cmd()
            .env("LOCALD_SHIM", "/nonexistent/locald-shim")
            .arg("up")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", crate::text(&out));
        dir
    }

    /// A fresh one-time login URL.
    pub fn login_url(&self) -> String {
        self.daemon.ok(&["dashboard", "--print"]).trim().to_owned()
    }

    /// `https://locald.localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://locald.localhost:{}{path}", self.port)
    }

    /// The dashboard's origin, what its page's requests carry.
    pub fn origin(&self) -> String {
        format!("https://locald.localhost:{}", self.port)
    }

    /// curl trusting the local CA, with these names resolving to the proxy.
    pub fn curl(&self, hosts: &[&str]) -> Command {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "20", "--cacert", &self.ca]);
        for host in ["locald.localhost"].iter().chain(hosts) {
            command.arg("--resolve").arg(format!("{host}:{}:127.0.0.1", self.port));
        }
        command
    }

    /// A service's status field from `status --json`.
    pub fn pid(&self, project: &str, service: &str) -> Option<u64> {
        self.daemon.service(project, service)["pid"].as_u64()
    }
}
