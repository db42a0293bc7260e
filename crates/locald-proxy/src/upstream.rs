//! The connections one client connection has to the services it reaches. Each client
//! connection keeps its own: a browser's HTTP/1.1 connection sends one request at a time, so its
//! requests all go over one connection to the service for as long as it stays open, with no pool
//! shared between clients, no lock held across threads and no task per request to hand a
//! connection back (what a shared pool costs: a third of the proxy's own CPU per request). An
//! HTTP/2 client sends requests side by side: each takes an idle connection to its service or
//! opens one, and a connection still carrying a response (an SSE stream, say) is never handed
//! out. The connections close with the client's.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};

use super::Body;

/// Longest a service may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections a client connection keeps to its services between requests.
const MAX_KEPT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("{0}")]
    Connect(#[from] io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The client's request body failed (say, malformed chunked coding): the client's fault,
    /// not the service's.
    #[error("the request body: {0}")]
    RequestBody(hyper::Error),
}

struct Connection {
    port: u16,
    sender: http1::SendRequest<Body>,
    /// Bytes read from the service so far.
    received: Arc<AtomicU64>,
}

/// One client connection's connections to services on 127.0.0.1.
#[derive(Default)]
pub(crate) struct Upstreams {
    kept: Mutex<Vec<Connection>>,
}

impl Upstreams {
    /// Sends `req` (origin-form URI) to the service on `port`. A request that a kept connection
    /// could not even start to send (the service had closed it in between) goes again over a new
    /// one, and so does a request with a safe method and no body that the service closed a kept
    /// connection on before a byte of an answer (RFC 9110 §9.2.1; browsers and nginx retry
    /// these too; not PUT or DELETE, which the service may have carried out before it closed):
    /// after a service restarts, its first request must not fail. Anything else is the service's
    /// answer or its error.
    pub(crate) async fn send(
        &self,
        port: u16,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if req.body().is_end_stream() {
            return self.send_once(port, req).await;
        }
        // Notes whether an error came from reading the client's body.
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let req = req.map(|body| {
            body.map_err(move |e| {
                flag.store(true, Ordering::Relaxed);
                e
            })
            .boxed()
        });
        match self.send_once(port, req).await {
            Err(UpstreamError::Http(e)) if failed.load(Ordering::Relaxed) => {
                Err(UpstreamError::RequestBody(e))
            }
            other => other,
        }
    }

    async fn send_once(&self, port: u16, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = req;
        if let Some(mut kept) = self.take(port) {
            let replay = replayable(&req);
            let before = kept.received.load(Ordering::Relaxed);
            match kept.sender.try_send_request(req).await {
                Ok(mut response) => {
                    self.keep(kept);
                    one_length(response.headers_mut());
                    return Ok(response);
                }
                Err(mut e) => {
                    // hyper calls a close after part of a head "incomplete" too: only a close
                    // before any byte of an answer means the service did not act on it.
                    let silent = kept.received.load(Ordering::Relaxed) == before;
                    req = match (e.take_message(), replay) {
                        (Some(unsent), _) => unsent,
                        (None, Some(again)) if e.error().is_incomplete_message() && silent => again,
                        _ => return Err(e.into_error().into()),
                    }
                }
            }
        }
        let mut fresh = connect(port).await?;
        let mut response = fresh.sender.send_request(req).await?;
        self.keep(fresh);
        one_length(response.headers_mut());
        Ok(response)
    }

    /// A kept connection to `port` that is free for a request now; closed ones are let go.
    fn take(&self, port: u16) -> Option<Connection> {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.retain(|c| !c.sender.is_closed());
        let free = kept.iter().position(|c| c.port == port && c.sender.is_ready())?;
        Some(kept.swap_remove(free))
    }

