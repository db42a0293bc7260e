//! The HTTPS/HTTP reverse proxy: every running service at `https://<name>.localhost`. It runs on
//! threads of its own (a single-threaded runtime per core), so heavy traffic never delays the
//! supervisor, on listeners from [`listeners`]; [`routes`] maps host names to services, [`tls`]
//! issues certificates for routed names only, [`forward`] streams requests to the services over
//! each client connection's own [`upstream`] connections, and [`pages`] answers when a service
//! cannot.

pub mod forward;
pub mod h1;
pub mod listeners;
pub mod pages;
pub mod routes;
pub mod tls;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use locald_core::ipc::{ProjectStatus, ProxyStatus, ServiceState};

use crate::supervisor::Project;
use crate::tls::ca::LeafCache;
use forward::Peer;
use routes::{INDEX_HOST, Routes};
use upstream::Upstreams;

/// Every response body the proxy sends: a service's, streamed, or one of its own pages.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Most threads serving the proxy (one per core up to this).
const MAX_THREADS: usize = 4;
/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request's header (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("local CA: {0}")]
    Ca(#[from] crate::tls::CaError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("proxy listeners: {0}")]
    Io(#[from] std::io::Error),
}

/// What the rest of the daemon holds of the proxy.
pub struct Proxy {
    routes: Arc<Routes>,
    status: ProxyStatus,
}

impl Proxy {
    /// Binds the listeners, loads (or makes) the CA, and serves on a thread of its own.
    pub fn start(projects: &[Arc<Project>]) -> Result<Arc<Self>, ProxyError> {
        let ca = crate::tls::user_ca()?;
        let ca_path = ca.cert_path().to_owned();
        let routes = Arc::new(Routes::default());
        routes.refresh(projects);
        let resolver = Arc::new(tls::CertResolver::new(LeafCache::new(ca), routes.clone()));
        let tls_config = tls::server_config(resolver)?;
        let opened = listeners::open()?;
        let status = ProxyStatus {
            https_port: opened.https.local_addr()?.port(),
            http_port: opened.http.local_addr()?.port(),
            via_shim: opened.via_shim,
            note: opened.note,
            ipv6_note: opened.ipv6_note,
            ca: ca_path,
        };
        let mut connections = auto::Builder::new(TokioExecutor::new());
        connections.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        connections.http2().timer(TokioTimer::new()).enable_connect_protocol();
        let acceptor = TlsAcceptor::from(tls_config);
        let mut listening = Vec::new();
        for (listener, tls) in [
            (Some(opened.https), true),
            (Some(opened.http), false),
            (opened.https6, true),
            (opened.http6, false),
        ] {
            let Some(listener) = listener else { continue };
            listener.set_nonblocking(true)?;
            listening.push((listener, tls.then(|| acceptor.clone())));
        }
        // Thread per core: each thread a single-threaded runtime accepting on every listener
        // (the kernel hands each connection to one of them); a client connection's requests go
        // over its own connections to the services (`upstream`), so a request never crosses
        // threads or contends on a shared pool.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_THREADS);
        for n in 0..threads {
            let mut mine = Vec::new();
            for (listener, tls) in &listening {
                mine.push((listener.try_clone()?, tls.clone()));
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let shared = Arc::new(Shared {
                routes: routes.clone(),
                status: status.clone(),
                connections: connections.clone(),
            });
            std::thread::Builder::new().name(format!("locald-proxy-{n}")).spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (listener, tls) in mine {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tasks.spawn(accept(listener, shared.clone(), tls));
                            }
                            Err(e) => eprintln!("locald: proxy: {e}"),
                        }
                    }
                    while tasks.join_next().await.is_some() {}
                })
            })?;
        }
        Ok(Arc::new(Self { routes, status }))
    }

    pub fn status(&self) -> &ProxyStatus {
        &self.status
    }

    /// Called whenever projects come up or go down.
    pub fn refresh(&self, projects: &[Arc<Project>]) {
        self.routes.refresh(projects);
    }

    /// The project's status with each service's public URL (with the port when not 443).
    pub fn project_status(&self, project: &Project) -> ProjectStatus {
        let mut status = project.status();
        for (service, handle) in status.services.iter_mut().zip(&project.services) {
            service.url = self.status.https_url(&handle.service.domain);
        }
        status
    }
}

struct Shared {
    routes: Arc<Routes>,
    status: ProxyStatus,
    connections: auto::Builder<TokioExecutor>,
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds and the like: pause instead of spinning.
                eprintln!("locald: proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let peer = Peer { addr, tls: tls.is_some() };
            match tls {
                Some(acceptor) => {
                    // A failed handshake (say, for a name locald does not route) just ends here.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            serve(TokioIo::new(stream), shared, peer).await;
                        } else {
                            serve_h1(stream, shared, peer).await;
                        }
                    }
                }
                None => serve_h1(stream, shared, peer).await,
            }
        });
    }
}

