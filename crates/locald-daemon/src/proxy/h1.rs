//! The common HTTP/1.1 exchange without hyper's server and client: a request without a body for
//! a service that runs, sent over the client connection's kept connection to that service, and
//! the service's answer streamed back as it arrives. It is most of what a browser sends, and
//! hyper's general machinery (a header map and a task hand-off per message, each way) cost the
//! proxy about twice nginx's CPU per request.
//!
//! It takes only what it can do right and hands everything else to hyper ([`super::serve`])
//! with the bytes read so far, for the rest of the client connection: a request with a body or
//! `Transfer-Encoding`, an upgrade, `Expect`, HTTP/1.0, a host that is not a running service, a
//! head that httparse will not read. A service it cannot connect to goes there too, before
//! anything was sent, so the page for it is hyper's path's. What the service sees is the same on
//! both paths: origin-form request line, hop-by-hop fields out, `X-Forwarded-*` and `Forwarded`
//! in (one formatter, [`Forwarded`]).
//!
//! Responses are framed per RFC 9112 §6.3: none for `HEAD`, 1xx, 204 and 304; chunked bodies
//! pass through as they are, their end found by [`ChunkScan`]; a `Content-Length` body is copied
//! to its length; anything else is read until the service closes, and the client connection is
//! closed after it. 1xx answers other than 101 are passed on before the final one.

use std::io;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Body;
use super::forward::{
    FORWARDED, Forwarded, HOP_BY_HOP, Peer, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    dropped_request_field,
};

/// Largest request or response head taken (hyper's path answers a larger request with 431).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Longest line of a chunked body's framing (size and extensions, or a trailer field).
const MAX_CHUNK_LINE: usize = 4096;

/// Where a routed request goes.
pub trait Target {
    fn port(&self) -> u16;
    /// The page for a service that dropped the connection before answering.
    fn unreachable(&self, cause: &str) -> Response<Body>;
}

/// How the fast path left the client connection.
pub enum Outcome<S> {
    /// Closed or finished with.
    Done,
    /// Hyper's path takes over, reading what was already read first.
    Fallback(Prefixed<S>),
}

/// The client connection's kept connection to a service.
struct Upstream {
    port: u16,
    stream: TcpStream,
    buf: BytesMut,
}

/// What the request line and fields decided.
struct RequestPlan {
    head_len: usize,
    head_request: bool,
    /// Safe to send again over a new connection when a kept one failed before any answer.
    replayable: bool,
    /// The client asked to close after this exchange.
    close: bool,
}

/// What the response head decided.
#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct ResponsePlan {
    head_len: usize,
    framing: Framing,
    /// The service said it closes (or spoke HTTP/1.0 without keep-alive).
    service_closes: bool,
}

/// Serves the client connection until it closes or needs hyper's path. `route` maps a `Host`
/// to the service it may be forwarded to, `None` for anything hyper's path must answer.
pub async fn serve<S, T, R>(mut client: S, peer: Peer, header_timeout: Duration, route: R) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Target,
    R: Fn(&str) -> Option<T>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let mut kept: Option<Upstream> = None;
    loop {
        // The wait for a head is bounded as hyper's path bounds it: idle keep-alive included.
        let deadline = tokio::time::Instant::now() + header_timeout;
        let (plan, target) = loop {
            if !buf.is_empty() {
                out.clear();
                match plan_request(&buf, peer, &route, &mut out) {
                    Parsed::Complete(plan, target) => break (plan, target),
                    Parsed::Partial if buf.len() < MAX_HEAD => {}
                    _ => return Outcome::Fallback(Prefixed { prefix: buf, inner: client }),
                }
            }
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Done,
                Ok(Ok(_)) => {}
                Err(_elapsed) => return Outcome::Done,
            }
        };
        let port = target.port();

        let mut reused = false;
        let mut upstream = match kept.take().filter(|u| u.port == port) {
            // A request that cannot be sent again gets a connection known to be open.
            Some(u) if plan.replayable || still_open(&u.stream) => {
                reused = true;
                u
            }
            _ => match connect(port).await {
                Ok(u) => u,
                Err(_) => return Outcome::Fallback(Prefixed { prefix: buf, inner: client }),
            },
        };
        let mut response = send(&mut upstream, &out, &mut client, &plan).await;
        if let Err(Failed { answered: false, .. }) = &response
            && reused
            && plan.replayable
        {
            // The service closed the kept connection in between (say, it restarted).
            upstream = match connect(port).await {
                Ok(u) => u,
                Err(_) => return Outcome::Fallback(Prefixed { prefix: buf, inner: client }),
            };
            response = send(&mut upstream, &out, &mut client, &plan).await;
        }
        let (response, head) = match response {
            Ok(sent) => sent,
            Err(Failed { answered: true, .. }) => return Outcome::Done,
            Err(Failed { answered: false, cause }) => {
                let _ = write_page(&mut client, target.unreachable(&cause)).await;
                return Outcome::Done;
            }
        };
        buf.advance(plan.head_len);
        let close_client = plan.close || response.framing == Framing::UntilClose;
        match relay(&mut upstream, &mut client, response, head).await {
            Ok(true) if !close_client => kept = Some(upstream),
            Ok(_) => {}
            Err(_) => return Outcome::Done,
        }
        if close_client {
            let _ = client.shutdown().await;
            return Outcome::Done;
        }
    }
}

