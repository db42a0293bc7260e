//! Who may use the dashboard at `https://locald.localhost`: only a browser that opened a login
//! URL from `locald dashboard`. Real daemon, real services, the proxy on its fallback port,
//! curl as the browser (its cookie jar follows the same host-only rules). Needs no root.

use std::path::Path;
use std::process::Output;

use locald_tests::dashboard::Dash;
use locald_tests::{text, wait_for};

fn project(backend: &str) -> String {
    format!(
        "[project]\nname = \"shop\"\n\n[services.web]\ncommand = [\"{backend}\", \"serve\"]\n\
         health_check = {{ tcp = true, interval = \"50ms\", start_period = \"30s\" }}\n\n\
         [services.worker]\ncommand = [\"sh\", \"-c\", \"echo worker up; exec sleep 3600\"]\nport = false\n"
    )
}

/// Status code, headers and body of one curl exchange (`-i`).
fn exchange(out: &Output) -> (u16, String, String) {
    assert!(out.status.success(), "curl failed: {}", text(out));
    let all = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = all.split_once("\n\n").unwrap_or((&all, ""));
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{all}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn action(dash: &Dash, jar: Option<&Path>, origin: Option<&str>, body: &str) -> (u16, String, String) {
    let mut curl = dash.curl(&[]);
    curl.args(["-i", "-X", "POST", "-H", "content-type: application/json", "--data", body]);
    if let Some(jar) = jar {
        curl.arg("-b").arg(jar);
    }
    if let Some(origin) = origin {
        curl.args(["-H", &format!("Origin: {origin}")]);
    }
    exchange(&curl.arg(dash.url("/action")).output().unwrap())
}

#[test]
fn only_a_browser_that_logged_in_gets_the_dashboard_and_only_its_own_page_may_act() {
    let dash = Dash::up("shop", &project(env!("CARGO_BIN_EXE_proxy-probe")));
    let jar = dash.daemon.root.join("cookies.txt");
    let restart_web = serde_json::json!({"dir": dash.dir, "service": "web", "action": "restart"}).to_string();

    // Without the cookie (none, or a guessed one): 401 and what to run, for the page, the
    // event stream, the logs and every action.
    for cookie in [None, Some("locald_dashboard=0000"), Some("locald_dashboard=")] {
        for path in ["/", "/events", "/logs", "/app.js"] {
            let mut curl = dash.curl(&[]);
            curl.arg("-i");
            if let Some(cookie) = cookie {
                curl.args(["-H", &format!("Cookie: {cookie}")]);
            }
            let (status, _, body) = exchange(&curl.arg(dash.url(path)).output().unwrap());
            assert_eq!(status, 401, "{path} with {cookie:?}: {body}");
            assert!(body.contains("Run `locald dashboard`"), "{body}");
        }
    }
    let web_pid = dash.pid("shop", "web");
    let (status, _, _) = action(&dash, None, Some(&dash.origin()), &restart_web);
    assert_eq!(status, 401);

    // The login URL sets a host-only, script-proof, HTTPS-only, same-site cookie and sends the
    // browser on to `/`, so the token is in no later URL.
    let login = dash.login_url();
    let out = dash.curl(&[]).arg("-i").arg("-c").arg(&jar).arg(&login).output().unwrap();
    let (status, head, _) = exchange(&out);
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("\nlocation: /\n"), "{head}");
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap_or_else(|| panic!("{head}"));
    for attribute in ["; httponly", "; secure", "; samesite=strict", "; path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains("domain"), "a Domain would send it to every service: {cookie}");
    let token = login.rsplit_once("token=").unwrap().1;
    assert!(!cookie.contains(token), "{cookie}");
    // The token works once.
    let (status, _, body) = exchange(&dash.curl(&[]).arg("-i").arg(&login).output().unwrap());
    assert_eq!(status, 401, "a used login URL worked again: {body}");
    // A wrong token gets nothing either.
    let (status, head, _) =
        exchange(&dash.curl(&[]).arg("-i").arg(dash.url("/login?token=00")).output().unwrap());
    assert!(status == 401 && !head.contains("set-cookie"), "{head}");
    // Nothing of the secret or the token is in the daemon's log.
    let secret = std::fs::read_to_string(dash.daemon.state_dir().join("dashboard.secret")).unwrap();
    for file in std::fs::read_dir(dash.daemon.state_dir()).unwrap().flatten() {
        let content = std::fs::read(file.path()).unwrap_or_default();
        let content = String::from_utf8_lossy(&content);
        if file.file_name() != "dashboard.secret" {
            assert!(!content.contains(secret.trim()) && !content.contains(token), "{:?}", file.path());
        }
    }

    // With the cookie: the page, and the state on the event stream.
    let (status, _, body) =
        exchange(&dash.curl(&[]).arg("-i").arg("-b").arg(&jar).arg(dash.url("/")).output().unwrap());
    assert_eq!(status, 200);
    assert!(body.contains("<title>locald</title>"), "{body}");
    let out = dash
        .curl(&[])
        .args(["-N", "--max-time", "1"])
        .arg("-b")
        .arg(&jar)
        .arg(dash.url("/events"))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.starts_with("event: state\ndata: {"), "{events}");
    assert!(events.contains("\"name\":\"web\"") && events.contains("\"name\":\"worker\""), "{events}");

    // The browser's jar never sends the cookie to a service's name.
    let out = dash
        .curl(&["web.shop.localhost"])
        .arg("-b")
        .arg(&jar)
        .arg(format!("https://web.shop.localhost:{}/headers", dash.port))
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("host: web.shop.localhost"), "{seen}");
    assert!(!seen.contains("locald_dashboard"), "the service got the dashboard's cookie:\n{seen}");

    // A POST with the cookie but from another page (a service's, or none named) is refused and
    // changes nothing.
    let service_origin = format!("https://web.shop.localhost:{}", dash.port);
    for origin in [None, Some(service_origin.as_str()), Some("null"), Some("https://locald.localhost")] {
        let (status, _, body) = action(&dash, Some(&jar), origin, &restart_web);
        assert_eq!(status, 403, "{origin:?}: {body}");
    }
    assert_eq!(dash.pid("shop", "web"), web_pid, "a refused restart restarted");

    // From the dashboard's own page: done, and answered.
    let (status, _, body) = action(&dash, Some(&jar), Some(&dash.origin()), &restart_web);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\":true") && body.contains("web restarted"), "{body}");
    let restarted = wait_for(std::time::Duration::from_secs(10), || {
        dash.pid("shop", "web").filter(|pid| Some(*pid) != web_pid)
    });
    assert!(restarted.is_some(), "pid still {web_pid:?}");
    let stop = serde_json::json!({"dir": dash.dir, "service": "worker", "action": "stop"}).to_string();
    let (status, _, body) = action(&dash, Some(&jar), Some(&dash.origin()), &stop);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dash.daemon.service("shop", "worker")["state"], "stopped");
    let bogus = serde_json::json!({"dir": dash.dir, "service": "nope", "action": "stop"}).to_string();
    let (status, _, body) = action(&dash, Some(&jar), Some(&dash.origin()), &bogus);
    assert!(status == 400 && body.contains("no service \\\"nope\\\""), "{body}");
    let down = serde_json::json!({"dir": dash.dir, "action": "down"}).to_string();
    let (status, _, body) = action(&dash, Some(&jar), Some(&dash.origin()), &down);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dash.daemon.status(), serde_json::json!([]));
}

#[test]
fn the_secret_is_private_and_status_names_the_dashboard_once() {
    let dash = Dash::up(
        "solo",
        "[project]\nname = \"solo\"\n\n[services.job]\ncommand = [\"sleep\", \"3600\"]\nport = false\n",
    );
    use std::os::unix::fs::PermissionsExt;
    let secret = dash.daemon.state_dir().join("dashboard.secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dash.daemon.state_dir()).unwrap().permissions().mode() & 0o777, 0o700);
    let status = dash.daemon.ok(&["status"]);
    assert_eq!(status.matches("locald.localhost").count(), 1, "{status}");
    assert!(status.contains(&format!("dashboard: https://locald.localhost:{}", dash.port)), "{status}");
    // No display: `locald dashboard` prints the URL rather than trying a browser.
    let printed = dash.daemon.ok(&["dashboard"]);
    assert!(printed.trim().starts_with(&dash.url("/login?token=")), "{printed}");
}
