//! The dashboard in a real browser: headless Chromium (Debian's, through chromedriver) with
//! the local CA trusted in its NSS database opens the login URL of a real daemon with real
//! services, and sees the page follow them live: states, a crash without a reload, a log line
//! as it is written, the filter, and a restart clicked on the page. A screenshot is kept under
//! `target/artifacts/`. Needs no root; fails when Chromium or chromedriver is missing.

use std::time::Duration;

use locald_tests::dashboard::Dash;
use locald_tests::webdriver::Driver;

const SOON: Duration = Duration::from_secs(10);

fn project(backend: &str) -> String {
    format!(
        r#"[project]
name = "shop"

[services.web]
command = ["{backend}", "serve"]
health_check = {{ tcp = true, interval = "50ms", start_period = "30s" }}

[services.talker]
command = ["sh", "-c", "echo talker ready; while :; do if [ -f say ]; then cat say; cat say >&2; rm -f say; fi; sleep 0.05; done"]
port = false

[services.crasher]
command = ["sh", "-c", "echo crasher waiting; while [ ! -f crash ]; do sleep 0.05; done; echo about to crash >&2; exit 3"]
port = false
restart = "no"
"#
    )
}

/// The state the page shows for `service`, as a script for [`Driver::wait`].
fn state_is(service: &str, state: &str) -> String {
    format!("return document.querySelector('tr[data-service=\"{service}\"]')?.dataset.state === '{state}';")
}

#[test]
fn the_page_follows_the_services_live_and_restarts_one_on_a_click() {
    let dash = Dash::up("shop", &project(env!("CARGO_BIN_EXE_proxy-probe")));
    let home = dash.daemon.root.join("home");
    let trust = dash.daemon.ok(&["trust", "--user-only"]);
    assert!(trust.contains("trusted in NSS database"), "{trust}");
    let browser = Driver::start(&home);

    // The login URL opens the page and leaves no token in the address bar.
    browser.goto(&dash.login_url());
    browser.wait(SOON, "the page", "return document.title === 'locald';");
    assert_eq!(browser.current_url(), dash.url("/"));
    for (service, state) in [("web", "healthy"), ("talker", "running"), ("crasher", "running")] {
        browser.wait(SOON, &format!("{service} {state}"), &state_is(service, state));
    }
    let url = browser.script("return document.querySelector('tr[data-service=\"web\"] td.url a').href;");
    assert_eq!(url, format!("https://shop.localhost:{}/", dash.port));

    // A crash turns the open page's row to crashed, with the last lines on its card.
    std::fs::write(dash.dir.join("crash"), "").unwrap();
    browser.wait(SOON, "crasher crashed", &state_is("crasher", "crashed"));
    let card = browser.wait(
        SOON,
        "the crashed card's last lines",
        "const t = document.querySelector('tr[data-service=\"crasher\"] + tr.lastlines td').textContent; \
         return t.includes('about to crash') && t;",
    );
    assert!(card.as_str().unwrap().contains("about to crash"), "{card}");

    // The project's interleaved log shows a line as the service writes it, stderr coloured.
    browser.wait(
        SOON,
        "the log backlog",
        "return document.getElementById('log').textContent.includes('talker ready');",
    );
    std::fs::write(dash.dir.join("say"), "hello from the talker\n").unwrap();
    browser.wait(
        Duration::from_secs(3),
        "the new log line",
        "return [...document.querySelectorAll('#log .line.err')].some(l => l.textContent.includes('hello from the talker'));",
    );
    // The filter narrows the view to matching lines.
    browser.type_into("#filter", "hello from");
    let shown = browser.script(
        "return [...document.querySelectorAll('#log .line')].filter(l => !l.hidden).map(l => l.textContent);",
    );
    let shown: Vec<&str> = shown.as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(!shown.is_empty() && shown.iter().all(|l| l.contains("hello from")), "{shown:?}");

    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/artifacts")).unwrap();
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/artifacts/dashboard.png");
    std::fs::write(shot, browser.screenshot()).unwrap();

    // Restart clicked on the page: answered there, and the pid shown changes.
    let pid = |browser: &Driver| {
        browser.script("return document.querySelector('tr[data-service=\"web\"] td.pid').textContent;")
    };
    let before = pid(&browser);
    assert_eq!(before.as_str().and_then(|p| p.parse::<u64>().ok()), dash.pid("shop", "web"));
    browser.click("tr[data-service=\"web\"] button[data-action=\"restart\"]");
    browser.wait(
        SOON,
        "the answer",
        "return document.getElementById('result').textContent === 'web restarted';",
    );
    browser.wait(
        SOON,
        "a new pid",
        &format!(
            "const p = document.querySelector('tr[data-service=\"web\"] td.pid').textContent; \
             return p !== {before} && p !== '-' && p;"
        ),
    );
    let after = pid(&browser);
    assert_eq!(after.as_str().and_then(|p| p.parse::<u64>().ok()), dash.pid("shop", "web"));
}
