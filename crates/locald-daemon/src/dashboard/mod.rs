//! The dashboard at `https://locald.localhost`: the proxy hands it every request for that name
//! ([`locald_proxy::Dashboard`]); it answers from what the supervisor publishes. `auth` decides
//! who may see it, `snapshot` what the page shows of the projects (`stats` their CPU and
//! memory), `stream` the live event streams, and `assets` holds the page itself.

mod assets;
mod auth;
mod snapshot;
mod stats;
mod stream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use locald_core::ipc::ProxyStatus;
use locald_proxy::{DASHBOARD_HOST, Dashboard, DashboardBody, DashboardRequest, DashboardResponse};

use crate::supervisor::service::Control;
use crate::supervisor::{Supervisor, control};

/// What a request without the cookie is told.
const LOG_IN: &str = "Not logged in to the locald dashboard. Run `locald dashboard` to open it.\n";

pub struct Server {
    auth: auth::Auth,
    supervisor: Arc<Supervisor>,
    /// `https://locald.localhost[:port]`: what `Origin` must be on every change.
    origin: String,
    proxy: ProxyStatus,
    /// The daemon's runtime, where the event streams run.
    runtime: tokio::runtime::Handle,
}

impl Server {
    /// Loads (or makes) the secret in `state_dir`; call on the daemon's runtime.
    pub fn new(
        state_dir: &Path,
        supervisor: Arc<Supervisor>,
        proxy: &ProxyStatus,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            auth: auth::Auth::load(state_dir)?,
            supervisor,
            origin: proxy.https_url(DASHBOARD_HOST),
            proxy: proxy.clone(),
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// A one-time login URL (`locald dashboard`).
    pub fn login_url(&self) -> std::io::Result<String> {
        Ok(format!("{}/login?token={}", self.origin, self.auth.issue()?))
    }

    async fn answer(self: Arc<Self>, request: DashboardRequest) -> DashboardResponse {
        let (method, path) = (request.method.as_str(), request.path.as_str());
        if method == "GET" && path == "/login" {
            return self.login(request.query.as_deref());
        }
        if !self.auth.cookie_ok(request.cookie.as_deref()) {
            return text(401, LOG_IN);
        }
        match (method, path) {
            ("GET" | "HEAD", _) if let Some(asset) = assets::get(path) => respond(
                200,
                vec![("content-type", asset.content_type.into())],
                Bytes::from_static(asset.body),
            ),
            ("GET", "/events") => stream::events(&self),
            ("GET", "/logs") => stream::logs(&self, request.query.as_deref().unwrap_or("")),
            ("POST", "/action") => {
                // A page on another origin (say a service at `web.shop.localhost`) cannot make the
                // browser send the cookie with SameSite=Strict; this refuses even if it could.
                if request.origin.as_deref() != Some(self.origin.as_str()) {
                    return text(403, "Refused: this request does not come from the dashboard's page.\n");
                }
                self.action(&request.body).await
            }
            ("GET" | "HEAD", _) => text(404, "Not found.\n"),
            _ => text(405, "Method not allowed.\n"),
        }
    }

    fn login(&self, query: Option<&str>) -> DashboardResponse {
        let token = query.and_then(|q| param(q, "token")).unwrap_or_default();
        if !self.auth.redeem(&token) {
            return text(
                401,
                "This login link is used up, expired or wrong. Run `locald dashboard` for a new one.\n",
            );
        }
        // 303 to `/`: the token leaves the address bar and the history.
        let headers = vec![("location", "/".into()), ("set-cookie", self.auth.set_cookie())];
        respond(303, headers, Bytes::new())
    }

    async fn action(&self, body: &[u8]) -> DashboardResponse {
        #[derive(Deserialize)]
        struct Action {
            dir: PathBuf,
            service: Option<String>,
            action: String,
        }
        let Ok(action) = serde_json::from_slice::<Action>(body) else {
            return json(400, &serde_json::json!({"ok": false, "message": "malformed action"}));
        };
        let result = self.act(&action.dir, action.service.as_deref(), &action.action).await;
        let (status, ok, message) = match result {
            Ok(message) => (200, true, message),
            Err(message) => (400, false, message),
        };
        json(status, &serde_json::json!({"ok": ok, "message": message}))
    }

    async fn act(&self, dir: &Path, service: Option<&str>, action: &str) -> Result<String, String> {
        let project =
            self.supervisor.get(dir).ok_or_else(|| format!("no project running in {}", dir.display()))?;
        let name = project.config.project.name.clone();
        if action == "down" {
            return if self.supervisor.down(dir).await {
                Ok(format!("project {name} is down"))
            } else {
                Err(format!("project {name} was not running"))
            };
        }
        let service = service.ok_or("no service named")?;
        let handle = project.handle(service).ok_or_else(|| format!("no service {service:?} in {name}"))?;
        let (make, done): (fn(_) -> Control, _) = match action {
            "start" => (Control::Start, "started"),
            "stop" => (Control::Stop, "stopped"),
            "restart" => (Control::Restart, "restarted"),
            other => return Err(format!("unknown action {other:?}")),
        };
        if control(handle, make).await {
            Ok(format!("{service} {done}"))
        } else {
            Err(format!("{service}: its task has ended"))
        }
    }
}

/// What the proxy holds: a request's future needs its own reference to the server.
struct Hook(Arc<Server>);

impl Dashboard for Hook {
    fn handle(&self, request: DashboardRequest) -> Pin<Box<dyn Future<Output = DashboardResponse> + Send>> {
        Box::pin(self.0.clone().answer(request))
    }
}

impl Server {
    /// The proxy's hook for this server ([`locald_proxy::Proxy::set_dashboard`]).
    pub fn hook(self: &Arc<Self>) -> Arc<dyn Dashboard> {
        Arc::new(Hook(self.clone()))
    }
}

/// Headers on every answer: nothing cached, framed or referred.
fn common_headers(mut headers: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    headers.push(("cache-control", "no-store".into()));
    headers.push(("referrer-policy", "no-referrer".into()));
    headers.push(("x-frame-options", "DENY".into()));
    headers.push(("x-content-type-options", "nosniff".into()));
    headers.push((
        "content-security-policy",
        "default-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'".into(),
    ));
    headers
}

fn respond(status: u16, headers: Vec<(&'static str, String)>, body: Bytes) -> DashboardResponse {
    DashboardResponse { status, headers: common_headers(headers), body: DashboardBody::Full(body) }
}

fn text(status: u16, body: &'static str) -> DashboardResponse {
    respond(
        status,
        vec![("content-type", "text/plain; charset=utf-8".into())],
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(status: u16, value: &serde_json::Value) -> DashboardResponse {
    respond(status, vec![("content-type", "application/json".into())], Bytes::from(value.to_string()))
}

/// The percent-decoded value of `name` in a query string.
pub(crate) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(param("a=1&dir=%2Fhome%2Fx+y&z", "dir").as_deref(), Some("/home/x y"));
        assert_eq!(param("token=%zz%4", "token").as_deref(), Some("%zz%4"));
        assert_eq!(param("a=1", "b"), None);
    }
}
