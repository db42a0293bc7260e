//! The HTTPS/HTTP reverse proxy: every running service at `https://<name>.localhost`. It runs on
//! threads of its own (a single-threaded runtime per core), so heavy traffic never delays the
//! supervisor, on listeners from `listeners` (ports 443/80 through [`LowPorts`]); `routes`
//! maps host names to services, from plain values the daemon gives it ([`ProjectRoutes`]), `tls`
//! issues certificates for routed names only, `forward` streams requests to the services over
//! each client connection's own `upstream` connections, and `pages` answers when a service
//! cannot. `limits` bounds connections' time and number, from what `activity` records.

// Everything but the API the daemon uses is the crate's own.
#![warn(unreachable_pub)]

#[macro_use]
mod write_through;

mod activity;
mod dashboard;
mod forward;
mod h1;
mod hold;
mod limits;
mod listeners;
mod pages;
mod routes;
mod tls;
mod upstream;

pub use dashboard::{DASHBOARD_HOST, Dashboard, DashboardBody, DashboardRequest, DashboardResponse};
pub use listeners::{LowPorts, LowPortsError};
pub use routes::{ProjectRoutes, ServiceNow, ServiceRoutes, ServiceView};

#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod service_cap_tests;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use locald_core::ipc::{ProxyStatus, ServiceState};

use activity::Activity;
use forward::Peer;
use locald_ca::ca::LeafCache;
use routes::{INDEX_HOST, Route, RouteTable, Routes};
use upstream::Upstreams;

/// Every body the proxy sends: a service's, streamed, one of its own pages, or a request body.
pub(crate) type Body = BoxBody<Bytes, activity::BoxError>;

/// Most threads serving the proxy (one per core up to this).
const MAX_THREADS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("local CA: {0}")]
    Ca(#[from] locald_ca::CaError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("proxy listeners: {0}")]
    Io(#[from] std::io::Error),
}

/// What the rest of the daemon holds of the proxy.
pub struct Proxy {
    routes: Arc<Routes>,
    status: ProxyStatus,
    dashboard: Arc<dashboard::Slot>,
    /// Set to end every proxy thread: [`Proxy::stop`].
    stop: tokio::sync::watch::Sender<bool>,
    /// Each thread holds a sender until its listeners and connections are closed.
    stopped: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<()>>,
}

impl Proxy {
    /// Binds the listeners (443 and 80 through `low_ports`; `Err` says why there is none),
    /// loads (or makes) the CA, and serves on threads of its own, routing nothing until
    /// [`Proxy::set_routes`].
    pub fn start(low_ports: Result<&dyn LowPorts, String>) -> Result<Arc<Self>, ProxyError> {
        let ca = locald_ca::user_ca()?;
        let ca_path = ca.cert_path().to_owned();
        let routes = Arc::new(Routes::default());
        let resolver = Arc::new(tls::CertResolver::new(LeafCache::new(ca), routes.clone()));
        let tls_config = tls::server_config(resolver)?;
        let opened = listeners::open(low_ports)?;
        let status = ProxyStatus {
            https_port: opened.https.local_addr()?.port(),
            http_port: opened.http.local_addr()?.port(),
            via_shim: opened.via_shim,
            note: opened.note,
            ipv6_note: opened.ipv6_note,
            ca: ca_path,
        };
        let limits = limits::Limits::for_nofile(limits::nofile());
        let shared = Arc::new(Shared::new(routes.clone(), status.clone(), limits));
        let dashboard = shared.dashboard.clone();
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
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (running, stopped) = tokio::sync::mpsc::channel(1);
        for n in 0..threads {
            let mut mine = Vec::new();
            for (listener, tls) in &listening {
                mine.push((listener.try_clone()?, tls.clone()));
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let shared = shared.clone();
            let (running, mut stopping) = (running.clone(), stopping.clone());
            std::thread::Builder::new().name(format!("locald-proxy-{n}")).spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (listener, tls) in mine {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tasks.spawn(accept(listener, shared.clone(), tls));
                            }
                            Err(e) => tracing::error!("proxy: {e}"),
                        }
                    }
                    tokio::select! {
                        () = async { while tasks.join_next().await.is_some() {} } => {}
                        _ = stopping.wait_for(|stop| *stop) => {}
                    }
                });
                // Every task, its listener and its connections with it, is dropped here, before
                // the thread says it is done.
                drop(runtime);
                drop(running);
            })?;
        }
        let stopped = tokio::sync::Mutex::new(stopped);
        Ok(Arc::new(Self { routes, status, dashboard, stop, stopped }))
    }

    /// Closes the listeners and every connection, and returns once no thread holds a port: a
    /// daemon that says it stopped has freed 443 and 80 for whoever binds them next.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        // `None` once every thread dropped its sender.
        while self.stopped.lock().await.recv().await.is_some() {}
    }

    pub fn status(&self) -> &ProxyStatus {
        &self.status
    }

    /// Routes exactly these projects from now on (called whenever projects come up or go down).
    pub fn set_routes(&self, projects: &[ProjectRoutes]) {
        self.routes.set(RouteTable::build(projects));
    }

    /// Requests for [`DASHBOARD_HOST`] over HTTPS go to `dashboard` from now on (until then,
    /// and over plain HTTP, it is answered like any unknown host, or redirected to HTTPS).
    pub fn set_dashboard(&self, dashboard: Arc<dyn Dashboard>) {
        self.dashboard.set(dashboard);
    }
}

