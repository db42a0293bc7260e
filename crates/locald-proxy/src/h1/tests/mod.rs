//! The fast path against test services on 127.0.0.1.

mod differential;
mod raw;
mod reuse;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Outcome, Target, serve};
use crate::Body;
use crate::forward::Peer;

struct Port(u16);

impl Target for Port {
    fn port(&self) -> u16 {
        self.0
    }

    fn unreachable(&self, cause: &str) -> Response<Body> {
        crate::pages::unreachable("app", "web", self.0, cause)
    }
}

/// What a test service saw: every request head, and how many connections it accepted.
#[derive(Clone, Default)]
struct Seen {
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Seen {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A service on a thread per connection: reads each request head and lets `answer` write
/// the response; `answer` returns whether to keep the connection open.
fn service(answer: impl Fn(&str, &mut std::net::TcpStream) -> bool + Send + Sync + 'static) -> (u16, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let answer = Arc::new(answer);
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            record.connections.fetch_add(1, Ordering::SeqCst);
            let (answer, record) = (answer.clone(), record.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    record.heads.lock().unwrap().push(head.clone());
                    if !answer(&head, &mut stream) {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn hello(_: &str, stream: &mut std::net::TcpStream) -> bool {
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-service: 1\r\n\r\nhello").is_ok()
}

pub(super) const PEER: Peer = Peer {
    addr: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000),
    tls: false,
};

/// The fast path serving one client connection to the service on `port` for `app.localhost`.
pub(super) fn proxy(port: u16) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let route = move |host: &str| (host == "app.localhost").then_some(Port(port));
    (
        client,
        tokio::spawn(serve(
            server,
            PEER,
            Duration::from_secs(30),
            std::sync::Arc::new(crate::activity::Activity::new()),
            route,
        )),
    )
}

/// Reads one response with a `content-length` (or none: until the end) from the client side.
pub(super) async fn response(client: &mut DuplexStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection ended before a response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(bytes[..head_end].to_vec()).unwrap();
    let mut body = bytes[head_end..].to_vec();
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
    });
    match length {
        Some(n) => {
            while body.len() < n {
                let mut chunk = [0u8; 4096];
                let read = client.read(&mut chunk).await.unwrap();
                assert!(read > 0, "body ended early");
                body.extend_from_slice(&chunk[..read]);
            }
            assert_eq!(body.len(), n, "more bytes than the response's length");
        }
        None if head.contains("connection: close") => {
            client.read_to_end(&mut body).await.unwrap();
        }
        None => {}
    }
    (head, body)
}

fn field<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test]
async fn requests_share_one_service_connection_and_get_the_forwarded_fields() {
    let (port, seen) = service(hello);
    let (mut client, _) = proxy(port);
    for path in ["/a?b=1", "/c"] {
        client
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: app.localhost\r\nConnection: keep-alive\r\n\
                     Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-Proto: https\r\n\
                     X-Forwarded-For: 192.0.2.7\r\nX_Forwarded_Proto: https\r\nForwarded: for=6.6.6.6;host=\"x\r\n\
                     Accept: */*\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (head, body) = response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(field(&head, "x-service"), ["1"]);
        assert_eq!(body, b"hello");
    }
    assert_eq!(seen.connections(), 1, "both requests over one connection to the service");
    let heads = seen.heads();
    assert!(heads[0].starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(heads[1].starts_with("GET /c HTTP/1.1\r\n"), "{}", heads[1]);
    let head = &heads[0];
    assert_eq!(field(head, "host"), ["app.localhost"]);
    assert_eq!(field(head, "accept"), ["*/*"]);
    assert_eq!(
        field(head, "x-forwarded-for"),
        ["127.0.0.1"],
        "locald is the first hop: the client's value is dropped"
    );
    assert_eq!(field(head, "x-forwarded-proto"), ["http"], "the client's own value is replaced");
    assert_eq!(field(head, "x-forwarded-host"), ["app.localhost"]);
    assert_eq!(field(head, "forwarded"), ["for=127.0.0.1;proto=http;host=\"app.localhost\""]);
    assert!(
        !head.contains('_') && !head.contains("6.6.6.6"),
        "underscore twins and the client's Forwarded go: {head}"
    );
    for hop in ["connection", "keep-alive", "te"] {
        assert!(field(head, hop).is_empty(), "{hop} reached the service:\n{head}");
    }
}

#[tokio::test]
async fn a_chunked_body_streams_as_it_comes_and_its_end_is_found() {
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let (port, seen) = service(move |head, stream| {
        if head.starts_with("GET /stream") {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6;ext=1\r\nevent1\r\n")
                .unwrap();
            // The rest only once the client has the first chunk: nothing may wait for more.
            wait.lock().unwrap().recv().unwrap();
            stream.write_all(b"6\r\nevent2\r\n0\r\nx-trailer: done\r\n\r\n").unwrap();
            true
        } else {
            hello(head, stream)
        }
    });
    let (mut client, _) = proxy(port);
    client.write_all(b"GET /stream HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let first = async {
        while !got.ends_with(b"event1\r\n") {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first).await.expect("the first chunk was held back");
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("transfer-encoding: chunked\r\n"),
        "{head}"
    );
    go_on.send(()).unwrap();
    let tail = b"6\r\nevent2\r\n0\r\nx-trailer: done\r\n\r\n";
    let mut rest = vec![0u8; tail.len()];
    client.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest, tail);
    // The body ended where its last chunk and trailer said: the connection goes on.
    client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client).await.1, b"hello");
    assert_eq!(seen.connections(), 1);
}

