//! The proxy suites' scene: the calling test thread moves into a fresh network namespace (so 80
//! and 443 are free whatever the host runs; a netns is per thread, and every process and socket
//! the test then makes is inside it), and a daemon runs as the throwaway user with the setuid
//! shim, serving a project whose services run `proxy-probe serve`.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::Privileged;

pub struct Scene {
    pub p: &'static Privileged,
    pub dir: PathBuf,
    pub project: PathBuf,
}

/// The backend (`proxy-probe`), copied next to `locald.toml`.
pub const BACKEND: &str = "proxy-probe";

impl Scene {
    /// A scene named `name` with `toml` as the project's `locald.toml` (the backend binary sits
    /// next to it). Moves this thread into a fresh network namespace.
    pub fn new(p: &'static Privileged, name: &str, toml: &str) -> Self {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        crate::loopback_up().expect("bring up lo in the fresh network namespace");
        let dir = p.user_dir(name);
        let project = dir.join("project");
        for sub in [&project, &dir.join("home"), &dir.join("run"), &dir.join("state")] {
            std::fs::create_dir_all(sub).unwrap();
            chown(sub, Some(p.user.uid), Some(p.user.gid)).unwrap();
        }
        std::fs::copy(crate::built_bin(BACKEND), project.join(BACKEND)).unwrap();
        std::fs::write(project.join("locald.toml"), toml).unwrap();
        for file in [BACKEND, "locald.toml"] {
            chown(project.join(file), Some(p.user.uid), Some(p.user.gid)).unwrap();
        }
        Self { p, dir, project }
    }

    /// A scene whose project is a copy of `examples/<example>`.
    pub fn example(p: &'static Privileged, name: &str, example: &str) -> Self {
        let scene = Self::new(p, name, "");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(example);
        for entry in std::fs::read_dir(&source).unwrap().flatten() {
            let target = scene.project.join(entry.file_name());
            std::fs::copy(entry.path(), &target).unwrap();
            chown(&target, Some(p.user.uid), Some(p.user.gid)).unwrap();
        }
        scene
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// `locald ARGS` as the user, in the scene's environment.
    pub fn locald(&self) -> Command {
        let mut command = self.p.as_user(&self.p.bin("locald"));
        command
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("LOCALD_SHIM", self.p.shim())
            .current_dir(&self.project);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.locald().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "locald {args:?} failed:\n{}", crate::text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ca(&self) -> PathBuf {
        PathBuf::from(self.ok(&["ca"]).trim())
    }

    /// `curl` (as root, inside the scene's netns) trusting only the local CA and resolving `host`
    /// to 127.0.0.1 on 443 and 80.
    pub fn curl(&self, host: &str) -> Command {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "30", "--cacert"]).arg(self.ca()).args([
            "--resolve",
            &format!("{host}:443:127.0.0.1"),
            "--resolve",
            &format!("{host}:80:127.0.0.1"),
        ]);
        command
    }

    /// The daemon's pid, from the state dir in its environment.
    pub fn daemon_pid(&self) -> i32 {
        crate::daemon::pids_with_env("XDG_STATE_HOME", &self.dir.join("state"))
            .into_iter()
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.len() >= 3 && args[1] == b"server" && args[2] == b"start"
                })
            })
            .expect("the daemon is running")
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = self.locald().args(["server", "stop"]).output();
    }
}

/// A project of one `web` backend (plus `more`, a service of the given TOML).
pub fn project_toml(name: &str, more: &str) -> String {
    format!(
        "[project]\nname = \"{name}\"\n\n[services.web]\ncommand = \"exec ./{BACKEND} serve\"\n\
         env = {{ NAME = \"web\" }}\nhealth_check = {{ tcp = true, interval = \"50ms\", start_period = \"30s\" }}\n\n{more}"
    )
}

/// A TLS client configuration trusting only the CA certificate(s) in `ca_pem` (as
/// `curl --cacert`), offering `alpn`.
pub fn client_config(
    ca_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, Box<dyn std::error::Error>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// Sends a short message and a long one (beyond a frame's 16-bit length) and expects each back
/// within 10 s.
pub async fn websocket_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for message in ["hello".to_owned(), "x".repeat(70_000)] {
        ws.send(Message::text(message.clone())).await.map_err(|e| e.to_string())?;
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| format!("no echo of a {}-byte message within 10 s", message.len()))?
            .ok_or("the WebSocket closed")?
            .map_err(|e| e.to_string())?;
        if echoed.into_text().map_err(|e| e.to_string())?.as_str() != message {
            return Err(format!("the echo of a {}-byte message differs", message.len()));
        }
    }
    Ok(())
}