/// What every thread's connections share.
pub(crate) struct Shared {
    routes: Arc<Routes>,
    status: ProxyStatus,
    connections: auto::Builder<TokioExecutor>,
    limits: limits::Limits,
    admission: Arc<limits::Admission>,
    dashboard: Arc<dashboard::Slot>,
}

impl Shared {
    pub(crate) fn new(routes: Arc<Routes>, status: ProxyStatus, limits: limits::Limits) -> Self {
        let mut connections = auto::Builder::new(TokioExecutor::new());
        connections.http1().timer(TokioTimer::new()).header_read_timeout(limits.header);
        connections
            .http2()
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(limits.max_streams)
            .keep_alive_interval(limits.ping)
            .keep_alive_timeout(limits.ping);
        let admission = limits::Admission::new(limits.max_clients);
        Shared { routes, status, connections, limits, admission, dashboard: Arc::default() }
    }
}

/// Accept errors (out of descriptors, say) are logged once per this at most.
static ACCEPT_ERRORS: limits::LogLimiter = limits::LogLimiter::new(Duration::from_secs(10));
/// The pause after an accept error, doubled while they repeat: a listener whose next accept
/// would fail the same way is not spun on.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

pub(crate) async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(line) = ACCEPT_ERRORS.line(limits::now_ms(), format_args!("proxy accept: {e}")) {
                    tracing::warn!("{line}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF.0;
        // At the cap with every connection busy: this one is closed at once.
        let Some(admitted) = shared.admission.admit() else { continue };
        tokio::spawn(connection(stream, addr, shared.clone(), tls.clone(), admitted));
    }
}

/// One client connection, from its TLS handshake to its end, or until it is evicted.
async fn connection(
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    admitted: limits::Admitted,
) {
    let _ = stream.set_nodelay(true);
    let activity = admitted.activity.clone();
    let peer = Peer { addr, tls: tls.is_some() };
    let io = activity::Watched { inner: stream, activity: activity.clone() };
    let served = async {
        let Some(acceptor) = tls else {
            return serve_h1(io, shared.clone(), peer, None, activity.clone()).await;
        };
        // A failed handshake (say, for a name locald does not route) just ends here.
        let Ok(Ok(stream)) = tokio::time::timeout(shared.limits.handshake, acceptor.accept(io)).await else {
            return;
        };
        // Each name has a certificate of its own, so the connection is for its SNI name only.
        let sni = stream.get_ref().1.server_name().and_then(routes::normalize_host);
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            serve(TokioIo::new(stream), shared.clone(), peer, sni, activity.clone()).await;
        } else {
            serve_h1(stream, shared.clone(), peer, sni, activity.clone()).await;
        }
    };
    tokio::select! {
        () = served => {}
        () = activity.evicted_wait() => {}
    }
    drop(admitted);
}

/// An HTTP/1 client connection: the fast path ([`h1`]) while it can, then hyper's.
async fn serve_h1<S>(io: S, shared: Arc<Shared>, peer: Peer, sni: Option<String>, activity: Arc<Activity>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let route = |host: &str| forwardable(&shared, host, peer.tls, sni.as_deref());
    if let h1::Outcome::Fallback(io) =
        h1::serve(io, peer, shared.limits.header, activity.clone(), route).await
    {
        serve(TokioIo::new(io), shared.clone(), peer, sni, activity).await;
    }
}

/// Whether a request for `raw_host` on a connection for `sni` is misdirected (RFC 9110
/// §15.5.20): a TLS connection serves the one name its certificate was issued for.
fn misdirected(raw_host: Option<&str>, sni: Option<&str>) -> bool {
    sni.is_some() && raw_host.and_then(routes::normalize_host).as_deref() != sni
}

/// The route for `raw_host` when [`handle`] would forward its request as it is: a running
/// service, and no redirect to HTTPS. Everything else is answered on hyper's path.
fn forwardable(shared: &Shared, raw_host: &str, tls: bool, sni: Option<&str>) -> Option<Arc<Route>> {
    if misdirected(Some(raw_host), sni) {
        return None;
    }
    match decide(&shared.routes.current(), Some(raw_host), tls) {
        Decision::Service { route, now } if Traffic::of(now.state) == Traffic::Forward => Some(route),
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
        route: Arc<Route>,
        now: ServiceNow,
    },
}

fn decide(table: &RouteTable, raw_host: Option<&str>, tls: bool) -> Decision {
    let Some(host) = raw_host.and_then(routes::normalize_host).filter(|h| h != INDEX_HOST) else {
        return Decision::Unknown(None);
    };
    let Some(route) = table.get(&host).cloned() else {
        return Decision::Unknown(Some(host));
    };
    if !tls && route.https_redirect {
        return Decision::Redirect(host);
    }
    let now = route.view.now();
    Decision::Service { route, now }
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
        if state.serves_traffic() {
            Traffic::Forward
        } else if state.is_terminal() {
            Traffic::Down
        } else {
            Traffic::Starting
        }
    }
}

