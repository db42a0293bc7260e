//! Without a usable shim the proxy still serves, on unprivileged ports, and every command that
//! shows URLs says which port and why. Needs no root.

use std::process::Command;

use locald_tests::daemon::Daemon;
use locald_tests::text;

#[test]
fn without_a_shim_the_proxy_serves_on_fallback_ports_and_says_so() {
    let daemon = Daemon::new();
    let backend = env!("CARGO_BIN_EXE_proxy-probe");
    let dir = daemon.project(
        "fallback",
        &format!(
            "[project]\nname = \"fallback\"\n\n[services.web]\ncommand = [\"{backend}\", \"serve\"]\n\
             health_check = {{ tcp = true, interval = \"50ms\", start_period = \"30s\" }}\n"
        ),
    );
    // A shim path that does not exist: discovery refuses it, the proxy falls back.
    let out =
        daemon.cmd().env("LOCALD_SHIM", "/nonexistent/locald-shim").args(["up"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let up = String::from_utf8_lossy(&out.stdout);
    assert!(up.contains("not 443/80"), "{up}");

    let url = daemon.service("fallback", "web")["url"].as_str().unwrap().to_owned();
    let port: u16 = url
        .strip_prefix("https://fallback.localhost:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("URL without the fallback port: {url}"));
    assert!(port >= 1024, "{url}");
    let status = daemon.ok(&["status"]);
    assert!(status.contains(&format!("proxy on ports {port} (https)")), "{status}");
    let doctor = daemon.run(&["doctor"]);
    assert!(text(&doctor).contains(&format!("serving https on {port}")), "{}", text(&doctor));

    let ca = daemon.ok(&["ca"]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", ca.trim(), "--resolve"])
        .arg(format!("fallback.localhost:{port}:127.0.0.1"))
        .arg(format!("{url}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from backend\n");
}
