//! Test helper for the proxy: both ends of a request through locald's proxy, as one static
//! binary, so it also runs where neither curl nor Python exist (the VM harness's busybox guest).
//! The privileged proxy suites run its backend too.
//!
//! proxy-probe serve                          the backend service, on 127.0.0.1:$PORT:
//!     GET / "hello from $NAME"; GET /headers the request's fields, one "name: value" a line;
//!     GET /sse "data: first", then "data: last" after GET /release; PUT /upload answers the
//!     byte count; GET /ws echoes WebSocket messages.
//! proxy-probe get    --cacert CA URL [--h1]  prints `alpn=`, `status=`, then the body
//! proxy-probe ws     --cacert CA URL [--h2]  WebSocket echo round trip (HTTP/1.1 Upgrade, or
//!                                            RFC 8441 extended CONNECT over HTTP/2)
//! proxy-probe sse    --cacert CA URL         the first event arrives before the stream ends
//! proxy-probe upload --cacert CA URL MIB     streams MIB MiB, expects the service's count back
//! proxy-probe refused --cacert CA HOST       a TLS handshake for HOST on 443 fails
//! proxy-probe resolve NAME                   the system resolver's addresses (exit 1: none)
//!
//! Names resolve through the system resolver (so, in the guest, through the `/etc/hosts` block
//! locald keeps); every check prints `key=value` lines and exits non-zero on a mismatch.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use locald_tests::proxy::{client_config, websocket_echo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;
type Failure = Box<dyn std::error::Error>;

/// Longest any single check may take; a hang is a failure with a message, not a stuck scenario.
const DEADLINE: Duration = Duration::from_secs(90);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("serve") => return serve().await,
            Some("resolve") => {
                let name = args.get(1).ok_or("resolve needs NAME")?;
                for address in resolve(name, 0)? {
                    println!("address={}", address.ip());
                }
                return Ok(());
            }
            _ => {}
        }
        match tokio::time::timeout(DEADLINE, client(&args)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", DEADLINE.as_secs()).into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &[String]) -> Result<(), Failure> {
    let mut args = args.to_vec();
    let flag = |args: &mut Vec<String>, name: &str| {
        let at = args.iter().position(|a| a == name);
        at.map(|i| args.remove(i)).is_some()
    };
    let (h1, h2) = (flag(&mut args, "--h1"), flag(&mut args, "--h2"));
    let ca = match args.iter().position(|a| a == "--cacert") {
        Some(i) if i + 1 < args.len() => {
            args.remove(i);
            args.remove(i)
        }
        _ => return Err("--cacert CA is required".into()),
    };
    let [mode, target, rest @ ..] = args.as_slice() else {
        return Err("usage: proxy-probe MODE --cacert CA URL|HOST [...]".into());
    };
    let tls = Tls::new(&ca)?;
    match mode.as_str() {
        "get" => get(&tls, target, if h1 { ALPN_H1 } else { ALPN_BOTH }).await,
        "ws" if h2 => websocket_h2(&tls, target).await,
        "ws" => websocket_h1(&tls, target).await,
        "sse" => sse(&tls, target).await,
        "upload" => {
            let mib: u64 = rest.first().ok_or("upload needs MIB")?.parse()?;
            upload(&tls, target, mib).await
        }
        "refused" => refused(&tls, target).await,
        other => Err(format!("unknown mode {other}").into()),
    }
}

const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALPN_H1: &[&[u8]] = &[b"http/1.1"];
const ALPN_H2: &[&[u8]] = &[b"h2"];

/// Trusts only the given CA, as `curl --cacert` does.
struct Tls {
    ca_pem: Vec<u8>,
}

impl Tls {
    fn new(ca: &str) -> Result<Self, Failure> {
        let ca_pem = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
        client_config(&ca_pem, &[])?;
        Ok(Self { ca_pem })
    }

    fn config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, Failure> {
        client_config(&self.ca_pem, alpn)
    }

