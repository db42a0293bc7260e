//! Forwarding one request to a service on `127.0.0.1:<port>` over HTTP/1.1, whatever the client
//! spoke. Bodies stream through in both directions as hyper frames (nothing is collected), so
//! SSE and large uploads or downloads pass with bounded memory. WebSocket upgrades pass
//! through: HTTP/1.1 `Upgrade` as is, and HTTP/2 extended CONNECT (RFC 8441) with `:protocol
//! websocket` as an HTTP/1.1 upgrade to the service; after the switch, bytes are copied both
//! ways.
//!
//! The fields a service sees (both paths; [`super::h1`] uses [`dropped_request_field`] and
//! [`Forwarded`] too): `Host` is the authority the request was routed by (the absolute-form
//! target's or HTTP/2's `:authority` when there is one, RFC 9112 §3.2.2, RFC 9113 §8.3.1);
//! hop-by-hop fields (RFC 9110 §7.6.1) and those `Connection` names are dropped, except `Host`
//! and `Content-Length`, which `Connection` cannot remove; the client's `X-Forwarded-For`,
//! `-Proto`, `-Host` and `Forwarded` are dropped and locald's own set, since locald is the
//! first hop (a client's value would be believed as if locald had vouched for it); fields whose
//! name has `_` are dropped (nginx's `underscores_in_headers off`: CGI-style servers fold `_`
//! and `-`, so `X_Forwarded_For` could stand in for the real one).

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::Body;
use super::activity::{HoldBody, TimedBody};
use super::upstream::{UpstreamError, Upstreams};

/// Who asked, and over what.
#[derive(Clone, Copy)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("{0}")]
    Backend(#[from] UpstreamError),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("the request body paused too long")]
    BodyTimeout,
}

impl ForwardError {
    /// The most specific cause, for the page (e.g. "Connection refused (os error 111)").
    pub(crate) fn cause(&self) -> String {
        let mut source: &dyn std::error::Error = self;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    }
}

// Parsed once: looking a field up by a string name parses the name on every request.
pub(crate) const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the fields that describe one connection, not the message: the fixed list of RFC 9110
/// §7.6.1 and every field `Connection` names, but never `Host` or `Content-Length` (a client's
/// `Connection: host` must not take the routed name away from the service).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != HOST && *name != CONTENT_LENGTH)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether a client's request field is left out of what the service gets: hop-by-hop ones of
/// the fixed list, those locald sets itself (`X-Forwarded-*`, `Forwarded`) and any name with
/// `_`. The fast path must drop exactly these too.
pub(crate) fn dropped_request_field(name: &str) -> bool {
    name.contains('_')
        || HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_str()))
        || [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &FORWARDED]
            .iter()
            .any(|own| name.eq_ignore_ascii_case(own.as_str()))
}

/// This hop's `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) values; no
/// earlier hop's are kept. One formatter for hyper's path and [`super::h1`]'s, so the service
/// sees the same fields whichever path its request took.
pub(crate) struct Forwarded {
    pub xff: String,
    pub proto: &'static str,
    pub forwarded: String,
}

impl Forwarded {
    pub(crate) fn new(peer: Peer, host: &str) -> Self {
        use std::fmt::Write;
        let ip = peer.addr.ip();
        let proto = if peer.tls { "https" } else { "http" };
        let mut forwarded = String::new();
        match ip {
            std::net::IpAddr::V6(ip) => write!(forwarded, "for=\"[{ip}]\";proto={proto}"),
            std::net::IpAddr::V4(ip) => write!(forwarded, "for={ip};proto={proto}"),
        }
        .unwrap_or_default();
        // A quote or backslash could end the quoted string early (RFC 7239 §4).
        forwarded.push_str(";host=\"");
        forwarded.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
        forwarded.push('"');
        Forwarded { xff: ip.to_string(), proto, forwarded }
    }
}

/// The request fields the service gets (see the module's documentation): `authority` is the
/// one the request was routed by.
pub(crate) fn request_headers(headers: &mut HeaderMap, authority: &HeaderValue, peer: Peer) {
    strip_hop_by_hop(headers);
    // The proxy answers `Expect: 100-continue` itself when it starts reading the body.
    headers.remove(EXPECT);
    let dropped: Vec<HeaderName> =
        headers.keys().filter(|name| dropped_request_field(name.as_str())).cloned().collect();
    for name in dropped {
        headers.remove(name);
    }
    headers.insert(HOST, authority.clone());
    let host = authority.to_str().unwrap_or_default();
    let values = Forwarded::new(peer, host);
    insert(headers, X_FORWARDED_FOR, values.xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(values.proto));
    headers.insert(X_FORWARDED_HOST, authority.clone());
    insert(headers, FORWARDED, values.forwarded);
}

/// Sets a field to a value made for it (no copy; left out if not a valid field value).
fn insert(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// An HTTP/1.1 `Connection: upgrade` + `Upgrade: …` request.
fn h1_upgrade(req: &Request<Incoming>) -> Option<HeaderValue> {
    let asks = req.version() <= Version::HTTP_11
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(UPGRADE).cloned()).flatten()
}

/// An HTTP/2 extended CONNECT (RFC 8441): `:method CONNECT` with a `:protocol`.
fn extended_connect(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.method() != Method::CONNECT {
        return None;
    }
    let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
    HeaderValue::from_str(protocol.as_str()).ok()
}

