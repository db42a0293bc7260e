//! Health and liveness probes. A probe answers once; [`Tracker`] turns answers into a state
//! with retries and a start period.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use locald_core::config::{Check, Probe, Service};

/// Runs the probe once, bounded by the check's timeout.
pub async fn probe(check: &Check, service: &Service) -> bool {
    tokio::time::timeout(check.timeout, probe_inner(&check.probe, service)).await.unwrap_or(false)
}

async fn probe_inner(probe: &Probe, service: &Service) -> bool {
    match probe {
        Probe::Tcp { port } => TcpStream::connect(("127.0.0.1", *port)).await.is_ok(),
        Probe::Http { port, path, status } => {
            http_status(*port, path).await.is_some_and(|got| match status {
                Some(want) => got == *want,
                None => (200..300).contains(&got),
            })
        }
        Probe::Command { command } => {
            let argv = command.argv();
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .current_dir(&service.cwd)
                .envs(service.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            matches!(cmd.status().await, Ok(status) if status.success())
        }
    }
}

/// The status code of `GET path` on 127.0.0.1:port. A status line is all a check needs, so
/// this is a minimal HTTP/1.0 exchange rather than a client library.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: locald-health\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet decided (within the start period, or fewer failures than retries).
    Pending,
    Healthy,
    Failed,
}

/// Consecutive-failure counting: `retries` failures in a row (outside the start period) fail.
pub struct Tracker {
    started: Instant,
    start_period: Duration,
    retries: u32,
    failures: u32,
}

impl Tracker {
    pub fn new(check: &Check) -> Self {
        Self {
            started: Instant::now(),
            start_period: check.start_period,
            retries: check.retries,
            failures: 0,
        }
    }

    pub fn record(&mut self, ok: bool) -> Verdict {
        if ok {
            self.failures = 0;
            return Verdict::Healthy;
        }
        if self.started.elapsed() < self.start_period {
            return Verdict::Pending;
        }
        self.failures += 1;
        if self.failures >= self.retries { Verdict::Failed } else { Verdict::Pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period: Duration) -> Check {
        Check {
            probe: Probe::Tcp { port: 1 },
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            retries,
            start_period,
        }
    }

    #[test]
    fn fails_after_retries_consecutive_failures() {
        let mut t = Tracker::new(&check(3, Duration::ZERO));
        assert_eq!(t.record(false), Verdict::Pending);
        assert_eq!(t.record(false), Verdict::Pending);
        assert_eq!(t.record(true), Verdict::Healthy);
        assert_eq!(t.record(false), Verdict::Pending);
        assert_eq!(t.record(false), Verdict::Pending);
        assert_eq!(t.record(false), Verdict::Failed);
    }

    #[test]
    fn start_period_failures_do_not_count() {
        let mut t = Tracker::new(&check(1, Duration::from_secs(60)));
        assert_eq!(t.record(false), Verdict::Pending);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_probe_reads_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await.unwrap();
        });
        assert_eq!(http_status(port, "/health").await, Some(503));
    }
}