enum Parsed<T> {
    Complete(RequestPlan, T),
    Partial,
    /// Not for the fast path.
    Other,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// One of the fields RFC 9110 §7.6.1 says describe a connection, not the message (the list
/// hyper's path strips).
fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| eq(name, hop.as_str()))
}

/// The comma-separated tokens of a field value such as `Connection`'s.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads the request head in `buf` and, when the fast path can take it, writes the head to send
/// to the service into `out`.
fn plan_request<T>(
    buf: &[u8],
    peer: Peer,
    route: &impl Fn(&str) -> Option<T>,
    out: &mut Vec<u8>,
) -> Parsed<T> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    // Origin-form only: absolute-form, `*` and CONNECT's authority-form go to hyper's path.
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Other;
    }
    let (mut host, mut close) = (None, false);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in req.headers.iter() {
        let name = field.name;
        let text = || std::str::from_utf8(field.value).ok();
        if eq(name, "host") {
            if host.is_some() {
                return Parsed::Other;
            }
            host = text();
        } else if eq(name, "content-length") {
            // A body (or two lengths) is hyper's path's.
            if field.value != b"0" {
                return Parsed::Other;
            }
        } else if ["transfer-encoding", "upgrade", "expect", "http2-settings"].iter().any(|n| eq(name, n)) {
            return Parsed::Other;
        } else if eq(name, "connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    // Fields named as hop-by-hop: hyper's path removes them.
                    return Parsed::Other;
                }
            }
            continue;
        } else if dropped_request_field(name) {
            continue;
        }
        put_field(out, name.as_bytes(), field.value);
    }
    let Some(host) = host else { return Parsed::Other };
    let Some(target) = route(host) else { return Parsed::Other };
    let values = Forwarded::new(peer, host);
    for (name, value) in [
        (X_FORWARDED_FOR, values.xff.as_str()),
        (X_FORWARDED_PROTO, values.proto),
        (X_FORWARDED_HOST, host),
        (FORWARDED, values.forwarded.as_str()),
    ] {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let replayable = hyper::Method::from_bytes(method.as_bytes()).is_ok_and(|m| m.is_idempotent());
    Parsed::Complete(RequestPlan { head_len, head_request: method == "HEAD", replayable, close }, target)
}

/// Whether a kept connection is still open and quiet (no close, no stray bytes from the service).
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

async fn connect(port: u16) -> io::Result<Upstream> {
    let stream = super::upstream::connect_service(port).await?;
    Ok(Upstream { port, stream, buf: BytesMut::with_capacity(READ_CHUNK) })
}

/// An exchange that ended early; `answered`: the client already got part of an answer.
struct Failed {
    answered: bool,
    cause: String,
}

impl Failed {
    fn before_answer(cause: impl ToString) -> Self {
        Failed { answered: false, cause: cause.to_string() }
    }
}

