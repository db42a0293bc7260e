//! A service on a raw socket that writes exactly the bytes a test scripts, and records every
//! request it read: what a misbehaving (or hostile) service can do to the proxy.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// What the service does for one request.
#[derive(Clone, Debug, Default)]
pub(super) struct Script {
    /// Written at once.
    pub now: Vec<u8>,
    /// Written on the same connection once the test calls [`Raw::inject`]: bytes that answer
    /// nothing, as a service that sends a body after a HEAD, 204 or 304 response would.
    pub later: Option<Vec<u8>>,
    /// Closes the connection after writing.
    pub close: bool,
}

/// One request as the service read it: the connection it came on (1, 2, …) and its head.
pub(super) type Request = (usize, String);

pub(super) struct Raw {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    inject: Arc<Notify>,
    injected: mpsc::UnboundedReceiver<()>,
}

impl Raw {
    /// Listens on 127.0.0.1 and answers each request head (and its `Content-Length` body) with
    /// `script(head)`.
    pub(super) async fn start(script: impl Fn(&str) -> Script + Send + Sync + 'static) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let inject = Arc::new(Notify::new());
        let (done, injected) = mpsc::unbounded_channel();
        let (log, wake, script) = (requests.clone(), inject.clone(), Arc::new(script));
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                // Each write goes out at once (no Nagle delay), so bytes "later" are there
                // when `inject` returns.
                let _ = stream.set_nodelay(true);
                n += 1;
                let (log, wake, done, script) = (log.clone(), wake.clone(), done.clone(), script.clone());
                tokio::spawn(connection(stream, n, log, wake, done, script));
            }
        });
        Raw { port, requests, inject, injected }
    }

    /// Has the service write its `later` bytes, and returns once they are written.
    pub(super) async fn inject(&mut self) {
        self.inject.notify_one();
        // Bounded, so a test that injects where no answer waits fails instead of hanging.
        let written = tokio::time::timeout(std::time::Duration::from_secs(5), self.injected.recv()).await;
        assert!(matches!(written, Ok(Some(()))), "no answer was waiting to write its later bytes");
        // Lets the proxy's tasks see the bytes arrive (tokio wakes yielded tasks after the
        // I/O driver has run).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    pub(super) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn connection(
    mut stream: TcpStream,
    n: usize,
    log: Arc<Mutex<Vec<Request>>>,
    wake: Arc<Notify>,
    done: mpsc::UnboundedSender<()>,
    script: Arc<dyn Fn(&str) -> Script + Send + Sync>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buf.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buf.extend_from_slice(&chunk[..read]),
            }
        }
        buf.drain(..length);
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            // hyper's client sends a body it has no length for chunked: read it to its end.
            loop {
                let line = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buf.extend_from_slice(&chunk[..read]),
                    }
                };
                let text = String::from_utf8_lossy(&buf[..line]).into_owned();
                let Ok(size) = usize::from_str_radix(text.split(';').next().unwrap_or_default().trim(), 16)
                else {
                    return;
                };
                // The data and its CRLF; for the last chunk, the empty line (no trailers sent).
                let end = line + 2 + size + 2;
                while buf.len() < end {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => buf.extend_from_slice(&chunk[..read]),
                    }
                }
                buf.drain(..end);
                if size == 0 {
                    break;
                }
            }
        }
        log.lock().unwrap().push((n, head.clone()));
        let answer = script(&head);
        if stream.write_all(&answer.now).await.is_err() {
            return;
        }
        if let Some(later) = answer.later {
            wake.notified().await;
            let _ = stream.write_all(&later).await;
            let _ = done.send(());
        }
        if answer.close {
            return;
        }
    }
}

/// The request target of a head (`/path`).
pub(super) fn target(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or_default()
}
