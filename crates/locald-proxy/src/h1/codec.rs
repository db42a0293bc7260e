//! Reading request and response heads with httparse and deciding what the fast path does with
//! them: which requests it takes, the head sent to the service, how the response is framed
//! (RFC 9112 §6.3) and the head sent to the client.

use std::io::Write as _;

use super::MAX_HEADERS;
use crate::forward::{
    FORWARDED, Forwarded, HOP_BY_HOP, Peer, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    dropped_request_field,
};

/// What the request line and fields decided.
pub(super) struct RequestPlan {
    pub(super) head_len: usize,
    pub(super) head_request: bool,
    /// A safe method (RFC 9110 §9.2.1): sent again over a new connection when a kept one
    /// closed before a byte of an answer. Idempotent PUT and DELETE are not: the service may
    /// have acted on them before it closed.
    pub(super) safe: bool,
    /// The client asked to close after this exchange.
    pub(super) close: bool,
}

/// What the response head decided.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(super) struct ResponsePlan {
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    /// The service said it closes (or spoke HTTP/1.0 without keep-alive).
    pub(super) service_closes: bool,
}

pub(super) enum Parsed<T> {
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

pub(super) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads the request head in `buf` and, when the fast path can take it, writes the head to send
/// to the service into `out`.
pub(super) fn plan_request<T>(
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
    let safe = matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE");
    Parsed::Complete(RequestPlan { head_len, head_request: method == "HEAD", safe, close }, target)
}

/// Why a response head is not a final answer to relay.
pub(super) enum NotFinal {
    Informational(usize),
    Invalid(&'static str),
}
use NotFinal::{Informational, Invalid};

/// A `Content-Length` value as hyper reads it: comma-separated copies of one number, digits
/// only (no sign, no space inside), the same as `earlier` if there was one.
fn content_length(value: &[u8], earlier: Option<u64>) -> Option<u64> {
    let mut length = earlier;
    for item in value.split(|&b| b == b',') {
        let digits = item.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Reads the response head in `buf`; `Ok(None)` while incomplete. Writes the head for the client
/// into `out`.
pub(super) fn plan_response(
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
    let mut length: Option<Option<u64>> = None;
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
            // `Some(None)`: not one length, read as hyper's client reads it; it stays so.
            length = Some(match length {
                Some(None) => None,
                earlier => content_length(field.value, earlier.flatten()),
            });
        }
    }
    // RFC 9112 §6.3 in hyper's client's order: no body whatever the fields say, then the
    // coding (HTTP/1.0 has none), then the length, then the close.
    let framing = if request.head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(_), _) if version == 0 => return Err(Invalid("it sent Transfer-Encoding in HTTP/1.0")),
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(Some(n))) => Framing::Length(n),
            (None, Some(None)) => return Err(Invalid("its Content-Length is not one number")),
        }
    };
    let _ = write!(out, "HTTP/1.1 {code} ");
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in res.headers.iter() {
        let name = field.name;
        // A chunked body passes through in its coding, so its Transfer-Encoding stays; any
        // other coding is read to the close and sent as it came (what hyper's path does).
        let hop = (hop_by_hop(name) && !(framing == Framing::Chunked && eq(name, "transfer-encoding")))
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
            // A sender must not send both (RFC 9112 §6.2); the coding frames the message. A
            // length is sent once, as the number it framed the body with (not `5, 5`).
            || (eq(name, "content-length") && (chunked.is_some() || matches!(framing, Framing::Length(_))));
        if !hop {
            put_field(out, name.as_bytes(), field.value);
        }
    }
    if let Framing::Length(n) = framing {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if framing == Framing::UntilClose || request.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let service_closes = close || (version == 0 && !keep_alive);
    Ok(Some(ResponsePlan { head_len, framing, service_closes }))
}
