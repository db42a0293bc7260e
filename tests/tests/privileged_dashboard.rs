//! The dashboard is its user's only: port 443 on 127.0.0.1 is open to every user of the machine,
//! so another local user reaching `https://locald.localhost` — the real proxy on the real port,
//! through the setuid shim, in a fresh network namespace — gets 401 and the line saying to run
//! `locald dashboard` for the page, the event stream, the logs and every action, with and
//! without a guessed cookie, and none of the actions happens. Runs as root; without root it
//! fails under LOCALD_REQUIRE_PRIVILEGED=1.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use locald_tests::proxy::{Scene, project_toml};
use locald_tests::{User, privileged, text};

const ORIGIN: &str = "https://locald.localhost";
const LOG_IN: &str = "Run `locald dashboard` to open it.";

/// curl as `user` (no supplementary groups, an empty environment), trusting the local CA and
/// resolving the dashboard's name to the proxy on 443.
fn curl_as(user: &User, ca: &Path) -> Command {
    let mut command = Command::new("curl");
    command.env_clear().env("PATH", "/usr/bin:/bin").uid(user.uid).gid(user.gid);
    command.args(["-sS", "-i", "--max-time", "20", "--cacert"]).arg(ca);
    command.args(["--resolve", "locald.localhost:443:127.0.0.1"]);
    command
}

/// Status and body of one `curl -i` exchange.
fn exchange(command: &mut Command) -> (u16, String, String) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "curl failed: {}", text(&out));
    let all = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = all.split_once("\n\n").unwrap_or((&all, ""));
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{all}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Every service's (state, pid), in order.
fn services(scene: &Scene) -> Vec<(String, String, Option<u64>)> {
    let status: serde_json::Value = serde_json::from_str(&scene.ok(&["status", "--json"])).unwrap();
    let services = status[0]["services"].as_array().unwrap_or_else(|| panic!("{status}"));
    services
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
                s["pid"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn another_local_user_gets_401_for_everything_and_changes_nothing() {
    let Some(p) = privileged() else { return };
    let worker = "[services.worker]\ncommand = \"echo worker up; exec sleep 3600\"\nport = false\n";
    let scene = Scene::new(p, "dashboard-other-user", &project_toml("shop", worker));
    let up = scene.ok(&["up"]);
    assert!(up.contains("https://shop.localhost "), "not on 443:\n{up}");
    // The CA certificate, where the other user can read it (the state dir is the owner's only).
    let ca = scene.dir.join("ca-for-everyone.pem");
    std::fs::copy(scene.ca(), &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let intruder = &p.other_user;

    // The control: the daemon's own user, logged in, gets the page on 443 from the same proxy.
    let login = scene.ok(&["dashboard", "--print"]).trim().to_owned();
    assert!(login.starts_with("https://locald.localhost/login?token="), "{login}");
    let jar: PathBuf = scene.dir.join("owner-cookies.txt");
    let (status, head, _) = exchange(curl_as(&p.user, &ca).arg("-c").arg(&jar).arg(&login));
    assert_eq!(status, 303, "{head}");
    let (status, _, body) = exchange(curl_as(&p.user, &ca).arg("-b").arg(&jar).arg(format!("{ORIGIN}/")));
    assert!(status == 200 && body.contains("<title>locald</title>"), "{status}: {body}");
    let before = services(&scene);
    assert!(
        before.iter().all(|(_, state, pid)| pid.is_some() && (state == "healthy" || state == "running")),
        "{before:?}"
    );

    // The intruder can read neither the secret nor the daemon's socket.
    let secret = scene.dir.join("state/locald/dashboard.secret");
    assert!(secret.is_file(), "no secret at {}", secret.display());
    let out = Command::new("cat").arg(&secret).uid(intruder.uid).gid(intruder.gid).output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    let out = Command::new(p.bin("locald"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("XDG_RUNTIME_DIR", scene.dir.join("run"))
        .env("XDG_STATE_HOME", scene.dir.join("state"))
        .env("HOME", scene.dir.join("home"))
        .env("LOCALD_SHIM", p.shim())
        .args(["dashboard", "--print"])
        .uid(intruder.uid)
        .gid(intruder.gid)
        .output()
        .unwrap();
    assert!(!out.status.success() && !text(&out).contains("token="), "{}", text(&out));

    // No cookie, a guessed one of the secret's shape, an empty one, and the owner's cookie name
    // with the used login token as its value.
    let token = login.rsplit_once("token=").unwrap().1.to_owned();
    let guesses = [
        None,
        Some(format!("locald_dashboard={}", "0123456789abcdef".repeat(4))),
        Some("locald_dashboard=".to_owned()),
        Some(format!("locald_dashboard={token}")),
    ];
    for cookie in &guesses {
        let with = |command: &mut Command| {
            if let Some(cookie) = cookie {
                command.args(["-H", &format!("Cookie: {cookie}")]);
            }
        };
        for path in ["/", "/index.html", "/app.js", "/style.css", "/events", "/logs", "/logs?service=web"] {
            let mut curl = curl_as(intruder, &ca);
            with(&mut curl);
            let (status, head, body) = exchange(curl.arg(format!("{ORIGIN}{path}")));
            assert_eq!(status, 401, "{path} with {cookie:?}: {head}{body}");
            assert!(body.lines().any(|l| l.ends_with(LOG_IN)), "{path}: {body}");
            assert!(!head.contains("set-cookie") && !body.contains("event:"), "{path}: {head}{body}");
        }
        // Every action, from the dashboard's own origin.
        let actions = [
            serde_json::json!({"dir": scene.project, "service": "web", "action": "restart"}),
            serde_json::json!({"dir": scene.project, "service": "web", "action": "stop"}),
            serde_json::json!({"dir": scene.project, "service": "worker", "action": "stop"}),
            serde_json::json!({"dir": scene.project, "service": "worker", "action": "start"}),
            serde_json::json!({"dir": scene.project, "action": "down"}),
        ];
        for action in actions {
            let mut curl = curl_as(intruder, &ca);
            with(&mut curl);
            curl.args([
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-H",
                &format!("Origin: {ORIGIN}"),
            ]);
            let (status, _, body) =
                exchange(curl.args(["--data", &action.to_string()]).arg(format!("{ORIGIN}/action")));
            assert_eq!(status, 401, "{action} with {cookie:?}: {body}");
            assert!(body.lines().any(|l| l.ends_with(LOG_IN)), "{body}");
        }
    }
    // The owner's used login URL does not let the intruder in either.
    let (status, head, _) = exchange(curl_as(intruder, &ca).arg(&login));
    assert!(status == 401 && !head.contains("set-cookie"), "{head}");

    // Nothing happened: the same services, in the same states, with the same pids.
    assert_eq!(services(&scene), before, "an intruder's action had an effect");
    // And the owner still gets in: the secret was not rotated or locked out.
    let (status, _, _) = exchange(curl_as(&p.user, &ca).arg("-b").arg(&jar).arg(format!("{ORIGIN}/")));
    assert_eq!(status, 200);
}
