//! The route model on its own: tables built from plain [`ProjectRoutes`] with a fake
//! [`ServiceView`], no supervisor. Who keeps a name, the index host, the redirect policy, and
//! the pages a service's state gives, end to end through an in-process proxy.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tests::{recorder, short_limits, start};
use super::*;

/// A service whose state the test sets, recording what the proxy asked of it.
pub(super) struct Fake {
    now: Mutex<ServiceNow>,
    lines: Vec<String>,
    asked_lines: Mutex<Vec<usize>>,
}

impl Fake {
    fn new(state: ServiceState, exit_code: Option<i32>, lines: &[&str]) -> Arc<Self> {
        Arc::new(Fake {
            now: Mutex::new(ServiceNow { state, exit_code, port: None }),
            lines: lines.iter().map(|l| l.to_string()).collect(),
            asked_lines: Mutex::new(Vec::new()),
        })
    }
}

impl ServiceView for Fake {
    fn now(&self) -> ServiceNow {
        *self.now.lock().unwrap()
    }

    fn recent_lines(&self, count: usize) -> Vec<String> {
        self.asked_lines.lock().unwrap().push(count);
        self.lines.clone()
    }
}

pub(super) fn service(name: &str, port: u16, hosts: &[&str], view: Arc<Fake>) -> ServiceRoutes {
    ServiceRoutes { name: name.into(), port, hosts: hosts.iter().map(|h| h.to_string()).collect(), view }
}

pub(super) fn project(name: &str, https_redirect: bool, services: Vec<ServiceRoutes>) -> ProjectRoutes {
    ProjectRoutes { name: name.into(), https_redirect, services }
}

pub(super) fn running() -> Arc<Fake> {
    Fake::new(ServiceState::Running, None, &[])
}

/// Where `host` goes, as (project, service, port).
fn routed(table: &RouteTable, host: &str, tls: bool) -> Option<(String, String, u16)> {
    match decide(table, Some(host), tls) {
        Decision::Service { route, .. } => Some((route.project.clone(), route.service.clone(), route.port)),
        _ => None,
    }
}

#[test]
fn the_first_project_to_claim_a_name_keeps_it() {
    let table = RouteTable::build(&[
        project(
            "shop",
            false,
            vec![service("web", 4001, &["shop.localhost", "web.shop.localhost"], running())],
        ),
        project(
            "other",
            false,
            vec![service("site", 4002, &["shop.localhost", "other.localhost"], running())],
        ),
    ]);
    assert_eq!(routed(&table, "shop.localhost", true), Some(("shop".into(), "web".into(), 4001)));
    assert_eq!(routed(&table, "Other.Localhost:8443", true), Some(("other".into(), "site".into(), 4002)));
    // The unknown-host page lists the name under the project that has it, only there.
    assert_eq!(
        table.listing,
        [
            (
                "shop".into(),
                vec![("shop.localhost".into(), "web".into()), ("web.shop.localhost".into(), "web".into())]
            ),
            ("other".into(), vec![("other.localhost".into(), "site".into())]),
        ]
    );
    let Decision::Unknown(host) = decide(&table, Some("nope.localhost"), true) else { panic!("routed") };
    assert_eq!(host.as_deref(), Some("nope.localhost"));
}

#[test]
fn the_index_host_is_never_a_services_and_always_has_a_certificate() {
    let table = RouteTable::build(&[project(
        "app",
        false,
        vec![service("web", 4001, &["localhost", "app.localhost"], running())],
    )]);
    assert!(matches!(decide(&table, Some("localhost"), true), Decision::Unknown(None)));
    assert!(matches!(decide(&table, None, true), Decision::Unknown(None)));
    assert_eq!(table.listing, [("app".into(), vec![("app.localhost".into(), "web".into())])]);
    assert!(table.is_routed("localhost") && table.is_routed("app.localhost"));
    assert!(!table.is_routed("example.com"));
    assert!(RouteTable::build(&[]).is_routed("localhost"));
}

#[test]
fn https_redirect_is_the_projects_and_applies_to_plain_http_only() {
    let table = RouteTable::build(&[
        project("secure", true, vec![service("web", 4001, &["secure.localhost"], running())]),
        project("plain", false, vec![service("web", 4002, &["plain.localhost"], running())]),
    ]);
    let Decision::Redirect(host) = decide(&table, Some("secure.localhost"), false) else {
        panic!("plain HTTP is not redirected")
    };
    assert_eq!(host, "secure.localhost");
    assert!(routed(&table, "secure.localhost", true).is_some());
    assert!(routed(&table, "plain.localhost", false).is_some());
}