impl h1::Target for Arc<Route> {
    fn port(&self) -> u16 {
        self.view.now().port.unwrap_or(self.port)
    }

    fn unreachable(&self, cause: &str) -> Response<Body> {
        pages::unreachable(&self.project, &self.service, self.port, cause)
    }
}

/// Serves a client connection on hyper's path until it ends, or has had no request open for
/// its idle limit (then it is shut down gracefully: GOAWAY on HTTP/2).
async fn serve<I>(io: I, shared: Arc<Shared>, peer: Peer, sni: Option<String>, activity: Arc<Activity>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    activity.restart();
    let handler = shared.clone();
    let upstreams = Arc::new(Upstreams::default());
    let forwards = Arc::new(tokio::sync::Semaphore::new(shared.limits.forwards_per_client));
    let sni: Option<Arc<str>> = sni.map(Into::into);
    let tracked = activity.clone();
    let service = service_fn(move |req| {
        let (shared, upstreams, forwards, sni) =
            (handler.clone(), upstreams.clone(), forwards.clone(), sni.clone());
        let activity = tracked.clone();
        let open = activity.begin();
        async move {
            let context = Context { shared: &shared, upstreams: &upstreams, forwards, activity: &activity };
            let response = handle(req, &context, peer, sni.as_deref()).await;
            drop(open);
            Ok::<_, Infallible>(response)
        }
    });
    let limits = &shared.limits;
    let connection = shared.connections.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    loop {
        let now = limits::now_ms();
        let wait = match activity.idle_deadline(limits.header, limits.idle) {
            Some(due) if due <= now => break,
            Some(due) => Duration::from_millis(due - now),
            None => limits.idle.min(limits.header),
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header, connection).await;
}

/// What a request on hyper's path is handled with.
struct Context<'a> {
    shared: &'a Shared,
    upstreams: &'a Upstreams,
    /// The client connection's permits for requests at services.
    forwards: Arc<tokio::sync::Semaphore>,
    activity: &'a Arc<Activity>,
}

async fn handle(
    req: Request<Incoming>,
    context: &Context<'_>,
    peer: Peer,
    sni: Option<&str>,
) -> Response<Body> {
    let shared = context.shared;
    if let Some((status, why)) = forward::refusal(&req) {
        return pages::refused(status, why);
    }
    let table = shared.routes.current();
    let raw_host = forward::routed_authority(&req);
    if misdirected(raw_host, sni) {
        return pages::refused(
            StatusCode::MISDIRECTED_REQUEST,
            "This connection is for another name: the request's host differs from the TLS server name.",
        );
    }
    if raw_host.and_then(routes::normalize_host).as_deref() == Some(DASHBOARD_HOST) {
        // Its cookie is `Secure`: over plain HTTP there is nothing to answer but a way to HTTPS.
        if !peer.tls {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return pages::redirect(&pages::https_location(DASHBOARD_HOST, &shared.status, path));
        }
        if let Some(dashboard) = shared.dashboard.get() {
            return dashboard::serve(req, dashboard, context.activity.begin()).await;
        }
    }
    let authority = raw_host.and_then(|h| HeaderValue::from_str(h).ok());
    let (route, now) = match decide(&table, raw_host, peer.tls) {
        Decision::Unknown(host) => {
            return pages::unknown_host(host.as_deref(), &table, &shared.status, peer.tls);
        }
        Decision::Redirect(host) => {
            // Upgrades too: a WebSocket client that is sent to https:// must come back with wss://.
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            return pages::redirect(&pages::https_location(&host, &shared.status, path));
        }
        Decision::Service { route, now } => (route, now),
    };
    drop(table);
    let now = hold::while_starting(&*route.view, now, shared.limits.hold).await;
    let port = now.port.unwrap_or(route.port);
    let (project, service) = (route.project.as_str(), route.service.as_str());
    match Traffic::of(now.state) {
        Traffic::Forward => {
            let (Some(authority), Ok(permit)) = (authority, context.forwards.clone().acquire_owned().await)
            else {
                return pages::refused(StatusCode::BAD_REQUEST, "The request has no usable host.");
            };
            let hold: forward::Hold = Box::new((context.activity.begin(), permit));
            let limit = shared.limits.body;
            match forward::forward(context.upstreams, req, &authority, port, peer, hold, limit).await {
                Ok(response) => response,
                Err(forward::ForwardError::BodyTimeout) => pages::refused(
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body stopped arriving; the service got an incomplete request.",
                ),
                Err(e) => forward_failed(project, service, port, &e),
            }
        }
        Traffic::Starting => pages::starting(project, service, now.state.as_str()),
        Traffic::Down => {
            let view = route.view.clone();
            let lines = tokio::task::spawn_blocking(move || view.recent_lines(pages::LOG_LINES))
                .await
                .unwrap_or_default();
            pages::down(project, service, now.state.as_str(), now.exit_code, &lines)
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
