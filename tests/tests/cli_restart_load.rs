//! A restart is not an outage: requests sent in a loop through the proxy while the service is
//! restarted get the service's answers. The proxy holds a request for a starting or restarting
//! service (and the service is "starting" from the restart request on, not only once its old
//! process is gone), and the readiness probe sees the new process within moments of its binding.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use locald_tests::daemon::Daemon;
use locald_tests::{text, wait_for};

const RESTARTS: usize = 3;

/// A server that, like one draining its connections, stops accepting at SIGTERM and takes
/// half a second more to exit: a restart has a moment with no listener before the old process
/// is gone, as well as after.
const DRAINING: &str = "import http.server, os, signal, time\n\
class H(http.server.BaseHTTPRequestHandler):\n    \
    def do_GET(self):\n        \
        self.send_response(200)\n        \
        self.send_header('Content-Length', '6')\n        \
        self.end_headers()\n        \
        self.wfile.write(b'steady')\n    \
    def log_message(self, *a):\n        \
        pass\n\
s = http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)\n\
def term(*_):\n    \
    s.socket.close()\n    \
    time.sleep(0.5)\n    \
    os._exit(0)\n\
signal.signal(signal.SIGTERM, term)\n\
s.serve_forever()\n";

/// The status code of one `GET /` for `host` on a new connection, or 0 when none came.
fn status(port: u16, host: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer[..answer.len().min(16)]).into_owned();
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[test]
fn requests_during_restarts_get_the_services_answers() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "steady",
        "[project]\nname = \"steady\"\n\n[services.web]\n\
         command = [\"python3\", \"web.py\"]\nstop_timeout = \"2s\"\n",
    );
    std::fs::write(dir.join("web.py"), DRAINING).unwrap();
    let out =
        daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").arg("up").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout);
    let line = up.lines().find(|l| l.starts_with("proxy on ports")).unwrap_or_else(|| panic!("{up}"));
    let http: u16 = line.split(" (http)").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let (looping, counting) = (stop.clone(), answered.clone());
    let client = std::thread::spawn(move || {
        let mut codes = Vec::new();
        while !looping.load(Ordering::Relaxed) {
            let code = status(http, "steady.localhost");
            counting.fetch_add(1, Ordering::Relaxed);
            codes.push(code);
        }
        codes
    });
    // Some answers of the steady service between restarts, as a browser reloading would get.
    let steady_for = |n: usize| {
        let from = answered.load(Ordering::Relaxed);
        wait_for(Duration::from_secs(10), || (answered.load(Ordering::Relaxed) >= from + n).then_some(()))
            .expect("the client loop stalled");
    };
    steady_for(10);
    let d = dir.to_str().unwrap();
    for _ in 0..RESTARTS {
        let pid = daemon.service("steady", "web")["pid"].clone();
        daemon.ok(&["restart", "-C", d, "web"]);
        let back = wait_for(Duration::from_secs(10), || {
            let web = daemon.service("steady", "web");
            (web["state"] == "running" && web["pid"] != pid).then_some(())
        });
        assert!(back.is_some(), "web did not come back: {}", daemon.service("steady", "web"));
        steady_for(10);
    }
    stop.store(true, Ordering::Relaxed);
    let codes = client.join().unwrap();
    let errors: Vec<u16> = codes.iter().copied().filter(|c| *c != 200).collect();
    assert!(
        errors.len() <= RESTARTS,
        "{} of {} requests were not the service's answer (first: {:?})",
        errors.len(),
        codes.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(daemon.service("steady", "web")["restarts"], RESTARTS as u64);
}