/// Sends the request head and reads the service's final response head, passing 1xx answers on
/// to the client. Returns the plan and the head to send the client.
async fn send<S: AsyncWrite + Unpin>(
    upstream: &mut Upstream,
    request: &[u8],
    client: &mut S,
    request_plan: &RequestPlan,
) -> Result<(ResponsePlan, Vec<u8>), Failed> {
    upstream.buf.clear();
    upstream.stream.write_all(request).await.map_err(Failed::before_answer)?;
    let mut answered = false;
    loop {
        if !upstream.buf.is_empty() {
            let mut head = Vec::with_capacity(512);
            match plan_response(&upstream.buf, request_plan, &mut head) {
                Ok(Some(plan)) => return Ok((plan, head)),
                Ok(None) if upstream.buf.len() >= MAX_HEAD => {
                    return Err(Failed { answered, cause: "its answer's head is too large".into() });
                }
                Ok(None) => {}
                Err(Informational(n)) => {
                    // 100 Continue, 103 Early Hints: the client gets them as they are.
                    let interim = upstream.buf.split_to(n);
                    answered = true;
                    let sent = async {
                        client.write_all(&interim).await?;
                        client.flush().await
                    };
                    sent.await.map_err(|e| Failed { answered, cause: e.to_string() })?;
                    continue;
                }
                Err(Invalid(cause)) => return Err(Failed { answered, cause: cause.into() }),
            }
        }
        upstream.buf.reserve(READ_CHUNK);
        match upstream.stream.read_buf(&mut upstream.buf).await {
            Ok(0) => {
                return Err(Failed { answered, cause: "it closed the connection without an answer".into() });
            }
            Ok(_) => {}
            Err(e) => return Err(Failed { answered, cause: e.to_string() }),
        }
    }
}