#[test]
fn a_state_that_serves_traffic_is_the_only_one_the_fast_path_takes() {
    for (state, forwarded) in [
        (ServiceState::Running, true),
        (ServiceState::Healthy, true),
        (ServiceState::Unhealthy, true),
        (ServiceState::Starting, false),
        (ServiceState::BackingOff, false),
        (ServiceState::Failed, false),
        (ServiceState::Stopped, false),
    ] {
        let view = Fake::new(state, None, &[]);
        let routes = Arc::new(Routes::default());
        routes.set(RouteTable::build(&[project(
            "app",
            false,
            vec![service("web", 4001, &["app.localhost"], view)],
        )]));
        let shared = Shared::new(routes, test_status(), short_limits());
        assert_eq!(forwardable(&shared, "app.localhost", true, None).is_some(), forwarded, "{state:?}");
    }
}

fn test_status() -> ProxyStatus {
    ProxyStatus {
        https_port: 0,
        http_port: 0,
        via_shim: false,
        note: None,
        ipv6_note: None,
        ca: "/ca.pem".into(),
    }
}

/// One plain HTTP/1.1 request for `host` to the proxy; the whole answer (it closes after it).
async fn get(http: std::net::SocketAddr, host: &str) -> String {
    let mut stream = TcpStream::connect(http).await.unwrap();
    let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_service_gets_its_page_for_its_state_and_its_requests_when_it_runs() {
    let proxy = start(short_limits()).await;
    let (port, received) = recorder(true);
    let crashed = Fake::new(ServiceState::Failed, Some(137), &["listening", "killed <oom>"]);
    let stopped = Fake::new(ServiceState::Stopped, None, &[]);
    let starting = Fake::new(ServiceState::BackingOff, None, &[]);
    let web = Fake::new(ServiceState::Running, None, &[]);
    proxy.shared.routes.set(RouteTable::build(&[project(
        "shop",
        false,
        vec![
            service("worker", 1, &["worker.shop.localhost"], crashed.clone()),
            service("admin", 1, &["admin.shop.localhost"], stopped),
            service("api", 1, &["api.shop.localhost"], starting),
            service("web", port, &["shop.localhost"], web.clone()),
        ],
    )]));

    let page = get(proxy.http, "worker.shop.localhost").await;
    assert!(page.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{page}");
    assert!(
        page.contains("Service <b>worker</b> of project <b>shop</b> is failed (exit code 137)"),
        "{page}"
    );
    assert!(page.contains("<pre>listening\nkilled &lt;oom&gt;</pre>"), "{page}");
    assert_eq!(*crashed.asked_lines.lock().unwrap(), [pages::LOG_LINES]);

    let page = get(proxy.http, "admin.shop.localhost").await;
    assert!(page.contains("is stopped. Start it with <code>locald start admin</code>"), "{page}");
    assert!(page.contains("<p>No log lines.</p>"), "{page}");

    let page = get(proxy.http, "api.shop.localhost").await;
    assert!(page.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{page}");
    assert!(page.contains("Service <b>api</b> of project <b>shop</b> is backing-off"), "{page}");
    assert!(page.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{page}");

    let answer = get(proxy.http, "shop.localhost").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok"), "{answer}");
    let seen = String::from_utf8_lossy(&received.lock().unwrap()[0]).into_owned();
    assert!(seen.starts_with("GET /x HTTP/1.1\r\n") && seen.contains("host: shop.localhost\r\n"), "{seen}");
    assert!(web.asked_lines.lock().unwrap().is_empty(), "a running service's log is not read");

    // The state is asked per request: the same route, stopped now, gets the page.
    web.now.lock().unwrap().state = ServiceState::Stopped;
    let page = get(proxy.http, "shop.localhost").await;
    assert!(page.contains("Service <b>web</b> of project <b>shop</b> is stopped"), "{page}");
}

#[tokio::test]
async fn plain_http_to_a_redirecting_project_gets_a_308_and_unrouted_names_the_list() {
    let proxy = start(short_limits()).await;
    proxy.shared.routes.set(RouteTable::build(&[project(
        "shop",
        true,
        vec![service("web", 1, &["shop.localhost"], running())],
    )]));
    let answer = get(proxy.http, "shop.localhost").await;
    assert!(answer.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("location: https://shop.localhost:0/x\r\n"), "{answer}");
    let page = get(proxy.http, "gone.localhost").await;
    assert!(page.starts_with("HTTP/1.1 404 Not Found\r\n"), "{page}");
    assert!(page.contains("<li><b>shop</b><ul><li><a href=\"http://shop.localhost:0/\">"), "{page}");
    // Routes set again replace the old ones whole.
    proxy.shared.routes.set(RouteTable::build(&[]));
    let page = get(proxy.http, "shop.localhost").await;
    assert!(page.contains("No running project answers to <b>shop.localhost</b>"), "{page}");
}