    async fn connect(&self, host: &str, port: u16, alpn: &[&[u8]]) -> Result<TlsStream<TcpStream>, Failure> {
        let addresses = resolve(host, port)?;
        // Each address in turn, as curl does: names often resolve to ::1 and 127.0.0.1.
        let mut tcp = Err(format!("{host} has no address"));
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    println!("address={}", address.ip());
                    tcp = Ok(stream);
                    break;
                }
                Err(e) => tcp = Err(format!("connect {address}: {e}")),
            }
        }
        let tcp = tcp?;
        let name = ServerName::try_from(host.to_owned())?;
        let stream = tokio_rustls::TlsConnector::from(self.config(alpn)?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        Ok(stream)
    }
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    Ok((host, port).to_socket_addrs().map_err(|e| format!("resolve {host}: {e}"))?.collect())
}

fn parse(url: &str) -> Result<(Uri, String, u16), Failure> {
    let uri: Uri = url.parse()?;
    let host = uri.host().ok_or("URL without a host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    Ok((uri, host, port))
}

/// One connection, with the protocol ALPN chose: a request sender either way.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    async fn open(tls: &Tls, host: &str, port: u16, alpn: &[&[u8]]) -> Result<Self, Failure> {
        let stream = tls.connect(host, port, alpn).await?;
        let negotiated = stream.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        println!("alpn={}", negotiated.as_deref().unwrap_or("none"));
        let io = TokioIo::new(stream);
        if negotiated.as_deref() == Some("h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Ok(Self::H2(sender))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection.with_upgrades());
            Ok(Self::H1(sender))
        }
    }

    async fn send(&mut self, mut request: Request<Body>, host: &str) -> Result<Response<Incoming>, Failure> {
        let response = match self {
            Self::H2(sender) => sender.send_request(request).await?,
            Self::H1(sender) => {
                // HTTP/1.1 wants origin-form and a Host field.
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                *request.uri_mut() = path.parse()?;
                request.headers_mut().insert(hyper::header::HOST, host.parse()?);
                sender.send_request(request).await?
            }
        };
        Ok(response)
    }
}

fn empty() -> Body {
    Empty::new().boxed()
}

async fn get(tls: &Tls, url: &str, alpn: &[&[u8]]) -> Result<(), Failure> {
    let (uri, host, port) = parse(url)?;
    let mut sender = Sender::open(tls, &host, port, alpn).await?;
    let response = sender.send(Request::get(uri).body(empty())?, &host).await?;
    println!("status={}", response.status().as_u16());
    let body = response.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// The shared echo round trip, then a clean close.
async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<(), Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    websocket_echo(ws).await?;
    ws.close(None).await?;
    println!("websocket=echoed");
    Ok(())
}

async fn websocket_h1(tls: &Tls, url: &str) -> Result<(), Failure> {
    let (_, host, port) = parse(url)?;
    let stream = tls.connect(&host, port, ALPN_H1).await?;
    let wss = url.replacen("https://", "wss://", 1);
    let (mut ws, response) = tokio_tungstenite::client_async(wss, stream).await?;
    println!("status={}", response.status().as_u16());
    echo(&mut ws).await
}

async fn websocket_h2(tls: &Tls, url: &str) -> Result<(), Failure> {
    let (uri, host, port) = parse(url)?;
    let mut sender = Sender::open(tls, &host, port, ALPN_H2).await?;
    let Sender::H2(h2) = &mut sender else { return Err("HTTP/2 was not negotiated".into()) };
    // The server's SETTINGS (which must allow extended CONNECT) have arrived once a plain request
    // was answered.
    let root = format!("https://{host}/").parse::<Uri>()?;
    h2.send_request(Request::get(root).body(empty())?).await?;
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header("sec-websocket-version", "13")
        .body(empty())?;
    connect.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let response = h2.send_request(connect).await?;
    println!("status={}", response.status().as_u16());
    if response.status() != StatusCode::OK {
        return Err("extended CONNECT refused".into());
    }
    let upgraded = hyper::upgrade::on(response).await?;
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    echo(&mut ws).await
}

