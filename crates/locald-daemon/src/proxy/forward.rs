//! Forwarding one request to a service on 127.0.0.1:<port> over HTTP/1.1, whatever the client
//! spoke. Bodies stream through in both directions as hyper frames (nothing is collected), so
//! SSE and large uploads or downloads pass with bounded memory. Hop-by-hop headers (RFC 9110
//! §7.6.1) are dropped both ways; `X-Forwarded-*` and `Forwarded` (RFC 7239) are set. WebSocket
//! upgrades pass through: HTTP/1.1 `Upgrade` as is, and HTTP/2 extended CONNECT (RFC 8441) as an
//! HTTP/1.1 upgrade to the service; after the switch, bytes are copied both ways.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::Body;
use super::upstream::{UpstreamError, Upstreams};

/// Who asked, and over what.
#[derive(Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Backend(#[from] UpstreamError),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
}

impl ForwardError {
    /// The most specific cause, for the page (e.g. "Connection refused (os error 111)").
    pub fn cause(&self) -> String {
        let mut source: &dyn std::error::Error = self;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    }
}

// Parsed once: looking a field up by a string name parses the name on every request.
pub const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Removes the fields that describe one connection, not the message: the fixed list of RFC 9110
/// §7.6.1 and every field `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// This hop's `X-Forwarded-For` and `Forwarded` values, each appended to the earlier hops' value
/// when there is one, and its `X-Forwarded-Proto`. One formatter for hyper's path and
/// [`super::h1`]'s, so the service sees the same fields whichever path its request took.
pub struct Forwarded {
    pub xff: String,
    pub proto: &'static str,
    pub forwarded: String,
}

impl Forwarded {
    pub fn new(peer: Peer, earlier_xff: Option<&str>, earlier: Option<&str>, host: Option<&str>) -> Self {
        use std::fmt::Write;
        let ip = peer.addr.ip();
        let proto = if peer.tls { "https" } else { "http" };
        let mut xff = String::new();
        if let Some(earlier) = earlier_xff {
            let _ = write!(xff, "{earlier}, ");
        }
        let _ = write!(xff, "{ip}");
        let mut forwarded = String::new();
        if let Some(earlier) = earlier {
            let _ = write!(forwarded, "{earlier}, ");
        }
        match ip {
            std::net::IpAddr::V6(ip) => write!(forwarded, "for=\"[{ip}]\";proto={proto}"),
            std::net::IpAddr::V4(ip) => write!(forwarded, "for={ip};proto={proto}"),
        }
        .unwrap_or_default();
        if let Some(host) = host {
            // A quote or backslash could end the quoted string early (RFC 7239 §4).
            forwarded.push_str(";host=\"");
            forwarded.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
            forwarded.push('"');
        }
        Forwarded { xff, proto, forwarded }
    }
}

/// `X-Forwarded-For` (appended), `-Proto`, `-Host` and `Forwarded` (appended).
pub fn add_forwarded(headers: &mut HeaderMap, peer: Peer, host: Option<&HeaderValue>) {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host_text = host.and_then(|v| v.to_str().ok());
    let values = Forwarded::new(peer, text(&X_FORWARDED_FOR), text(&FORWARDED), host_text);
    insert(headers, X_FORWARDED_FOR, values.xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(values.proto));
    if let (Some(value), Some(_)) = (host, host_text) {
        headers.insert(X_FORWARDED_HOST, value.clone());
    }
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

/// Sends `req` to the service on `port` over one of the client connection's `upstreams` and
/// returns its answer, streaming.
pub async fn forward(
    upstreams: &Upstreams,
    mut req: Request<Incoming>,
    port: u16,
    peer: Peer,
) -> Result<Response<Body>, ForwardError> {
    let h1_protocol = h1_upgrade(&req);
    let h2_protocol = if h1_protocol.is_none() { extended_connect(&req) } else { None };
    let protocol = h1_protocol.clone().or(h2_protocol.clone());
    let client_upgrade = protocol.is_some().then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // The proxy answers `Expect: 100-continue` itself when it starts reading the body.
    headers.remove(EXPECT);
    if !headers.contains_key(HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(HOST, value);
    }
    let host = headers.get(HOST).cloned();
    add_forwarded(&mut headers, peer, host.as_ref());
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
    let (method, body) = if h2_protocol.is_some() {
        (Method::GET, Empty::new().map_err(|never| match never {}).boxed())
    } else {
        (parts.method, body.boxed())
    };
    let mut out = Request::builder().method(method).uri(uri).version(Version::HTTP_11).body(body)?;
    *out.headers_mut() = headers;

    let mut response = upstreams.send(port, out).await?;

    if let (Some(client_upgrade), Some(protocol)) = (client_upgrade, protocol)
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
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
    Ok(Response::from_parts(parts, body.boxed()))
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
    fn forwarded_fields_are_appended_to_earlier_hops() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        let peer = Peer { addr: "[::1]:5000".parse().unwrap(), tls: true };
        add_forwarded(&mut headers, peer, Some(&HeaderValue::from_static("shop.localhost")));
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7, ::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.localhost");
        assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=https;host=\"shop.localhost\"");

        // A quote in the host cannot end the quoted string early (RFC 7239 §4).
        let mut headers = HeaderMap::new();
        let peer = Peer { addr: "127.0.0.1:5000".parse().unwrap(), tls: false };
        add_forwarded(&mut headers, peer, Some(&HeaderValue::from_static("a\"b\\c.localhost")));
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
