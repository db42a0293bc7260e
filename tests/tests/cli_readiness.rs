//! Ready means reachable: `up` returns once every service it prints a URL for accepts
//! connections, gives up on one that never does after its start timeout, routes a server that
//! ignores `$PORT` to the port it really listens on, and shows a non-HTTP server as host:port.
//! The daemon runs without a shim (the proxy on its fallback ports), so no root is needed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use locald_tests::daemon::{Daemon, sleep_token};
use locald_tests::text;

/// An HTTP server answering `hello from <name>` on `port` (or $PORT), after `delay` seconds.
fn server(dir: &Path, name: &str, delay: f32, port: Option<u16>) {
    let port = port.map_or("int(os.environ['PORT'])".to_owned(), |p| p.to_string());
    let script = format!(
        "import http.server, os, sys, time\n\
         print('booting', flush=True)\n\
         time.sleep({delay})\n\
         class H(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
                 body = b'hello from {name}'\n        \
                 self.send_response(200)\n        \
                 self.send_header('Content-Length', str(len(body)))\n        \
                 self.end_headers()\n        \
                 self.wfile.write(body)\n    \
             def log_message(self, *a):\n        \
                 pass\n\
         http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    );
    std::fs::write(dir.join(format!("{name}.py")), script).unwrap();
}

/// `up` without a shim: the proxy on fallback ports.
fn up(daemon: &Daemon, dir: &Path) -> std::process::Output {
    daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").arg("up").arg(dir).output().unwrap()
}

/// The proxy's HTTP port, from `up`'s "proxy on ports X (https) and Y (http)" line.
fn http_port(up: &str) -> u16 {
    let line = up.lines().find(|l| l.starts_with("proxy on ports")).unwrap_or_else(|| panic!("{up}"));
    let before = line.split(" (http)").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// One plain HTTP request through the proxy for `host`; the whole answer.
fn get(port: u16, host: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn up_returns_once_a_late_server_answers_and_shows_a_tcp_server_as_host_and_port() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "late",
        "[project]\nname = \"late\"\n\n[services.web]\ncommand = [\"python3\", \"web.py\"]\n\n\
         [services.db]\ncommand = [\"python3\", \"db.py\"]\nprotocol = \"tcp\"\n",
    );
    server(&dir, "web", 1.0, None);
    server(&dir, "db", 0.0, None);
    let began = Instant::now();
    let out = up(&daemon, &dir);
    let took = began.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(took >= Duration::from_secs(1), "up returned before the server bound ({took:?}):\n{up}");
    let web = daemon.service("late", "web");
    assert_eq!(web["state"], "running");
    let port = web["port"].as_u64().unwrap() as u16;
    TcpStream::connect(("127.0.0.1", port)).expect("web accepts connections as soon as up returns");
    let answer = get(http_port(&up), "late.localhost");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from web"), "{answer}");

    let db = daemon.service("late", "db");
    let address = format!("127.0.0.1:{}", db["port"]);
    assert_eq!(db["url"], address.as_str(), "{db}");
    assert!(up.contains(&format!("  db               {address}\n")), "{up}");
    assert!(!up.contains("db.late.localhost"), "a TCP server gets no https URL:\n{up}");
    let page = get(http_port(&up), "db.late.localhost");
    assert!(page.starts_with("HTTP/1.1 404"), "the proxy does not route a TCP server: {page}");
}

#[test]
fn a_server_that_never_binds_fails_up_after_its_start_timeout_naming_it() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project(
        "mute",
        &format!(
            "[services.web]\ncommand = \"echo never-binds-marker; exec sleep {token}\"\nstart_timeout = \"1s\"\n"
        ),
    );
    let began = Instant::now();
    let out = up(&daemon, &dir);
    let took = began.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let port = daemon.service("mute", "web")["port"].clone();
    assert!(
        stderr.contains(&format!(
            "service web failed: did not accept connections on port {port} ($PORT) within 1s"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("`port = false`"), "says what to change: {stderr}");
    assert!(stderr.contains("never-binds-marker"), "its last lines are shown: {stderr}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
}

#[test]
fn a_server_that_ignores_port_is_routed_to_the_port_it_listens_on() {
    let daemon = Daemon::new();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = daemon.project("stubborn", "[services.web]\ncommand = [\"python3\", \"web.py\"]\n");
    server(&dir, "web", 0.3, Some(elsewhere));
    let out = up(&daemon, &dir);
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout).into_owned();
    let web = daemon.service("stubborn", "web");
    assert_eq!(web["port"], elsewhere, "status shows where it listens: {web}");
    assert!(up.contains(&format!("note: web listens on port {elsewhere}, not on its $PORT")), "{up}");
    assert_eq!(up.matches(&format!("port {elsewhere}")).count(), 1, "one line:\n{up}");
    assert!(up.contains(&format!("(direct: http://127.0.0.1:{elsewhere})")), "{up}");
    let answer = get(http_port(&up), "stubborn.localhost");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from web"), "{answer}");
}
