//! Forwarding one request to a service on 127.0.0.1:<port> over HTTP/1.1, whatever the client
//! spoke. Bodies stream through in both directions as hyper frames (nothing is collected), so
//! SSE and large uploads or downloads pass with bounded memory. Hop-by-hop headers (RFC 9110
//! §7.6.1) are dropped both ways; `X-Forwarded-*` and `Forwarded` (RFC 7239) are set. WebSocket
//! upgrades pass through: HTTP/1.1 `Upgrade` as is, and HTTP/2 extended CONNECT (RFC 8441) as an
//! HTTP/1.1 upgrade to the service; after the switch, bytes are copied both ways.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::Body;

/// Pooled keep-alive HTTP/1.1 connections to the services.
pub type Backend = Client<HttpConnector, Body>;

pub fn backend() -> Backend {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        // The client's own Host goes through; the service should see the name it was asked by.
        .set_host(false)
        .build(connector)
}

/// Who asked, and over what.
#[derive(Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}")]
    Backend(#[from] hyper_util::client::legacy::Error),
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

const HOP_BY_HOP: [&str; 6] =
    ["connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"];

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
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For` (appended), `-Proto`, `-Host` and `Forwarded` (appended).
pub fn add_forwarded(headers: &mut HeaderMap, peer: Peer, host: Option<&str>) {
    let ip = peer.addr.ip();
    let proto = if peer.tls { "https" } else { "http" };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {ip}"),
        None => ip.to_string(),
    };
    insert(headers, "x-forwarded-for", &xff);
    insert(headers, "x-forwarded-proto", proto);
    let node = if ip.is_ipv6() { format!("\"[{ip}]\"") } else { ip.to_string() };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = host {
        insert(headers, "x-forwarded-host", host);
        element.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    let forwarded = match headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    insert(headers, "forwarded", &forwarded);
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
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

/// Sends `req` to the service on `port` and returns its answer, streaming.
pub async fn forward(
    backend: &Backend,
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
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    add_forwarded(&mut headers, peer, host.as_deref());
    if let Some(protocol) = &protocol {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
        if h2_protocol.is_some() {
            // RFC 8441 drops the key/accept handshake; the HTTP/1.1 service still wants one.
            insert(&mut headers, "sec-websocket-key", &websocket_key());
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (method, body) = if h2_protocol.is_some() {
        (Method::GET, Empty::new().map_err(|never| match never {}).boxed())
    } else {
        (parts.method, body.boxed())
    };
    let mut out = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .version(Version::HTTP_11)
        .body(body)?;
    *out.headers_mut() = headers;

    let mut response = backend.request(out).await?;

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
        add_forwarded(&mut headers, peer, Some("shop.localhost"));
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7, ::1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "shop.localhost");
        assert_eq!(headers["forwarded"], "for=\"[::1]\";proto=https;host=\"shop.localhost\"");
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
