//! Without a usable shim the proxy still serves, on unprivileged ports, and every command that
//! shows URLs says which port and why. Needs no root.

use std::process::Command;

use locald_tests::daemon::Daemon;
use locald_tests::text;

#[test]
fn without_a_shim_the_proxy_serves_on_fallback_ports_and_says_so() {
    let daemon = Daemon::new();
    let backend = env!("CARGO_BIN_EXE_proxy-probe");
    let dir = daemon.project(
        "fallback",
        &format!(
            "[project]\nname = \"fallback\"\n\n[services.web]\ncommand = [\"{backend}\", \"serve\"]\n\
             health_check = {{ tcp = true, interval = \"50ms\", start_period = \"30s\" }}\n"
        ),
    );
    // A shim path that does not exist: discovery refuses it, the proxy falls back.
    let out =
        daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").args(["up"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout);
    assert!(up.contains("not 443/80"), "{up}");

    let url = daemon.service("fallback", "web")["url"].as_str().unwrap().to_owned();
    let port: u16 = url
        .strip_prefix("https://fallback.localhost:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("URL without the fallback port: {url}"));
    assert!(port >= 1024, "{url}");
    let status = daemon.ok(&["status"]);
    assert!(status.contains(&format!("proxy on ports {port} (https)")), "{status}");
    let doctor = daemon.run(&["doctor"]);
    assert!(text(&doctor).contains(&format!("serving https on {port}")), "{}", text(&doctor));

    let ca = daemon.ok(&["ca"]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", ca.trim(), "--resolve"])
        .arg(format!("fallback.localhost:{port}:127.0.0.1"))
        .arg(format!("{url}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from backend\n");
}

/// One plain-HTTP request on `stream`, read to the end of its `content-length` body.
fn exchange(stream: &mut std::net::TcpStream, host: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A client connection keeps its connection to the service between requests; when the service
/// restarts, that connection is gone and the client's next request on the same connection goes
/// to the new process instead of failing.
#[test]
fn a_kept_alive_client_reaches_the_service_again_after_it_restarts() {
    let daemon = Daemon::new();
    let backend = env!("CARGO_BIN_EXE_proxy-probe");
    let dir = daemon.project(
        "keep",
        &format!(
            "[project]\nname = \"keep\"\n\n[services.web]\ncommand = [\"{backend}\", \"serve\"]\n\
             health_check = {{ tcp = true, interval = \"50ms\", start_period = \"30s\" }}\n"
        ),
    );
    let out =
        daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").args(["up"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status = daemon.ok(&["status"]);
    let http_port: u16 = status
        .split_once(" (https) and ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no http port in:\n{status}"));
    let first_pid = daemon.service("keep", "web")["pid"].clone();

    let mut client = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    client.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    assert_eq!(exchange(&mut client, "keep.localhost"), (200, "hello from backend\n".to_owned()));

    daemon.ok(&["restart", "-C", dir.to_str().unwrap(), "web"]);
    let healthy = locald_tests::wait_for(std::time::Duration::from_secs(30), || {
        let web = daemon.service("keep", "web");
        (web["state"] == "healthy" && web["pid"] != first_pid).then_some(())
    });
    assert!(healthy.is_some(), "web did not come back: {}", daemon.service("keep", "web"));

    let (status, body) = exchange(&mut client, "keep.localhost");
    assert_eq!(
        (status, body.as_str()),
        (200, "hello from backend\n"),
        "the same client connection after the restart"
    );
}