    /// Keeps a connection for later requests, unless it was upgraded or enough are kept (then
    /// it closes once its response is done).
    fn keep(&self, connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() < MAX_KEPT {
            kept.push(connection);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().unwrap().len()
    }
}

/// The framing fields of a response as hyper's client framed its body, for the client's side:
/// no `Content-Length` beside a `Transfer-Encoding` (RFC 9112 §6.3: the coding wins, and an
/// intermediary removes the length), and one length for `5, 5` or two equal lines (hyper's
/// client reads those as 5; its server would not send them). The fast path does the same.
fn one_length(headers: &mut hyper::HeaderMap) {
    use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (Some(first), None) = (values.next(), values.next()) else {
        // Several lines: hyper's client only took them when they all name one number.
        if let Some(first) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok())
            && let Some(n) = first.split(',').next().map(str::trim)
            && let Ok(value) = hyper::header::HeaderValue::from_str(n)
        {
            headers.insert(CONTENT_LENGTH, value);
        }
        return;
    };
    if first.as_bytes().contains(&b',')
        && let Some(n) = first.to_str().ok().and_then(|v| v.split(',').next()).map(str::trim)
        && let Ok(value) = hyper::header::HeaderValue::from_str(n)
    {
        headers.insert(CONTENT_LENGTH, value);
    }
}

/// A copy of a request with a safe method and no body, to send again.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    if !req.method().is_safe() || !req.body().is_end_stream() {
        return None;
    }
    let mut again = Request::new(Empty::new().map_err(|never| match never {}).boxed());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// A new connection to the service on `port` (both of the proxy's paths connect through here).
pub(crate) async fn connect_service(port: u16) -> io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the service did not accept within 5 s"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(port: u16) -> Result<Connection, UpstreamError> {
    let stream = connect_service(port).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = Counted { inner: stream, received: received.clone() };
    let (sender, connection) = http1::handshake(TokioIo::new(counted)).await?;
    // Ends when the response is done and every sender is gone, or when the connection is
    // upgraded (WebSockets), which hands the socket over to the upgrade.
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(Connection { port, sender, received })
}

