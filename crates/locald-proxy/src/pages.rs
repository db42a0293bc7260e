//! The pages the proxy answers with itself, so a browser never sees a bare connection error: a
//! service starting (refreshes itself), stopped or crashed (its state and last log lines), not
//! accepting connections, and an unknown host (the running projects' URLs).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::Body;
use super::routes::RouteTable;
use locald_core::ipc::ProxyStatus;

/// Lines of a stopped service's log shown on its page.
pub(crate) const LOG_LINES: usize = 20;

fn page(status: StatusCode, title: &str, body: &str, refresh: Option<u32>) -> Response<Body> {
    let meta = refresh.map_or(String::new(), |s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"));
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">{meta}<title>{title}</title>\
         <style>body{{font:15px system-ui,sans-serif;margin:3em auto;max-width:46em;color:#222}}\
         pre{{background:#f4f4f4;padding:1em;overflow:auto}}small{{color:#777}}</style></head>\n\
         <body><h1>{title}</h1>\n{body}\n<p><small>locald</small></p></body></html>\n",
        title = escape(title),
    );
    let mut response = Response::new(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = refresh {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Waiting for dependencies, starting, or between restarts: refreshes every second.
pub(crate) fn starting(project: &str, service: &str, state: &str) -> Response<Body> {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{service} is starting"),
        &format!(
            "<p>Service <b>{}</b> of project <b>{}</b> is {}. This page reloads by itself.</p>",
            escape(service),
            escape(project),
            escape(state)
        ),
        Some(1),
    )
}

/// Stopped, failed or completed: the state, the exit code and the end of its log.
pub(crate) fn down(
    project: &str,
    service: &str,
    state: &str,
    exit: Option<i32>,
    log: &[String],
) -> Response<Body> {
    let exit = exit.map_or(String::new(), |code| format!(" (exit code {code})"));
    let log = if log.is_empty() {
        "<p>No log lines.</p>".to_owned()
    } else {
        format!("<p>Last log lines:</p><pre>{}</pre>", escape(&log.join("\n")))
    };
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{service} is {state}"),
        &format!(
            "<p>Service <b>{}</b> of project <b>{}</b> is {}{exit}. Start it with \
             <code>locald start {}</code>.</p>{log}",
            escape(service),
            escape(project),
            escape(state),
            escape(service)
        ),
        Some(5),
    )
}

/// The service runs but its port refused or dropped the connection.
pub(crate) fn unreachable(project: &str, service: &str, port: u16, error: &str) -> Response<Body> {
    page(
        StatusCode::BAD_GATEWAY,
        &format!("{service} is not answering"),
        &format!(
            "<p>Service <b>{}</b> of project <b>{}</b> runs, but 127.0.0.1:{port} did not answer: \
             {}. Does it listen on <code>$PORT</code>? This page reloads by itself.</p>",
            escape(service),
            escape(project),
            escape(error)
        ),
        Some(2),
    )
}

/// A request the proxy could not read to its end (a malformed body).
pub(crate) fn bad_request(error: &str) -> Response<Body> {
    page(
        StatusCode::BAD_REQUEST,
        "Bad request",
        &format!("<p>The request could not be read: {}.</p>", escape(error)),
        None,
    )
}

/// A host no running project has: the list of those that are up.
pub(crate) fn unknown_host(
    host: Option<&str>,
    table: &RouteTable,
    proxy: &ProxyStatus,
    tls: bool,
) -> Response<Body> {
    let mut list = String::new();
    for (project, names) in &table.listing {
        list.push_str(&format!("<li><b>{}</b><ul>", escape(project)));
        for (host, service) in names {
            let url = if tls { proxy.https_url(host) } else { proxy.http_url(host) };
            list.push_str(&format!(
                "<li><a href=\"{url}/\">{url}</a> — {}</li>",
                escape(service),
                url = escape(&url)
            ));
        }
        list.push_str("</ul></li>");
    }
    let intro = match host {
        Some(host) => format!("<p>No running project answers to <b>{}</b>.</p>", escape(host)),
        None => String::new(),
    };
    let body = if list.is_empty() {
        format!("{intro}<p>No project is running. Start one with <code>locald up</code>.</p>")
    } else {
        format!("{intro}<p>Running projects:</p><ul>{list}</ul>")
    };
    let status = if host.is_some() { StatusCode::NOT_FOUND } else { StatusCode::OK };
    page(status, if host.is_some() { "Unknown host" } else { "locald" }, &body, None)
}

/// Where `https_redirect` sends a plain HTTP request: the same name (from [`normalize_host`]: no
/// port, lowercase) on the HTTPS port, with the port only when it is not 443, and the same path
/// and query.
///
/// [`normalize_host`]: super::routes::normalize_host
pub(crate) fn https_location(host: &str, proxy: &ProxyStatus, path_and_query: &str) -> String {
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    format!("{}{path}", proxy.https_url(host))
}

/// 308, so the method and body are kept, unlike with 301; `no-store` (from [`page`]) so a
/// browser does not keep redirecting after the project drops `https_redirect`.
pub(crate) fn redirect(location: &str) -> Response<Body> {
    let mut response = page(
        StatusCode::PERMANENT_REDIRECT,
        "Moved to HTTPS",
        &format!("<p><a href=\"{0}\">{0}</a></p>", escape(location)),
        None,
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// A request locald will not forward: `why`, under the status's reason.
pub(crate) fn refused(status: StatusCode, why: &str) -> Response<Body> {
    page(status, status.canonical_reason().unwrap_or("Refused"), &format!("<p>{}</p>", escape(why)), None)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_escaped() {
        let response = down("p", "web", "failed", Some(1), &["<script>x</script>".into()]);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn the_https_location_keeps_name_path_and_query_and_names_a_port_other_than_443() {
        use super::super::routes::normalize_host;
        let on = |https_port| ProxyStatus {
            https_port,
            http_port: 80,
            via_shim: true,
            note: None,
            ipv6_note: None,
            ca: "/ca.pem".into(),
        };
        let host = normalize_host("Shop.LocalHost:80").unwrap();
        assert_eq!(
            https_location(&host, &on(443), "/cart?id=7&x=%20"),
            "https://shop.localhost/cart?id=7&x=%20"
        );
        let host = normalize_host("web.shop.localhost:8080").unwrap();
        assert_eq!(https_location(&host, &on(8443), "/"), "https://web.shop.localhost:8443/");
        assert_eq!(https_location("shop.test", &on(443), "*"), "https://shop.test/", "OPTIONS * goes to /");

        let response = redirect("https://shop.localhost/a?b=1");
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[LOCATION], "https://shop.localhost/a?b=1");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }
}
