//! Two checkouts of one repository — the main one and a `git worktree add` — up at once, each
//! with its own names, ports and state, each answering through the proxy with its own files.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use locald_tests::daemon::Daemon;

const TOML: &str = r#"[project]
name = "shop"

[services.web]
command = "exec python3 -m http.server --bind 127.0.0.1 $PORT"
health_check = { tcp = true, interval = "100ms", retries = 50 }
stop_timeout = "2s"
"#;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=locald",
            "-c",
            "user.email=locald@localhost",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", locald_tests::text(&out));
}

/// The proxy's plain HTTP port, from `up`'s note when it is not on 80.
fn http_port(up: &str) -> u16 {
    up.lines()
        .find_map(|l| {
            l.strip_prefix("proxy on ports ")?.split(" and ").nth(1)?.split(' ').next()?.parse().ok()
        })
        .unwrap_or(80)
}

fn get(port: u16, host: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_linked_worktree_runs_beside_the_main_checkout_at_its_own_names() {
    let daemon = Daemon::new();
    let main = daemon.project("shop", TOML);
    std::fs::write(main.join("index.html"), "served from main\n").unwrap();
    git(&main, &["init", "-q"]);
    git(&main, &["add", "."]);
    git(&main, &["commit", "-qm", "shop"]);
    let feature = daemon.root.join("projects/shop-login");
    git(&main, &["worktree", "add", "-q", "-b", "Feature/Login", feature.to_str().unwrap()]);
    std::fs::write(feature.join("index.html"), "served from the worktree\n").unwrap();

    let up_main = daemon.ok(&["up", main.to_str().unwrap()]);
    let up_feature = daemon.ok(&["up", feature.to_str().unwrap()]);
    assert!(up_main.contains("shop is ready"), "{up_main}");
    assert!(up_feature.contains("shop@feature-login (worktree of "), "{up_feature}");
    assert!(up_feature.contains(", branch Feature/Login) is ready"), "{up_feature}");

    let status = daemon.status();
    let projects = status.as_array().unwrap();
    assert_eq!(projects.len(), 2, "both checkouts are up: {status}");
    let of = |dir: &Path| {
        let dir = dir.canonicalize().unwrap();
        projects.iter().find(|p| Path::new(p["dir"].as_str().unwrap()) == dir).unwrap().clone()
    };
    let (m, f) = (of(&main), of(&feature));
    assert_eq!(m["domain"], "shop.localhost");
    assert!(m.get("checkout").is_none(), "the main checkout is unchanged: {m}");
    assert_eq!(f["domain"], "feature-login.shop.localhost");
    assert_eq!(f["checkout"]["branch"], "Feature/Login");
    assert_eq!(f["checkout"]["main"], main.canonicalize().unwrap().to_str().unwrap());
    assert_ne!(m["services"][0]["port"], f["services"][0]["port"], "ports of their own");
    assert!(f["services"][0]["url"].as_str().unwrap().starts_with("https://feature-login.shop.localhost"));

    let port = http_port(&up_feature);
    let from_main = get(port, "shop.localhost");
    assert!(from_main.contains("served from main"), "{from_main}");
    let from_feature = get(port, "feature-login.shop.localhost");
    assert!(from_feature.contains("served from the worktree"), "{from_feature}");

    let table = daemon.ok(&["status"]);
    assert!(table.contains("shop@feature-login: worktree of "), "{table}");

    // Each has its own state: taking one down leaves the other up.
    daemon.ok(&["down", feature.to_str().unwrap()]);
    assert!(get(port, "shop.localhost").contains("served from main"));
}