#[tokio::test]
async fn what_the_fast_path_does_not_take_goes_to_hyper_with_every_byte() {
    let (port, _) = service(hello);
    let cases: [&[u8]; 7] = [
        b"POST /orders HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /up HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: other.localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for request in cases {
        let (mut client, served) = proxy(port);
        // After one exchange on the fast path, so the hand-over happens mid-connection.
        client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut client).await.1, b"hello");
        client.write_all(request).await.unwrap();
        client.write_all(b"NEXT").await.unwrap();
        let Outcome::Fallback(mut rest) = served.await.unwrap() else {
            panic!("{} was not handed over", String::from_utf8_lossy(request))
        };
        drop(client);
        let mut handed = Vec::new();
        rest.read_to_end(&mut handed).await.unwrap();
        assert_eq!(handed, [request, b"NEXT"].concat(), "{}", String::from_utf8_lossy(request));
    }
}

#[tokio::test]
async fn a_service_that_cannot_be_reached_is_hyper_paths_with_the_request_unread() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mut client, served) = proxy(port);
    let request = b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    client.write_all(request).await.unwrap();
    let Outcome::Fallback(mut rest) = served.await.unwrap() else { panic!("not handed over") };
    drop(client);
    let mut handed = Vec::new();
    rest.read_to_end(&mut handed).await.unwrap();
    assert_eq!(handed, request);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_and_an_interim_103_is_passed_on() {
    let (port, seen) = service(|head, stream| {
        let answer: &[u8] = if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        } else if head.starts_with("GET /none") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if head.starts_with("GET /same") {
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"
        } else {
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        };
        stream.write_all(answer).is_ok()
    });
    let (mut client, _) = proxy(port);
    client.write_all(b"HEAD / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && field(&head, "content-length") == ["5"], "{head}");
    client.write_all(b"GET /none HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 204 No Content\r\n"));
    client.write_all(b"GET /same HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    assert!(read_head(&mut client).await.starts_with("HTTP/1.1 304 Not Modified\r\n"));
    client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    let early = read_head(&mut client).await;
    assert_eq!(early, "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n");
    let (head, body) = response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, b"hello");
    assert_eq!(seen.connections(), 1, "no body was expected where there was none");
}