/// An HTTP/1 client connection: the fast path ([`h1`]) while it can, then hyper's.
async fn serve_h1<S>(io: S, shared: Arc<Shared>, peer: Peer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let route = |host: &str| forwardable(&shared, host, peer.tls);
    if let h1::Outcome::Fallback(io) = h1::serve(io, peer, HEADER_TIMEOUT, route).await {
        serve(TokioIo::new(io), shared, peer).await;
    }
}

/// The route for `raw_host` when [`handle`] would forward its request as it is: a running
/// service, and no redirect to HTTPS. Everything else is answered on hyper's path.
fn forwardable(shared: &Shared, raw_host: &str, tls: bool) -> Option<routes::Route> {
    match decide(&shared.routes.current(), Some(raw_host), tls) {
        Decision::Service { route, state, .. } if Traffic::of(state) == Traffic::Forward => Some(route),
        _ => None,
    }
}

/// What a request for a host gets, decided in one place for hyper's path and the fast path.
enum Decision {
    /// The unknown-host page, naming the host when there was a usable one.
    Unknown(Option<String>),
    /// A 308 to HTTPS for this host (plain HTTP to a project with `https_redirect`).
    Redirect(String),
    Service {
        route: routes::Route,
        state: ServiceState,
        exit: Option<i32>,
    },
}

fn decide(table: &routes::RouteTable, raw_host: Option<&str>, tls: bool) -> Decision {
    let Some(host) = raw_host.and_then(routes::normalize_host).filter(|h| h != INDEX_HOST) else {
        return Decision::Unknown(None);
    };
    let Some(route) = table.get(&host).cloned() else {
        return Decision::Unknown(Some(host));
    };
    if !tls && route.project.config.project.https_redirect {
        return Decision::Redirect(host);
    }
    let (state, exit) = {
        let snapshot = route.handle().status.borrow();
        (snapshot.state, snapshot.exit.map(crate::supervisor::process::Exit::code))
    };
    Decision::Service { route, state, exit }
}

/// What a service's state means for a request to it.
#[derive(PartialEq)]
enum Traffic {
    Forward,
    Starting,
    Down,
}

impl Traffic {
    fn of(state: ServiceState) -> Self {
        match state {
            ServiceState::Running | ServiceState::Healthy | ServiceState::Unhealthy => Traffic::Forward,
            ServiceState::Waiting | ServiceState::Starting | ServiceState::BackingOff => Traffic::Starting,
            ServiceState::Stopped | ServiceState::Failed | ServiceState::Completed => Traffic::Down,
        }
    }
}

impl h1::Target for routes::Route {
    fn port(&self) -> u16 {
        self.handle().service.port
    }

    fn unreachable(&self, cause: &str) -> Response<Body> {
        let service = &self.handle().service;
        pages::unreachable(&self.project.config.project.name, &service.name, service.port, cause)
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>, peer: Peer)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handler = shared.clone();
    let upstreams = Arc::new(Upstreams::default());
    let service = service_fn(move |req| {
        let shared = handler.clone();
        let upstreams = upstreams.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared, &upstreams, peer).await) }
    });
    let _ = shared.connections.serve_connection_with_upgrades(io, service).await;
}

async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    upstreams: &Upstreams,
    peer: Peer,
) -> Response<Body> {
    let table = shared.routes.current();
    let raw_host = match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    };
    let (route, state, exit) = match decide(&table, raw_host, peer.tls) {
        Decision::Unknown(host) => {
            return pages::unknown_host(host.as_deref(), &table, &shared.status, peer.tls);
        }
        Decision::Redirect(host) => {
            // Upgrades too: a WebSocket client that is sent to https:// must come back with wss://.
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return pages::redirect(&pages::https_location(&host, &shared.status, path));
        }
        Decision::Service { route, state, exit } => (route, state, exit),
    };
    drop(table);
    let handle = route.handle();
    let project = route.project.config.project.name.as_str();
    let service = &handle.service;
    match Traffic::of(state) {
        Traffic::Forward => match forward::forward(upstreams, req, service.port, peer).await {
            Ok(response) => response,
            Err(e) => forward_failed(project, &service.name, service.port, &e),
        },
        Traffic::Starting => pages::starting(project, &service.name, state.as_str()),
        Traffic::Down => {
            let dir = route.project.log_dir.clone();
            let name = service.name.clone();
            let lines =
                tokio::task::spawn_blocking(move || crate::logs::last_lines(&dir, &name, pages::LOG_LINES))
                    .await
                    .unwrap_or_default();
            pages::down(project, &service.name, state.as_str(), exit, &lines)
        }
    }
}

/// The page for a request that could not be forwarded: 400 when the client's own body was
/// malformed, else the service's "not answering" page.
pub(crate) fn forward_failed(
    project: &str,
    service: &str,
    port: u16,
    e: &forward::ForwardError,
) -> Response<Body> {
    match e {
        forward::ForwardError::Backend(upstream::UpstreamError::RequestBody(_)) => {
            pages::bad_request(&e.cause())
        }
        _ => pages::unreachable(project, service, port, &e.cause()),
    }
}