/// GET URL (the backend's /sse): the first event must arrive while the service still holds the
/// stream open; then /release on the same connection lets it end with the last one.
async fn sse(tls: &Tls, url: &str) -> Result<(), Failure> {
    let (uri, host, port) = parse(url)?;
    let mut sender = Sender::open(tls, &host, port, ALPN_H2).await?;
    let response = sender.send(Request::get(uri).body(empty())?, &host).await?;
    println!("status={}", response.status().as_u16());
    let mut body = response.into_body();
    let mut seen = String::new();
    while !seen.contains("data: first\n\n") {
        let frame = body.frame().await.ok_or("the stream ended before the first event")??;
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    println!("first-event=before-end");
    let release = format!("https://{host}/release").parse::<Uri>()?;
    let released = sender.send(Request::get(release).body(empty())?, &host).await?;
    released.into_body().collect().await?;
    let rest = body.collect().await?.to_bytes();
    seen.push_str(&String::from_utf8_lossy(&rest));
    if !seen.ends_with("data: last\n\n") {
        return Err(format!("unexpected stream: {seen:?}").into());
    }
    println!("last-event=after-release");
    Ok(())
}

/// PUT of MIB MiB made on the fly (nothing of it held in memory at once).
async fn upload(tls: &Tls, url: &str, mib: u64) -> Result<(), Failure> {
    let (uri, host, port) = parse(url)?;
    let mut sender = Sender::open(tls, &host, port, ALPN_BOTH).await?;
    let chunk = Bytes::from(vec![b'u'; 1 << 20]);
    let chunks =
        futures_util::stream::iter((0..mib).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let request = Request::put(uri)
        .header("content-length", (mib << 20).to_string())
        .body(BodyExt::boxed(StreamBody::new(chunks)))?;
    let response = sender.send(request, &host).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let count = String::from_utf8_lossy(&body).trim().to_owned();
    println!("uploaded={count}");
    if count != (mib << 20).to_string() {
        return Err(format!("the service counted {count} bytes of {}", mib << 20).into());
    }
    Ok(())
}

/// Offers HOST as the server name to 127.0.0.1:443: the connection must be accepted and the TLS
/// handshake then refused (a resolver or connection failure would prove nothing).
async fn refused(tls: &Tls, host: &str) -> Result<(), Failure> {
    let tcp =
        TcpStream::connect(("127.0.0.1", 443)).await.map_err(|e| format!("connect 127.0.0.1:443: {e}"))?;
    let name = ServerName::try_from(host.to_owned())?;
    match tokio_rustls::TlsConnector::from(tls.config(ALPN_BOTH)?).connect(name, tcp).await {
        Ok(_) => Err(format!("the proxy completed a TLS handshake for {host}").into()),
        Err(e) => {
            println!("refused={e}");
            Ok(())
        }
    }
}

/// The backend: HTTP/1.1 with upgrades, one task per connection.
async fn serve() -> Result<(), Failure> {
    let port: u16 = std::env::var("PORT")?.parse()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let (release, _) = tokio::sync::watch::channel(false);
    let release = Arc::new(release);
    loop {
        let (stream, _) = listener.accept().await?;
        let release = release.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, release.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
) -> Result<Response<Body>, Infallible> {
    let text = |status: StatusCode, body: String| {
        Response::builder().status(status).body(Full::new(Bytes::from(body)).boxed()).expect("response")
    };
    let response = match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => {
            let name = std::env::var("NAME").unwrap_or_else(|_| "backend".into());
            let mut page = text(StatusCode::OK, format!("hello from {name}\n"));
            page.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/html"));
            page
        }
        (Method::GET, "/headers") => {
            let lines: String = req
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
                .collect();
            text(StatusCode::OK, lines)
        }
        (Method::GET, "/sse") => {
            let released = release.subscribe();
            let events = futures_util::stream::unfold(0, move |step| {
                let mut released = released.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("data: first\n\n"))), 1)),
                        1 => {
                            let _ = released.wait_for(|r| *r).await;
                            Some((Ok(Frame::data(Bytes::from("data: last\n\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .expect("response")
        }
        (Method::GET, "/release") => {
            release.send_replace(true);
            text(StatusCode::OK, "released\n".into())
        }
        (Method::PUT | Method::POST, "/upload") => {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, Bytes::len);
            }
            text(StatusCode::OK, format!("{total}\n"))
        }
        (Method::GET, "/ws") => websocket_accept(req),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(response)
}

/// The RFC 6455 handshake's answer, then an echo of every message on the upgraded connection.
fn websocket_accept(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder().status(StatusCode::BAD_REQUEST).body(empty()).expect("response");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                .await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(empty())
        .expect("response")
}
