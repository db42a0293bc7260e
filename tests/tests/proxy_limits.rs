//! The proxy under connection floods at a low descriptor limit: the daemon runs with
//! `RLIMIT_NOFILE` 256 (soft and hard), in a fresh network namespace on 443 (as root, like the
//! other proxy suites), and a client opens far more idle HTTP/2 connections than it has
//! descriptors for.

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

use locald_tests::proxy::{Scene, client_config, project_toml};
use locald_tests::{privileged, text};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;

const NOFILE: libc::rlim_t = 256;
const FLOOD: usize = 600;

#[test]
fn an_idle_http2_flood_past_the_fd_limit_leaves_requests_and_the_control_socket_working() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-flood", &project_toml("shop", ""));
    let mut up = scene.locald();
    up.arg("up");
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        up.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: NOFILE, rlim_max: NOFILE };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = up.output().unwrap();
    assert!(out.status.success(), "locald up: {}", text(&out));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", scene.daemon_pid())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(open_files.split_whitespace().filter(|w| *w == "256").count() == 2, "{open_files}");

    let ca_pem = std::fs::read(scene.ca()).unwrap();
    let config = client_config(&ca_pem, &[b"h2"]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let flood = runtime.block_on(async {
        let mut flood = Vec::new();
        // Bounded, so a proxy that stops accepting fails the checks below instead of hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for _ in 0..FLOOD {
            if std::time::Instant::now() > deadline {
                break;
            }
            let Ok(tcp) = tokio::net::TcpStream::connect("127.0.0.1:443").await else { continue };
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
            let name = ServerName::try_from("shop.localhost").unwrap();
            let handshake = tokio::time::timeout(Duration::from_secs(2), connector.connect(name, tcp)).await;
            if let Ok(Ok(mut stream)) = handshake {
                // The preface and an empty SETTINGS, then nothing.
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await;
                flood.push(stream);
            }
        }
        flood
    });
    // Old code ran out of descriptors below this: the flood alone is the attack.
    assert!(flood.len() > NOFILE as usize / 2, "only {} of the flood got through a handshake", flood.len());

    // With the flood still connected: a request, and the control socket.
    let out = scene
        .curl("shop.localhost")
        .args(["--max-time", "10"])
        .arg("https://shop.localhost/")
        .output()
        .unwrap();
    assert!(out.status.success(), "curl during the flood: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from web"), "{}", text(&out));
    let mut status = scene.locald();
    status.arg("status");
    let status = status.output().unwrap();
    assert!(status.status.success(), "locald status during the flood: {}", text(&status));

    // Nothing ran out of descriptors, so nothing filled the log.
    let log = std::fs::read_to_string(scene.dir.join("state/locald/daemon.log")).unwrap();
    let accept_errors = log.lines().filter(|l| l.contains("proxy accept")).count();
    assert!(accept_errors <= 2, "{accept_errors} accept errors logged:\n{log}");
    drop(flood);
}
