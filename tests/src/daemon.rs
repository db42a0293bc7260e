//! The daemon fixture of the black-box suites: a private XDG environment (runtime dir, state
//! dir, home) per test, so tests run in parallel, each with its own daemon started on demand by
//! the CLI like a user's would be. Dropping it stops that daemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Daemon {
    pub root: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Daemon {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("locald-t-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["run", "state", "home", "projects"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        Self { root }
    }

    /// `locald ARGS` in this environment.
    pub fn cmd(&self) -> Command {
        let mut command = Command::new(crate::built_bin("locald"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", self.root.join("home"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            // CI runs as root: a root daemon would bind 80/443 and write /etc/hosts itself,
            // which many test daemons at once must not.
            .env("LOCALD_ROOT_JOBS", "0")
            .current_dir(&self.root);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "locald {args:?} failed:\n{}", crate::text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A project directory holding `locald.toml` with `toml`.
    pub fn project(&self, name: &str, toml: &str) -> PathBuf {
        let dir = self.root.join("projects").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("locald.toml"), toml).unwrap();
        dir
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("run/locald/locald.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state/locald")
    }

    /// `status --json` parsed: a list of projects.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// One service's status object.
    pub fn service(&self, project: &str, service: &str) -> serde_json::Value {
        let status = self.status();
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == project)
            .and_then(|p| p["services"].as_array().unwrap().iter().find(|s| s["name"] == service).cloned())
            .unwrap_or_else(|| panic!("no {project}/{service} in {status}"))
    }

    /// The pid of the running daemon, from its lock-holding process (`server start` in our env).
    pub fn daemon_pid(&self) -> Option<i32> {
        pids_with_env("XDG_STATE_HOME", &self.root.join("state")).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.len() >= 3 && args[1] == b"server" && args[2] == b"start"
            })
        })
    }
}

impl Default for Daemon {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.socket().exists() {
            let _ = self.cmd().args(["server", "stop"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Processes whose environment has `key=value`.
pub fn pids_with_env(key: &str, value: &Path) -> Vec<i32> {
    let mut marker = format!("{key}=").into_bytes();
    marker.extend_from_slice(value.as_os_str().as_encoded_bytes());
    processes(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == marker))
    })
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn pids_with_arg(needle: &str) -> Vec<i32> {
    processes(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
    })
}

fn processes(mut filter: impl FnMut(i32) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if !zombie && filter(pid) {
            out.push(pid);
        }
    }
    out
}

/// An argument unique to this test run, for finding a service's processes: `sleep <token>`
/// sleeps about an hour.
pub fn sleep_token() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("3{:03}.{}{:04}", n % 1000, std::process::id(), n)
}

/// Waits (up to 10 s) until exactly `n` live processes have `needle` as an argument: a shell
/// service reaches its `exec` a moment after the daemon reports it started.
pub fn wait_pids(needle: &str, n: usize) -> Vec<i32> {
    crate::wait_for(std::time::Duration::from_secs(10), || {
        let pids = pids_with_arg(needle);
        (pids.len() == n).then_some(pids)
    })
    .unwrap_or_else(|| panic!("expected {n} process(es) with {needle}, found {:?}", pids_with_arg(needle)))
}
