//! Hyper's path attacked in-process: a proxy on 127.0.0.1 with short limits (no project routes,
//! so requests for `localhost` get the index page), raw TLS and HTTP/2 clients, and for
//! [`forward::forward`] a raw-socket service that records every byte it received.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use locald_ca::ca::LocalCa;

const PEER: Peer =
    Peer { addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000), tls: false };

pub(super) fn short_limits() -> limits::Limits {
    limits::Limits {
        header: Duration::from_millis(400),
        idle: Duration::from_millis(800),
        body: Duration::from_millis(300),
        hold: Duration::from_millis(300),
        ..limits::Limits::for_nofile(4096)
    }
}

pub(super) struct TestProxy {
    https: SocketAddr,
    pub(super) http: SocketAddr,
    ca_pem: String,
    pub(super) shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

pub(super) async fn start(limits: limits::Limits) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), &[]).unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let routes = Arc::new(Routes::default());
    let resolver = Arc::new(tls::CertResolver::new(LeafCache::new(ca), routes.clone()));
    let acceptor = TlsAcceptor::from(tls::server_config(resolver).unwrap());
    let status = ProxyStatus {
        https_port: 0,
        http_port: 0,
        via_shim: false,
        note: None,
        ipv6_note: None,
        ca: dir.path().join("ca.pem"),
    };
    let shared = Arc::new(Shared::new(routes, status, limits));
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (https_addr, http_addr) = (https.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(accept(https, shared.clone(), Some(acceptor)));
    tokio::spawn(accept(http, shared.clone(), None));
    TestProxy { https: https_addr, http: http_addr, ca_pem, shared, _dir: dir }
}

impl TestProxy {
    /// A TLS connection for `sni`, offering `alpn`.
    async fn tls(&self, sni: &str, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(self.https).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        stream
    }

    /// An HTTP/2 client over a TLS connection for `sni`.
    pub(super) async fn h2(
        &self,
        sni: &str,
    ) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
        let io = TokioIo::new(self.tls(sni, b"h2").await);
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
        (
            sender,
            tokio::spawn(async move {
                let _ = connection.await;
            }),
        )
    }
}

/// Reads until the peer closes; `None` if it is still open after `within`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut bytes)).await {
        Ok(_) => Some(bytes),
        Err(_) => None,
    }
}

/// HTTP/2 frame types in `bytes` (after the server's part of the connection preface).
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    types
}

const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const GOAWAY: u8 = 7;

#[tokio::test]
async fn an_h2_connection_that_sends_no_preface_is_closed() {
    let proxy = start(short_limits()).await;
    let mut stream = proxy.tls("localhost", b"h2").await;
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an h2 connection without a preface still open after 5 s");
    assert_eq!(proxy.shared.admission.admitted(), 0, "its place is given up");
}

#[tokio::test]
async fn an_h2_connection_that_idles_after_settings_gets_goaway_and_is_closed() {
    let proxy = start(short_limits()).await;
    let mut stream = proxy.tls("localhost", b"h2").await;
    stream.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let bytes = closed_within(&mut stream, Duration::from_secs(5)).await.expect("still open after 5 s");
    assert!(frame_types(&bytes).contains(&GOAWAY), "no GOAWAY: {bytes:?}");
}

#[tokio::test]
async fn an_h2_connection_is_closed_once_idle_after_its_requests_and_not_before() {
    let proxy = start(short_limits()).await;
    let (mut sender, connection) = proxy.h2("localhost").await;
    let started = Instant::now();
    for _ in 0..3 {
        // Requests 300 ms apart: each restarts the idle time (800 ms), past the first-request
        // limit (400 ms) in total.
        let response = sender.send_request(Request::get("https://localhost/").body(Empty::new()).unwrap());
        let response = response.await.expect("answered");
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!connection.is_finished(), "closed while in use");
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("still open 5 s after its last request")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1300), "closed before it was idle");
}

#[tokio::test]
async fn a_flood_of_idle_connections_beyond_the_cap_does_not_lock_out_a_request() {
    let limits = limits::Limits { max_clients: 8, ..limits::Limits::for_nofile(4096) };
    let proxy = start(limits).await;
    let mut flood = Vec::new();
    for _ in 0..24 {
        let mut stream = proxy.tls("localhost", b"h2").await;
        stream.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        flood.push(stream);
    }
    assert!(proxy.shared.admission.admitted() <= 8, "{} admitted", proxy.shared.admission.admitted());
    let (mut sender, _connection) = proxy.h2("localhost").await;
    let response = sender.send_request(Request::get("https://localhost/").body(Empty::new()).unwrap());
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("answered in time");
    assert!(response.is_ok(), "{response:?}");
    // The oldest of the flood were closed to make room.
    let first = closed_within(&mut flood[0], Duration::from_secs(2)).await;
    assert!(first.is_some(), "the least recently active idle connection is still open");
}

/// Sends `request` on the plain HTTP listener (or TLS for `sni`) and returns the status line.
async fn status_of(proxy: &TestProxy, request: &[u8], sni: Option<&str>) -> String {
    async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &[u8]) -> String {
        stream.write_all(request).await.unwrap();
        let mut bytes = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut bytes)).await.unwrap().unwrap();
        String::from_utf8_lossy(&bytes[..n]).lines().next().unwrap_or_default().to_owned()
    }
    match sni {
        Some(sni) => exchange(proxy.tls(sni, b"http/1.1").await, request).await,
        None => exchange(TcpStream::connect(proxy.http).await.unwrap(), request).await,
    }
}