/// Why locald answers a request itself instead of forwarding it, if it does: more than one
/// `Host` (RFC 9112 §3.2: 400), a CONNECT that is not an extended CONNECT for `websocket` (locald
/// is no forward proxy, and opens no tunnel of another protocol: 501).
pub(crate) fn refusal(req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
    if req.headers().get_all(HOST).iter().nth(1).is_some() {
        return Some((StatusCode::BAD_REQUEST, "The request has more than one Host field."));
    }
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<hyper::ext::Protocol>() {
            None => Some((StatusCode::NOT_IMPLEMENTED, "locald is not a forward proxy: no CONNECT tunnels.")),
            Some(p) if !p.as_str().eq_ignore_ascii_case("websocket") => {
                Some((StatusCode::NOT_IMPLEMENTED, "Extended CONNECT is for WebSockets only."))
            }
            Some(_) => None,
        };
    }
    None
}

/// The authority a request is routed by, and forwarded with as `Host`: the absolute-form
/// target's or HTTP/2's `:authority` when it has one (RFC 9112 §3.2.2, RFC 9113 §8.3.1), else
/// its `Host`.
pub(crate) fn routed_authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// What a forwarded request keeps until its response is sent or its tunnel closes.
pub(crate) type Hold = Box<dyn Send + Sync + Unpin>;

/// Sends `req` to the service on `port` over one of the client connection's `upstreams` and
/// returns its answer, streaming. `authority` is what the request was routed by; a request body
/// may pause `body_timeout` at most.
pub(crate) async fn forward(
    upstreams: &Upstreams,
    mut req: Request<Incoming>,
    authority: &HeaderValue,
    port: u16,
    peer: Peer,
    hold: Hold,
    body_timeout: Duration,
) -> Result<Response<Body>, ForwardError> {
    let h1_protocol = h1_upgrade(&req);
    let h2_protocol = if h1_protocol.is_none() { extended_connect(&req) } else { None };
    let protocol = h1_protocol.clone().or(h2_protocol.clone());
    let client_upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    request_headers(&mut headers, authority, peer);
    if let Some(protocol) = &protocol {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
        if h2_protocol.is_some() {
            // RFC 8441 drops the key/accept handshake; the HTTP/1.1 service still wants one.
            insert(&mut headers, HeaderName::from_static("sec-websocket-key"), websocket_key());
        }
    }
    // Origin-form, as a service expects from a client that is not a proxy (RFC 9112 §3.2.1).
    let uri = parts.uri.path_and_query().cloned().map_or_else(|| Uri::from_static("/"), Uri::from);
    let body = TimedBody::new(body, body_timeout);
    let timed_out = body.timed_out.clone();
    let (method, body) = if h2_protocol.is_some() {
        (Method::GET, Empty::new().map_err(|never| match never {}).boxed())
    } else {
        (parts.method, body.boxed())
    };
    let mut out = Request::builder().method(method).uri(uri).version(Version::HTTP_11).body(body)?;
    *out.headers_mut() = headers;

    let mut response = match upstreams.send(port, out).await {
        Ok(response) => response,
        Err(_) if timed_out.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(ForwardError::BodyTimeout);
        }
        Err(e) => return Err(e.into()),
    };

    if let (Some(client_upgrade), Some(protocol)) = (client_upgrade, protocol)
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            // The tunnel is an open request of the client connection while it lasts.
            let _hold = hold;
            let (Ok(client), Ok(service)) = (client_upgrade.await, backend_upgrade.await) else { return };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(service)).await;
        });
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if h1_protocol.is_some() {
            parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol);
        } else {
            // An accepted extended CONNECT is a 2xx, without the HTTP/1.1 handshake's accept.
            parts.status = StatusCode::OK;
            parts.headers.remove("sec-websocket-accept");
        }
        return Ok(Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed()));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::default();
    let body = HoldBody { inner: body.map_err(Into::into), _hold: hold };
    Ok(Response::from_parts(parts, BodyExt::boxed(body)))
}

/// 16 unpredictable-enough bytes, base64: the key only has to differ between handshakes.
fn websocket_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go_including_those_connection_names() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            ("content-type", "text/plain"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn forwarded_fields_are_locald_s_own_and_a_quote_cannot_end_the_host_early() {
        let mut headers = HeaderMap::new();
        let peer = Peer { addr: "[::1]:5000".parse().unwrap(), tls: true };
        request_headers(&mut headers, &HeaderValue::from_static("shop.localhost"), peer);
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.localhost");
        assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=https;host=\"shop.localhost\"");

        // RFC 7239 §4.
        let mut headers = HeaderMap::new();
        let peer = Peer { addr: "127.0.0.1:5000".parse().unwrap(), tls: false };
        request_headers(&mut headers, &HeaderValue::from_static("a\"b\\c.localhost"), peer);
        assert_eq!(headers["forwarded"], "for=127.0.0.1;proto=http;host=\"abc.localhost\"");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn websocket_keys_are_16_random_bytes_in_base64() {
        use base64::Engine;
        let key = websocket_key();
        assert_eq!(key.len(), 24);
        let bytes = base64::engine::general_purpose::STANDARD.decode(&key).expect("base64");
        assert_eq!(bytes.len(), 16, "RFC 6455 4.1: a 16-byte nonce");
        assert_ne!(websocket_key(), key, "a new key per handshake");
    }
}