/// A service connection that counts the bytes read from it.
struct Counted {
    inner: tokio::net::TcpStream,
    received: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.received.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

write_through!([] Counted, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A service that answers every request on a connection with `hello` plus the connection's
    /// number, counting connections; `/stream` gets a first chunk of a body that never ends.
    /// `close_after`: it closes a connection after that many answers, without saying so in the
    /// answer (as a service restarting would).
    async fn service(close_after: Option<usize>) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(answer(stream, n, close_after));
            }
        });
        (port, accepted)
    }

    async fn answer(mut stream: TcpStream, n: usize, close_after: Option<usize>) {
        let mut answered = 0;
        let mut buf = Vec::new();
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => buf.extend_from_slice(&chunk[..read]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head: Vec<u8> = buf.drain(..end).collect();
            if head.starts_with(b"GET /stream ") {
                let chunk =
                    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\nhello {n}\r\n");
                let _ = stream.write_all(chunk.as_bytes()).await;
                let _ = stream.read(&mut [0u8; 1]).await;
                return;
            }
            let body = format!("hello {n}");
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            answered += 1;
            if close_after == Some(answered) {
                return;
            }
        }
    }

    fn get() -> Request<Body> {
        request("/")
    }

    fn request(path: &str) -> Request<Body> {
        Request::get(path)
            .header("host", "web.app.localhost")
            .body(Empty::new().map_err(|n| match n {}).boxed())
            .unwrap()
    }

    async fn text(response: Response<Incoming>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_client_connections_requests_share_one_connection_to_the_service() {
        let (port, accepted) = service(None).await;
        let upstreams = Upstreams::default();
        for _ in 0..5 {
            let response = upstreams.send(port, get()).await.unwrap();
            assert_eq!(text(response).await, "hello 1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all five requests");
    }

    #[tokio::test]
    async fn a_connection_the_service_closed_is_replaced_without_an_error() {
        let (port, accepted) = service(Some(1)).await;
        let upstreams = Upstreams::default();
        for expected in 1..=3 {
            let response = upstreams.send(port, get()).await.expect("a closed connection is not an error");
            assert_eq!(text(response).await, format!("hello {expected}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A service in a thread of its own that answers `hello <connection>` and closes its first
    /// connection when told, and says when it has. Tests hold their runtime while it closes, so
    /// the proxy's side has not yet seen the close when the next request is handed to that
    /// connection. Also counts the requests it read.
    fn closing_service() -> (u16, std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>, Arc<AtomicUsize>)
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (close, told) = std::sync::mpsc::channel::<()>();
        let (closed, done) = std::sync::mpsc::channel::<()>();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for n in 1..=2 {
                let Ok((mut stream, _)) = listener.accept() else { return };
                let mut buf = [0u8; 1024];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buf[..read]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nhello {n}").unwrap();
                if n == 1 {
                    let _ = told.recv();
                    drop(stream);
                    let _ = closed.send(());
                }
            }
        });
        (port, close, done, requests)
    }

    #[tokio::test]
    async fn an_idempotent_request_a_closing_connection_failed_goes_again_over_a_new_one() {
        let (port, close, closed, _) = closing_service();
        let upstreams = Upstreams::default();
        assert_eq!(text(upstreams.send(port, get()).await.unwrap()).await, "hello 1");
        close.send(()).unwrap();
        closed.recv().unwrap();
        let second = upstreams.send(port, get()).await.expect("the GET went again");
        assert_eq!(text(second).await, "hello 2");
    }

    #[tokio::test]
    async fn a_post_a_closing_connection_failed_is_not_sent_twice() {
        let (port, close, closed, requests) = closing_service();
        let upstreams = Upstreams::default();
        assert_eq!(text(upstreams.send(port, get()).await.unwrap()).await, "hello 1");
        close.send(()).unwrap();
        closed.recv().unwrap();
        let post = Request::post("/orders")
            .header("host", "web.app.localhost")
            .body(Full::new(Bytes::from_static(b"x")).map_err(|n| match n {}).boxed())
            .unwrap();
        // The service may have acted on it: only the client can decide to send it again.
        match upstreams.send(port, post).await {
            Err(UpstreamError::Http(e)) => assert!(e.is_incomplete_message(), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("the POST was sent again"),
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_delete_a_closing_connection_failed_is_not_sent_twice() {
        let (port, close, closed, requests) = closing_service();
        let upstreams = Upstreams::default();
        assert_eq!(text(upstreams.send(port, get()).await.unwrap()).await, "hello 1");
        close.send(()).unwrap();
        closed.recv().unwrap();
        let delete = Request::delete("/orders/1")
            .header("host", "web.app.localhost")
            .body(Empty::new().map_err(|n| match n {}).boxed())
            .unwrap();
        // Idempotent, but not safe: the service may have deleted before it closed.
        assert!(upstreams.send(port, delete).await.is_err(), "the DELETE was sent again");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_get_answered_in_part_is_not_sent_again() {
        // The first connection answers one request, then begins an answer to the next and
        // closes; any further connection answers in full.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            for n in 1.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    for answered in 0.. {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => head.extend_from_slice(&chunk[..read]),
                            }
                        }
                        seen.fetch_add(1, Ordering::SeqCst);
                        if n == 1 && answered == 1 {
                            let _ = stream.write_all(b"HTTP/1.1 200").await;
                            return;
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    }
                });
            }
        });
        let upstreams = Upstreams::default();
        assert_eq!(text(upstreams.send(port, get()).await.unwrap()).await, "ok");
        let second = upstreams.send(port, get()).await;
        assert!(second.is_err(), "a request the service had begun to answer went again");
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_busy_with_a_response_is_not_handed_out() {
        let (port, accepted) = service(None).await;
        let upstreams = Upstreams::default();
        // The first response's body has not ended: its connection is still busy with it.
        let first = upstreams.send(port, request("/stream")).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), upstreams.send(port, get()))
            .await
            .expect("the second request waited for the first connection")
            .unwrap();
        assert_eq!(text(second).await, "hello 2");
        let mut first = first.into_body();
        let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&chunk[..], b"hello 1", "the stream goes on over its own connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn each_service_gets_its_own_connection() {
        let (one, accepted_one) = service(None).await;
        let (two, accepted_two) = service(None).await;
        let upstreams = Upstreams::default();
        for _ in 0..2 {
            assert_eq!(text(upstreams.send(one, get()).await.unwrap()).await, "hello 1");
            assert_eq!(text(upstreams.send(two, get()).await.unwrap()).await, "hello 1");
        }
        assert_eq!((accepted_one.load(Ordering::SeqCst), accepted_two.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(upstreams.kept(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let error = Upstreams::default().send(port, get()).await.unwrap_err();
        assert!(
            matches!(&error, UpstreamError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{error}"
        );
    }
}