#[tokio::test]
async fn two_host_fields_and_connect_tunnels_are_refused() {
    let proxy = start(short_limits()).await;
    let two_hosts = b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\n\r\n";
    assert_eq!(status_of(&proxy, two_hosts, None).await, "HTTP/1.1 400 Bad Request");
    let connect = b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n";
    assert_eq!(status_of(&proxy, connect, None).await, "HTTP/1.1 501 Not Implemented");

    // HTTP/2: extended CONNECT for anything but WebSockets, and plain CONNECT.
    let (mut sender, _connection) = proxy.h2("localhost").await;
    let warm = sender.send_request(Request::get("https://localhost/").body(Empty::new()).unwrap()).await;
    assert!(warm.is_ok(), "{warm:?}");
    let tunnel = Request::connect("https://localhost/")
        .extension(hyper::ext::Protocol::from_static("h2c"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(tunnel).await.expect("answered");
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    let plain = Request::connect("localhost:443").body(Empty::new()).unwrap();
    let response = sender.send_request(plain).await.expect("answered");
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn a_request_for_another_name_than_the_tls_one_is_misdirected() {
    let proxy = start(short_limits()).await;
    // HTTP/1.1 over TLS (through the fast path's hand-over) and HTTP/2.
    let other = b"GET / HTTP/1.1\r\nHost: other.localhost\r\n\r\n";
    assert_eq!(status_of(&proxy, other, Some("localhost")).await, "HTTP/1.1 421 Misdirected Request");
    let same = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_ne!(status_of(&proxy, same, Some("localhost")).await, "HTTP/1.1 421 Misdirected Request");
    let (mut sender, _connection) = proxy.h2("localhost").await;
    let response = sender.send_request(Request::get("https://other.localhost/").body(Empty::new()).unwrap());
    assert_eq!(response.await.expect("answered").status(), StatusCode::MISDIRECTED_REQUEST);
}

/// A service that records every byte each connection sent it, answering the first request
/// head on a connection with a short 200 when `answer` is set.
pub(super) fn recorder(answer: bool) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let index = {
                let mut all = record.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut answered = !answer;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk) {
                    let mut all = record.lock().unwrap();
                    all[index].extend_from_slice(&chunk[..n]);
                    if !answered && all[index].windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    (port, received)
}

/// Serves one client connection (HTTP/1.1) with hyper's server, each request forwarded to the
/// service on `port` as [`handle`] forwards it.
fn hyper_forwarding(port: u16) -> tokio::io::DuplexStream {
    let (client, server) = tokio::io::duplex(1 << 16);
    let service = service_fn(move |req: Request<Incoming>| async move {
        let upstreams = Upstreams::default();
        let authority = HeaderValue::from_str(forward::routed_authority(&req).unwrap()).unwrap();
        let limit = short_limits().body;
        let response = match forward::forward(&upstreams, req, &authority, port, PEER, Box::new(()), limit)
            .await
        {
            Ok(response) => response,
            Err(forward::ForwardError::BodyTimeout) => pages::refused(StatusCode::REQUEST_TIMEOUT, "timeout"),
            Err(e) => pages::refused(StatusCode::BAD_GATEWAY, &e.cause()),
        };
        Ok::<_, Infallible>(response)
    });
    tokio::spawn(async move {
        let _ =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).await;
    });
    client
}

#[tokio::test]
async fn the_service_gets_the_routed_host_and_only_locald_s_forwarded_fields() {
    let (port, received) = recorder(true);
    let mut client = hyper_forwarding(port);
    // Routed by the absolute-form target; every field that could speak for the client's host,
    // address or scheme is forged, `Connection` names Host, and `Forwarded` has an open quote.
    client
        .write_all(
            b"GET http://t.localhost/x HTTP/1.1\r\nHost: evil.com\r\nConnection: host, x-forwarded-host\r\n\
              X-Forwarded-Host: evil.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
              Forwarded: for=6.6.6.6;proto=https;host=\"x\r\nX_Forwarded_Proto: https\r\n\
              X_Forwarded_Host: evil.com\r\nX_Forwarded_For: 6.6.6.6\r\nAccept: */*\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answer)).await.unwrap().unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", String::from_utf8_lossy(&answer[..n]));
    let seen = String::from_utf8(received.lock().unwrap().concat()).unwrap().to_ascii_lowercase();
    let fields: Vec<&str> = seen.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let mut expected = vec![
        "accept: */*",
        "host: t.localhost",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: t.localhost",
        "forwarded: for=127.0.0.1;proto=http;host=\"t.localhost\"",
    ];
    let mut got = fields.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected, "the service saw:\n{seen}");
    assert!(seen.starts_with("get /x http/1.1\r\n"), "origin-form: {seen}");
    assert!(!seen.contains("evil") && !seen.contains("6.6.6.6"), "{seen}");
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_cut_and_answered_408() {
    let (port, received) = recorder(false);
    let mut client = hyper_forwarding(port);
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: t.localhost\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answer))
        .await
        .expect("no answer 5 s after the body stopped")
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&answer[..n]));
    // The service's connection was closed with the body short: never a complete request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = received.lock().unwrap().concat();
    assert!(seen.ends_with(b"\r\n\r\nabc"), "{:?}", String::from_utf8_lossy(&seen));
}