/// Reads exactly one head, byte by byte, so nothing after it is consumed.
pub(super) async fn read_head(client: &mut DuplexStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (port, seen) = service(|head, stream| {
        let path = head.split_whitespace().nth(1).unwrap().to_owned();
        write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len()).is_ok()
    });
    let (mut client, _) = proxy(port);
    client
        .write_all(b"GET /one HTTP/1.1\r\nHost: app.localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut client).await.1, b"/one");
    assert_eq!(response(&mut client).await.1, b"/two");
    assert_eq!(seen.heads().len(), 2);
}

#[tokio::test]
async fn a_body_without_length_is_read_to_the_close_and_the_client_told() {
    let (port, _) = service(|_, stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it");
        false
    });
    let (mut client, served) = proxy(port);
    client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut client).await;
    assert_eq!(field(&head, "connection"), ["close"]);
    assert_eq!(body, b"all of it");
    assert!(matches!(served.await.unwrap(), Outcome::Done));
}

#[tokio::test]
async fn a_client_asking_to_close_is_answered_then_closed() {
    let (port, _) = service(hello);
    let (mut client, served) = proxy(port);
    client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut client).await;
    assert_eq!((field(&head, "connection"), body.as_slice()), (vec!["close"], &b"hello"[..]));
    assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0, "closed after the answer");
    assert!(matches!(served.await.unwrap(), Outcome::Done));
}

/// The idle bound runs from each answer, not from the connection's first request, though the
/// connection keeps one timer: the wait past the first request's deadline goes on, and the
/// connection closes once a whole bound passed with no request.
#[tokio::test]
async fn the_idle_bound_restarts_with_every_request() {
    const BOUND: Duration = Duration::from_millis(1500);
    let (port, _) = service(hello);
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let route = move |host: &str| (host == "app.localhost").then_some(Port(port));
    let activity = std::sync::Arc::new(crate::activity::Activity::new());
    let served = tokio::spawn(serve(server, PEER, BOUND, activity, route));
    let mut last = tokio::time::Instant::now();
    // Three requests a little over half a bound apart: the third comes after the first
    // request's deadline, and must still be answered.
    for n in 0..3 {
        if n > 0 {
            tokio::time::sleep_until(last + BOUND * 3 / 5).await;
        }
        client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
        let (_, body) = response(&mut client).await;
        assert_eq!(body, b"hello", "request {n} answered");
        last = tokio::time::Instant::now();
    }
    assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0, "closed when idle");
    let idle = last.elapsed();
    assert!(idle >= BOUND - Duration::from_millis(50), "closed after {idle:?} idle, before the bound");
    assert!(matches!(served.await.unwrap(), Outcome::Done));
}

#[tokio::test]
async fn a_kept_connection_the_service_closed_is_replaced() {
    // The service closes after every answer without saying so, as one restarting would, and
    // says when it has: the next request comes after the close (a request that crosses a
    // close on its way is another case: only a safe one may go again).
    let (closed, close_seen) = std::sync::mpsc::channel();
    let closed = Mutex::new(closed);
    let (port, seen) = service(move |head, stream| {
        hello(head, stream);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = closed.lock().unwrap().send(());
        false
    });
    let (mut client, _) = proxy(port);
    for request in
        [&b"GET / HTTP/1.1\r\n"[..], b"GET / HTTP/1.1\r\n", b"POST /empty HTTP/1.1\r\nContent-Length: 0\r\n"]
    {
        client.write_all(&[request, b"Host: app.localhost\r\n\r\n"].concat()).await.unwrap();
        let (head, body) = response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, b"hello");
        close_seen.recv().unwrap();
    }
    assert_eq!(seen.connections(), 3);
}

#[tokio::test]
async fn a_service_that_drops_the_request_or_answers_nonsense_gets_the_page() {
    for answer in
        [&b""[..], b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx", b"nonsense\r\n\r\n"]
    {
        let (port, _) = service(move |_, stream| {
            let _ = stream.write_all(answer);
            false
        });
        let (mut client, _) = proxy(port);
        client.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
        let (head, body) = response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
        assert!(
            String::from_utf8_lossy(&body).contains("web is not answering"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}
