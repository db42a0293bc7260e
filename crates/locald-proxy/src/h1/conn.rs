//! The client connection's loop: read a request head, send it over the kept connection to its
//! service (or a new one), relay the answer, and again.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::Remaining;
use super::codec::{
    Framing, NotFinal::Informational, NotFinal::Invalid, Parsed, RequestPlan, ResponsePlan, plan_request,
    plan_response, put_field,
};
use super::{MAX_HEAD, Outcome, Prefixed, READ_CHUNK, Target};
use crate::Body;
use crate::activity::Activity;
use crate::forward::Peer;

/// The client connection's kept connection to a service.
struct Upstream {
    port: u16,
    stream: TcpStream,
    buf: BytesMut,
}

/// Serves the client connection until it closes or needs hyper's path. `route` maps a `Host`
/// to the service it may be forwarded to, `None` for anything hyper's path must answer. Each
/// forwarded request is open in `activity` until its answer is relayed, so a client waiting for
/// a slow service is busy, not idle, to the admission's eviction.
pub(crate) async fn serve<S, T, R>(
    mut client: S,
    peer: Peer,
    header_timeout: Duration,
    activity: Arc<Activity>,
    route: R,
) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Target,
    R: Fn(&str) -> Option<T>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let mut kept: Option<Upstream> = None;
    // One timer for the connection's life, moved only when it fires early: arming a new one per
    // request made tokio wake its own driver (an eventfd write and a spurious epoll round) on
    // nearly every request, as the timer wheel was empty whenever every connection was busy.
    let alarm = tokio::time::sleep(header_timeout);
    tokio::pin!(alarm);
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
            tokio::select! {
                biased;
                read = client.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Outcome::Done,
                    Ok(_) => {}
                },
                () = &mut alarm => {
                    if tokio::time::Instant::now() >= deadline {
                        return Outcome::Done;
                    }
                    // Set for an earlier request's deadline: the wait goes on to this one's.
                    alarm.as_mut().reset(deadline);
                }
            }
        };
        let port = target.port();
        let _open = activity.begin();

        // Every reuse is checked: bytes the service sent after the end of its last answer (a
        // body after a HEAD, 204 or 304, more than its length, a response ahead of any request)
        // answer nothing, and must never be read as the answer to this request.
        let (mut upstream, reused) = match kept.take().filter(|u| u.port == port && quiet(&u.stream)) {
            Some(u) => (u, true),
            None => match connect(port).await {
                Ok(u) => (u, false),
                Err(_) => return Outcome::Fallback(Prefixed { prefix: buf, inner: client }),
            },
        };
        let mut response = send(&mut upstream, &out, &mut client, &plan).await;
        if let Err(Failed { silent: true, .. }) = &response
            && reused
            && plan.safe
        {
            // The service closed the kept connection in between (say, it restarted) without a
            // byte of an answer: a safe request goes again, as hyper's path does (RFC 9110 §9.2.1).
            upstream = match connect(port).await {
                Ok(u) => u,
                Err(_) => return Outcome::Fallback(Prefixed { prefix: buf, inner: client }),
            };
            response = send(&mut upstream, &out, &mut client, &plan).await;
        }
        let (response, head) = match response {
            Ok(sent) => sent,
            Err(Failed { answered: true, .. }) => return Outcome::Done,
            Err(Failed { answered: false, cause, .. }) => {
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

/// Whether a kept connection is still open and quiet (no close, no stray bytes from the service).
fn quiet(stream: &TcpStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    // Asks the kernel, not tokio's readiness, which may not have seen bytes that came while
    // this task was busy: one system call per reuse.
    let peeked = recv(stream.as_raw_fd(), &mut [0u8; 1], MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    matches!(peeked, Err(nix::errno::Errno::EAGAIN))
}

async fn connect(port: u16) -> io::Result<Upstream> {
    let stream = crate::upstream::connect_service(port).await?;
    Ok(Upstream { port, stream, buf: BytesMut::with_capacity(READ_CHUNK) })
}

/// An exchange that ended early; `answered`: the client already got part of an answer;
/// `silent`: the service sent no byte of an answer (it closed, or reset, first).
struct Failed {
    answered: bool,
    silent: bool,
    cause: String,
}

impl Failed {
    fn unsent(cause: impl ToString) -> Self {
        Failed { answered: false, silent: true, cause: cause.to_string() }
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
    debug_assert!(upstream.buf.is_empty(), "a kept connection is only reused when quiet");
    upstream.buf.clear();
    upstream.stream.write_all(request).await.map_err(Failed::unsent)?;
    let (mut answered, mut received) = (false, false);
    loop {
        if !upstream.buf.is_empty() {
            let mut head = Vec::with_capacity(512);
            match plan_response(&upstream.buf, request_plan, &mut head) {
                Ok(Some(plan)) => return Ok((plan, head)),
                Ok(None) if upstream.buf.len() >= MAX_HEAD => {
                    let cause = "its answer's head is too large".into();
                    return Err(Failed { answered, silent: false, cause });
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
                    sent.await.map_err(|e| Failed { answered, silent: false, cause: e.to_string() })?;
                    continue;
                }
                Err(Invalid(cause)) => return Err(Failed { answered, silent: false, cause: cause.into() }),
            }
        }
        upstream.buf.reserve(READ_CHUNK);
        match upstream.stream.read_buf(&mut upstream.buf).await {
            Ok(0) => {
                let cause = "it closed the connection without an answer".into();
                return Err(Failed { answered, silent: !received, cause });
            }
            Ok(_) => received = true,
            Err(e) => return Err(Failed { answered, silent: !received, cause: e.to_string() }),
        }
    }
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
