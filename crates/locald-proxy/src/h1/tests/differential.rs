//! The fast path against hyper's path, on generated exchanges: request heads (valid, borderline,
//! malformed) and service answers (valid, borderline, malformed, with bytes after their end),
//! each run through the fast path (handing over to hyper's path as the proxy does) and through
//! hyper's path alone, each against its own copy of the service. Both must send the service
//! the same requests and the client the same responses (status and body); the fast path may
//! only close the client connection earlier, after a response that says so.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::PEER;
use super::raw::{Raw, Script, target};
use crate::Body;
use crate::h1::{Outcome, Target, serve};
use crate::upstream::Upstreams;
use crate::{forward, pages, routes};

/// A service answer: its name (for the failure message), the bytes written at once, bytes
/// written later, whether the service closes after it.
type Answer = (&'static str, &'static [u8], Option<&'static [u8]>, bool);

const ANSWERS: &[Answer] = &[
    ("length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", None, false),
    ("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None, false),
    (
        "chunked-ext-trailer",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;a=b\r\nhello\r\n3 \r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
        None,
        false,
    ),
    ("204", b"HTTP/1.1 204 No Content\r\n\r\n", None, false),
    ("304", b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n", None, false),
    ("100-then-200", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None, false),
    ("103-then-200", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None, false),
    ("until-close", b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close", None, true),
    ("http-1.0", b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold", None, true),
    ("http-1.0-keep-alive", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 3\r\n\r\nold", None, false),
    ("close", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello", None, true),
    ("404-empty", b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", None, false),
    ("length-list", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello", None, false),
    ("length-twice", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello", None, false),
    ("length-plus", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", None, true),
    ("length-conflict", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello", None, true),
    ("length-word", b"HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\nhello", None, true),
    (
        "te-and-cl",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        None,
        false,
    ),
    ("bare-lf-size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", None, true),
    ("bare-lf-data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", None, true),
    ("bare-lf-end", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\n", None, true),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok", None, true),
    ("bare-lf-head", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", None, false),
    ("te-gzip", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw bytes", None, true),
    ("te-in-1.0", b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None, true),
    ("nonsense", b"nonsense\r\n\r\n", None, true),
    ("short-body", b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello", None, true),
    ("204-with-body", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello", None, false),
    ("length-then-more", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloINJECTED", None, false),
    (
        "length-later-answer",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"),
        false,
    ),
    ("204-later", b"HTTP/1.1 204 No Content\r\n\r\n", Some(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"), false),
    (
        "304-length-later",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 40\r\n\r\n",
        Some(b"0123456789012345678901234567890123456789HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"),
        false,
    ),
];

/// Answers only for HEAD: a length whose body comes later.
const HEAD_LATER: usize = usize::MAX;

/// Request heads; `{t}` is the request target, so the service knows which answer to give.
const REQUESTS: &[&str] = &[
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nAccept: */*\r\nConnection: keep-alive\r\nX-Custom: v\r\n\r\n",
    "HEAD {t} HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    "DELETE {t} HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    "OPTIONS {t} HTTP/1.1\r\nHost: APP.localhost\r\n\r\n",
    "POST {t} HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 0\r\n\r\n",
    "PUT {t} HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 0\r\nTE: trailers\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nX-Forwarded-For: 192.0.2.1\r\nForwarded: for=192.0.2.1\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
    "GET {t} HTTP/1.1\nHost: app.localhost\n\n",
    "POST {t} HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\r\nhello",
    "POST {t} HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
    "POST {t} HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: +0\r\n\r\n",
    "POST {t} HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nX-A: 1\r\n folded\r\n\r\n",
    "GET {t} HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
    "GET http://app.localhost{t} HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nHost: other.localhost\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: other.localhost\r\n\r\n",
    "GET {t} HTTP/1.1\r\nHost: app.localhost\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n",
];
// A malformed request body is not drawn: whether the service answers before hyper finds the
// error is a race on both paths alike. `reuse.rs` tests it against a service that waits.

#[derive(Clone, Debug)]
struct Exchange {
    request: usize,
    answer: usize,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    let answer = prop_oneof![9 => 0..ANSWERS.len(), 1 => Just(HEAD_LATER)];
    (0..REQUESTS.len(), answer).prop_map(|(request, answer)| {
        // A body that comes later is only stale after a HEAD.
        let request = if answer == HEAD_LATER { 2 } else { request };
        Exchange { request, answer }
    })
}

fn script(answer: usize) -> Script {
    if answer == HEAD_LATER {
        let later = b"helloHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED".to_vec();
        return Script {
            now: b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec(),
            later: Some(later),
            close: false,
        };
    }
    let (_, now, later, close) = ANSWERS[answer];
    Script { now: now.to_vec(), later: later.map(<[u8]>::to_vec), close }
}

/// What the client saw of one exchange.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A response; a 502 page's body is left out (it names the cause in each path's words).
    Response { status: u16, body: String, close: bool },
    /// No complete response: the connection ended or nothing came.
    Failed,
}

/// What one path did with a case: the requests the service read (request line and fields,
/// names in lower case, sorted) and what the client got.
#[derive(Debug)]
struct Run {
    requests: Vec<String>,
    seen: Vec<Seen>,
    /// The connection each request came on, for the failure message only.
    connections: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fast,
    Hyper,
}

struct App(u16);

impl Target for App {
    fn port(&self) -> u16 {
        self.0
    }

    fn unreachable(&self, cause: &str) -> Response<Body> {
        pages::unreachable("app", "web", self.0, cause)
    }
}

fn routed(raw_host: &str) -> bool {
    routes::normalize_host(raw_host).as_deref() == Some("app.localhost")
}

/// Hyper's path as `proxy::serve` runs it, with one route: `app.localhost` to `port`.
pub(super) async fn hyper_path<S>(io: S, port: u16)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut connections = auto::Builder::new(TokioExecutor::new());
    connections.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    let upstreams = std::sync::Arc::new(Upstreams::default());
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let upstreams = upstreams.clone();
        async move {
            // What `proxy::handle` does before it forwards: its refusals, then the route.
            if let Some((status, why)) = forward::refusal(&req) {
                return Ok::<_, std::convert::Infallible>(crate::pages::refused(status, why));
            }
            let authority =
                forward::routed_authority(&req).and_then(|h| hyper::http::HeaderValue::from_str(h).ok());
            let Some(authority) = authority.filter(|a| a.to_str().is_ok_and(routed)) else {
                let page = http_body_util::Full::new(bytes::Bytes::from_static(b"unknown"))
                    .map_err(|never| match never {})
                    .boxed();
                return Ok(Response::builder().status(404).body(page).unwrap());
            };
            let body_timeout = crate::limits::Limits::for_nofile(1024).body;
            Ok(
                match forward::forward(&upstreams, req, &authority, port, PEER, Box::new(()), body_timeout)
                    .await
                {
                    Ok(response) => response,
                    Err(e) => crate::forward_failed("app", "web", port, &e),
                },
            )
        }
    });
    let _ = connections.serve_connection_with_upgrades(TokioIo::new(io), service).await;
}

async fn run(path: Path, exchanges: &[Exchange]) -> Run {
    let answers: Vec<usize> = exchanges.iter().map(|e| e.answer).collect();
    let mut service = Raw::start(move |head| {
        let n: usize = target(head)
            .trim_start_matches("http://app.localhost")
            .trim_start_matches("/r")
            .parse()
            .unwrap_or(0);
        script(answers[n.min(answers.len() - 1)])
    })
    .await;
    let port = service.port;
    let (mut client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        if path == Path::Fast {
            let route = |host: &str| routed(host).then_some(App(port));
            if let Outcome::Fallback(rest) = serve(
                server,
                PEER,
                Duration::from_secs(30),
                std::sync::Arc::new(crate::activity::Activity::new()),
                route,
            )
            .await
            {
                hyper_path(rest, port).await;
            }
        } else {
            hyper_path(server, port).await;
        }
    });
    let mut seen = Vec::new();
    let mut unread = Vec::new();
    for (n, exchange) in exchanges.iter().enumerate() {
        let request = REQUESTS[exchange.request].replace("{t}", &format!("/r{n}"));
        if client.write_all(request.as_bytes()).await.is_err() {
            break;
        }
        let head_request = request.starts_with("HEAD");
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            read_response(&mut client, &mut unread, head_request),
        )
        .await
        .unwrap_or(Seen::Failed);
        let go_on = matches!(got, Seen::Response { close: false, .. });
        seen.push(got);
        if !go_on {
            break;
        }
        // Only a request that reached the service has bytes to come after its answer (one for
        // another host, or one hyper's path refused, was answered by the proxy).
        let reached = service.requests().iter().any(|(_, head)| target(head).ends_with(&format!("/r{n}")));
        if script(exchange.answer).later.is_some() && reached {
            service.inject().await;
        }
    }
    let log = service.requests();
    let connections = log.iter().map(|(n, _)| *n).collect();
    let mut requests: Vec<String> = log
        .into_iter()
        .map(|(_, head)| {
            let mut lines = head.lines().filter(|l| !l.is_empty());
            // hyper's client speaks HTTP/1.0 (with keep-alive, and a body without chunks) to a
            // service that answered in it: not a difference in framing.
            let line = lines.next().unwrap_or_default().replace(" HTTP/1.0", " HTTP/1.1");
            let mut fields: Vec<String> = lines
                .filter(|l| {
                    !l.eq_ignore_ascii_case("connection: keep-alive")
                        && !l.eq_ignore_ascii_case("transfer-encoding: chunked")
                })
                .map(|l| match l.split_once(':') {
                    Some((name, value)) => format!("{}: {}", name.to_ascii_lowercase(), value.trim()),
                    None => l.to_owned(),
                })
                .collect();
            fields.sort();
            format!("{line}\n{}", fields.join("\n"))
        })
        .collect();
    requests.truncate(16);
    Run { requests, seen, connections }
}

/// Reads one final response as a strict client would; 1xx answers are skipped.
async fn read_response(client: &mut DuplexStream, buf: &mut Vec<u8>, head_request: bool) -> Seen {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut fields);
        let parsed = res.parse(buf);
        let head_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if !fill(client, buf).await {
                    return Seen::Failed;
                }
                continue;
            }
            Err(_) => return Seen::Failed,
        };
        let status = res.code.unwrap_or_default();
        if (100..200).contains(&status) {
            buf.drain(..head_len);
            continue;
        }
        let field = |name: &str| {
            res.headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| String::from_utf8_lossy(f.value).to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let close = field("connection").iter().any(|v| v.split(',').any(|t| t.trim() == "close"));
        let chunked = field("transfer-encoding").last().is_some_and(|v| v.trim_end().ends_with("chunked"));
        let length = field("content-length").first().map(|v| v.trim().parse::<usize>());
        buf.drain(..head_len);
        let body = if head_request || status == 204 || status == 304 {
            Some(Vec::new())
        } else if chunked {
            dechunk(client, buf).await
        } else if let Some(length) = length {
            let Ok(length) = length else { return Seen::Failed };
            while buf.len() < length {
                if !fill(client, buf).await {
                    return Seen::Failed;
                }
            }
            Some(buf.drain(..length).collect())
        } else {
            while fill(client, buf).await {}
            Some(std::mem::take(buf))
        };
        let Some(body) = body else { return Seen::Failed };
        let body = if status == 502 { String::new() } else { String::from_utf8_lossy(&body).into_owned() };
        return Seen::Response { status, body, close };
    }
}

async fn fill(client: &mut DuplexStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match client.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A chunked body's data, `None` if it is malformed or cut off.
async fn dechunk(client: &mut DuplexStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if !fill(client, buf).await {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !fill(client, buf).await {
                        return None;
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(client, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        buf.drain(..size + 2);
    }
}

/// The fast path agrees with hyper's path when the services got the same requests and the
/// client the same responses, except that the fast path may close the client connection after
/// a response that says so (then hyper's path may go on).
fn agree(fast: &Run, hyper: &Run) -> Result<(), String> {
    let n = fast.seen.len();
    let closed_early = matches!(fast.seen.last(), Some(Seen::Response { close: true, .. }))
        && matches!(hyper.seen.get(n - 1), Some(Seen::Response { close: false, .. }));
    let same = |a: &Seen, b: &Seen| match (a, b) {
        (
            Seen::Response { status: s, body: x, close: c },
            Seen::Response { status: t, body: y, close: d },
        ) => s == t && x == y && (c == d || closed_early),
        (a, b) => a == b,
    };
    let same_seen = if closed_early {
        n <= hyper.seen.len() && fast.seen.iter().zip(&hyper.seen).all(|(a, b)| same(a, b))
    } else {
        fast.seen == hyper.seen
    };
    let same_requests = if closed_early {
        hyper.requests.starts_with(&fast.requests)
    } else {
        fast.requests == hyper.requests
    };
    if same_seen && same_requests {
        Ok(())
    } else {
        Err(format!(
            "fast path: {fast:#?}\nhyper's path: {hyper:#?}\nconnections: {:?} and {:?}",
            fast.connections, hyper.connections
        ))
    }
}

fn describe(exchanges: &[Exchange]) -> String {
    exchanges
        .iter()
        .map(|e| {
            let answer = if e.answer == HEAD_LATER { "head-later" } else { ANSWERS[e.answer].0 };
            format!("{:?} -> {answer}", REQUESTS[e.request])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_fast_path_frames_every_exchange_as_hyper_does() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = Config { cases: 160, failure_persistence: None, max_shrink_iters: 200, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(exchange(), 1..=3), |exchanges| {
        let (fast, hyper) = runtime
            .block_on(async { (run(Path::Fast, &exchanges).await, run(Path::Hyper, &exchanges).await) });
        agree(&fast, &hyper).map_err(|e| TestCaseError::fail(format!("{}\n{e}", describe(&exchanges))))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Every answer at least once, after a kept connection, with each kind of request: the cases
/// the generator might not draw in a bounded run.
#[test]
fn every_answer_agrees_after_a_kept_connection() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    for answer in (0..ANSWERS.len()).chain([HEAD_LATER]) {
        for request in [0, 2, 3, 5] {
            let request = if answer == HEAD_LATER { 2 } else { request };
            let exchanges = [
                Exchange { request: 0, answer: 0 },
                Exchange { request, answer },
                Exchange { request: 0, answer: 0 },
            ];
            let (fast, hyper) = runtime
                .block_on(async { (run(Path::Fast, &exchanges).await, run(Path::Hyper, &exchanges).await) });
            if let Err(e) = agree(&fast, &hyper) {
                failures.push(format!("{}\n{e}", describe(&exchanges)));
            }
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n\n"));
}