/// Why a response head is not a final answer to relay.
enum NotFinal {
    Informational(usize),
    Invalid(&'static str),
}
use NotFinal::{Informational, Invalid};

/// Reads the response head in `buf`; `Ok(None)` while incomplete. Writes the head for the client
/// into `out`.
fn plan_response(
    buf: &[u8],
    request: &RequestPlan,
    out: &mut Vec<u8>,
) -> Result<Option<ResponsePlan>, NotFinal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Invalid("its answer is not HTTP/1.1")),
    };
    let (Some(code), Some(version)) = (res.code, res.version) else {
        return Err(Invalid("its answer is not HTTP/1.1"));
    };
    match code {
        101 => return Err(Invalid("it switched protocols unasked")),
        100..=199 => return Err(Informational(head_len)),
        _ => {}
    }
    // Fields the service's `Connection` names describe its connection to the proxy only.
    let (mut close, mut keep_alive) = (false, false);
    let mut named: Vec<&[u8]> = Vec::new();
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for field in res.headers.iter() {
        if eq(field.name, "connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
        } else if eq(field.name, "transfer-encoding") {
            // The last coding decides (RFC 9112 §6.3): chunked, or read until the close.
            let last = field.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if eq(field.name, "content-length") {
            let value = std::str::from_utf8(field.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            match (value, length) {
                (None, _) => return Err(Invalid("its Content-Length is not a number")),
                (Some(v), Some(earlier)) if v != earlier => {
                    return Err(Invalid("it sent two different Content-Length fields"));
                }
                (Some(v), _) => length = Some(v),
            }
        }
    }
    let framing = if request.head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let _ = write!(out, "HTTP/1.1 {code} ");
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in res.headers.iter() {
        let name = field.name;
        // Transfer-Encoding stays: the body passes through in the coding it names.
        let hop = (hop_by_hop(name) && !eq(name, "transfer-encoding"))
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            // A sender must not send both (RFC 9112 §6.2); the coding frames the message.
            || (chunked.is_some() && eq(name, "content-length"));
        if !hop {
            put_field(out, name.as_bytes(), field.value);
        }
    }
    if framing == Framing::UntilClose || request.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let service_closes = close || (version == 0 && !keep_alive);
    Ok(Some(ResponsePlan { head_len, framing, service_closes }))
}

/// Sends the client the response head and the body as it comes. `Ok(true)`: the service's
/// connection is fit for the next request.
async fn relay<S: AsyncWrite + Unpin>(
    upstream: &mut Upstream,
    client: &mut S,
    plan: ResponsePlan,
    mut head: Vec<u8>,
) -> io::Result<bool> {
    upstream.buf.advance(plan.head_len);
    let mut body = Remaining::new(&plan.framing);
    // The head goes out with whatever of the body is already here, in one write.
    let here = body.take(&upstream.buf)?;
    head.extend_from_slice(&upstream.buf[..here]);
    upstream.buf.advance(here);
    client.write_all(&head).await?;
    client.flush().await?;
    while !body.done() {
        upstream.buf.clear();
        upstream.buf.reserve(READ_CHUNK);
        let read = upstream.stream.read_buf(&mut upstream.buf).await?;
        if read == 0 {
            if plan.framing == Framing::UntilClose {
                return Ok(false);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the service ended the body early"));
        }
        let here = body.take(&upstream.buf)?;
        client.write_all(&upstream.buf[..here]).await?;
        client.flush().await?;
        upstream.buf.advance(here);
    }
    // Bytes after the end would be an answer to nothing: that connection is not used again.
    Ok(!plan.service_closes && upstream.buf.is_empty())
}

/// How much of the body is still to come.
enum Remaining {
    Length(u64),
    Chunked(ChunkScan),
    UntilClose,
}

impl Remaining {
    fn new(framing: &Framing) -> Self {
        match framing {
            Framing::Empty => Remaining::Length(0),
            Framing::Length(n) => Remaining::Length(*n),
            Framing::Chunked => Remaining::Chunked(ChunkScan::default()),
            Framing::UntilClose => Remaining::UntilClose,
        }
    }

    /// How many of `bytes` belong to the body.
    fn take(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Remaining::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Remaining::Chunked(scan) => {
                scan.scan(bytes).map_err(|cause| io::Error::new(io::ErrorKind::InvalidData, cause))
            }
            Remaining::UntilClose => Ok(bytes.len()),
        }
    }

    fn done(&self) -> bool {
        match self {
            Remaining::Length(left) => *left == 0,
            Remaining::Chunked(scan) => scan.done(),
            Remaining::UntilClose => false,
        }
    }
}

/// Finds where a chunked body ends (RFC 9112 §7.1) while it passes through unchanged.
#[derive(Default)]
struct ChunkScan {
    state: Chunk,
    /// Bytes in the current framing line, bounded by [`MAX_CHUNK_LINE`].
    line: usize,
}

#[derive(Default, Debug, PartialEq)]
enum Chunk {
    /// At the start of a size line.
    #[default]
    SizeStart,
    /// In a size line: the size so far, whether in the extensions after it.
    Size {
        size: u64,
        ext: bool,
    },
    /// `\r` seen at the end of a size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or inside one (`empty`: nothing but a `\r` in it yet).
    Trailer {
        empty: bool,
    },
    Done,
}

impl ChunkScan {
    fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// How many of `bytes` belong to the body; fewer than all only when it has ended.
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = &mut self.state {
                let n = (*left).min((bytes.len() - i) as u64);
                *left -= n;
                i += n as usize;
                if *left == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err("a chunk framing line is too long");
            }
            self.state = match std::mem::take(&mut self.state) {
                Chunk::SizeStart => match hex(b) {
                    Some(d) => Chunk::Size { size: u64::from(d), ext: false },
                    None => return Err("a chunk size is not hexadecimal"),
                },
                Chunk::Size { size, ext: false } if hex(b).is_some() => {
                    let d = u64::from(hex(b).unwrap_or_default());
                    let size =
                        size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or("a chunk is too large")?;
                    Chunk::Size { size, ext: false }
                }
                Chunk::Size { size, .. } if b == b'\r' => Chunk::SizeLf { size },
                Chunk::Size { size, .. } | Chunk::SizeLf { size } if b == b'\n' => {
                    self.line = 0;
                    if size == 0 { Chunk::Trailer { empty: true } } else { Chunk::Data(size) }
                }
                Chunk::Size { size, ext: false } if matches!(b, b';' | b' ' | b'\t') => {
                    Chunk::Size { size, ext: true }
                }
                Chunk::Size { size, ext: true } if b != b'\r' => Chunk::Size { size, ext: true },
                Chunk::Size { .. } | Chunk::SizeLf { .. } => return Err("a chunk size line is malformed"),
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataCr | Chunk::DataLf if b == b'\n' => {
                    self.line = 0;
                    Chunk::SizeStart
                }
                Chunk::DataCr | Chunk::DataLf => return Err("a chunk does not end with CRLF"),
                Chunk::Trailer { empty } if b == b'\n' => {
                    self.line = 0;
                    if empty {
                        self.state = Chunk::Done;
                        return Ok(i);
                    }
                    Chunk::Trailer { empty: true }
                }
                Chunk::Trailer { empty } if b == b'\r' => Chunk::Trailer { empty },
                Chunk::Trailer { .. } => Chunk::Trailer { empty: false },
                Chunk::Data(_) => unreachable!("handled above"),
                Chunk::Done => {
                    self.state = Chunk::Done;
                    return Ok(i - 1);
                }
            };
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Answers with one of the proxy's pages and closes: for a service that dropped a kept
/// connection under a request that cannot be sent again.
async fn write_page<S: AsyncWrite + Unpin>(client: &mut S, page: Response<Body>) -> io::Result<()> {
    let (parts, body) = page.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut out =
        format!("HTTP/1.1 {} {}\r\n", parts.status.as_u16(), parts.status.canonical_reason().unwrap_or(""))
            .into_bytes();
    for (name, value) in &parts.headers {
        put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    client.write_all(&out).await?;
    client.shutdown().await
}

/// A client connection with bytes already read from it in front: what hyper's path reads first.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::DuplexStream;

    struct Port(u16);

    impl Target for Port {
        fn port(&self) -> u16 {
            self.0
        }

        fn unreachable(&self, cause: &str) -> Response<Body> {
            super::super::pages::unreachable("app", "web", self.0, cause)
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
    fn service(
        answer: impl Fn(&str, &mut std::net::TcpStream) -> bool + Send + Sync + 'static,
    ) -> (u16, Seen) {
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

    const PEER: Peer = Peer {
        addr: std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000),
        tls: false,
    };

    /// The fast path serving one client connection to the service on `port` for `app.localhost`.
    fn proxy(port: u16) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let route = move |host: &str| (host == "app.localhost").then_some(Port(port));
        (client, tokio::spawn(serve(server, PEER, Duration::from_secs(30), route)))
    }

    /// Reads one response with a `content-length` (or none: until the end) from the client side.
    async fn response(client: &mut DuplexStream) -> (String, Vec<u8>) {
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
    async fn read_head(client: &mut DuplexStream) -> String {
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
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = response(&mut client).await;
        assert_eq!((field(&head, "connection"), body.as_slice()), (vec!["close"], &b"hello"[..]));
        assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0, "closed after the answer");
        assert!(matches!(served.await.unwrap(), Outcome::Done));
    }

    #[tokio::test]
    async fn a_kept_connection_the_service_closed_is_replaced() {
        // The service closes after every answer without saying so, as one restarting would.
        let (port, seen) = service(|head, stream| {
            hello(head, stream);
            false
        });
        let (mut client, _) = proxy(port);
        for request in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"POST /empty HTTP/1.1\r\nContent-Length: 0\r\n",
        ] {
            client.write_all(&[request, b"Host: app.localhost\r\n\r\n"].concat()).await.unwrap();
            let (head, body) = response(&mut client).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert_eq!(body, b"hello");
        }
        assert_eq!(seen.connections(), 3);
    }

    #[tokio::test]
    async fn a_service_that_drops_the_request_or_answers_nonsense_gets_the_page() {
        for answer in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
            b"nonsense\r\n\r\n",
        ] {
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

    #[test]
    fn chunk_ends_are_found_however_the_bytes_are_split() {
        let body =
            b"4\r\nwiki\r\n5;name=\"v\"\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nexpires: never\r\n\r\n";
        let next = b"HTTP/1.1 200 OK";
        let all = [&body[..], next].concat();
        for split in 0..all.len() {
            let mut scan = ChunkScan::default();
            let first = scan.scan(&all[..split]).unwrap();
            let taken = if scan.done() { first } else { first + scan.scan(&all[split..]).unwrap() };
            assert!(scan.done(), "split at {split}");
            assert_eq!(taken, body.len(), "split at {split}");
        }
    }

    #[test]
    fn malformed_chunk_framing_is_an_error() {
        for bad in [&b"x\r\n"[..], b"4\r\nwikiXX", b"ffffffffffffffffff\r\n", b"4\rx"] {
            let mut scan = ChunkScan::default();
            assert!(scan.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut scan = ChunkScan::default();
        assert_eq!(scan.scan(b"0\r\n\r"), Ok(4));
        assert!(!scan.done(), "the empty line after the last chunk has not come yet");
        let mut scan = ChunkScan::default();
        assert!(scan.scan(&[b'1'; MAX_CHUNK_LINE + 1]).is_err(), "an endless size line");
    }
}
