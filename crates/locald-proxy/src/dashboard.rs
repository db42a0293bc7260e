//! The hook for locald's own dashboard at [`DASHBOARD_HOST`]: the proxy terminates TLS for that
//! name and hands each request, as plain values, to whatever the daemon set ([`Dashboard`]); it
//! knows nothing of what the dashboard shows or how it authenticates. The answer is either a
//! whole body or a stream of chunks (server-sent events), relayed as they come.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{COOKIE, HeaderName, HeaderValue, ORIGIN};
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::Body;
use super::activity::{BoxError, HoldBody, Open};

/// The dashboard's name: under `localhost`, so it resolves to loopback everywhere, and not under
/// any project's domain, so no service's cookies reach it and its own reach no service.
pub const DASHBOARD_HOST: &str = "locald.localhost";

/// Largest request body the dashboard is given (its actions carry none worth more).
const MAX_BODY: usize = 16 << 10;

/// A request for the dashboard, as plain values.
#[derive(Debug, Clone)]
pub struct DashboardRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Every `Cookie` field, joined with `; `.
    pub cookie: Option<String>,
    pub origin: Option<String>,
    pub body: Bytes,
}

/// What the dashboard answers with.
pub enum DashboardBody {
    Full(Bytes),
    /// Chunks sent as they arrive; the response ends when the sender is dropped, and the
    /// receiver is dropped when the client goes away (so the sender's `send` fails).
    Stream(mpsc::Receiver<Bytes>),
}

pub struct DashboardResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: DashboardBody,
}

/// Answers requests for [`DASHBOARD_HOST`]; set by the daemon with
/// [`Proxy::set_dashboard`](super::Proxy::set_dashboard).
pub trait Dashboard: Send + Sync {
    fn handle(&self, request: DashboardRequest) -> Pin<Box<dyn Future<Output = DashboardResponse> + Send>>;
}

#[derive(Default)]
pub(crate) struct Slot(RwLock<Option<Arc<dyn Dashboard>>>);

impl Slot {
    pub(crate) fn set(&self, dashboard: Arc<dyn Dashboard>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(dashboard);
    }

    pub(crate) fn get(&self) -> Option<Arc<dyn Dashboard>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Hands `req` to `dashboard`; `open` (the request's activity) is held until the response body
/// has been sent, so a long event stream keeps its connection from counting as idle.
pub(crate) async fn serve(
    req: Request<Incoming>,
    dashboard: Arc<dyn Dashboard>,
    open: Open,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let header = |name: HeaderName| {
        let values: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join("; "))
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or incomplete\n"),
    };
    let request = DashboardRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        cookie: header(COOKIE),
        origin: header(ORIGIN),
        body,
    };
    let answer = dashboard.handle(request).await;
    let body: Body = match answer.body {
        DashboardBody::Full(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed(),
        DashboardBody::Stream(receiver) => HoldBody { inner: Chunks(receiver), _hold: open }.boxed(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value))
        {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    response
}

/// A body of the chunks a channel carries.
struct Chunks(mpsc::Receiver<Bytes>);

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
