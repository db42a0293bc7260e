//! `locald.toml` errors as a user sees them: one line, file:line:col, non-zero exit, no daemon
//! state left behind; plus `config show`, `completions` and `--version`.

use locald_tests::daemon::Daemon;
use locald_tests::text;
use rstest::rstest;

#[rstest]
#[case::unknown_key("[services.web]\ncommand = \"x\"\nprot = 3\n", "locald.toml:3:1: unknown field `prot`")]
#[case::bad_restart(
    "[services.web]\ncommand = \"x\"\nrestart = \"sometimes\"\n",
    "locald.toml:3:11: unknown variant `sometimes`"
)]
#[case::missing_dep(
    "[services.web]\ncommand = \"x\"\ndepends_on = [\"db\"]\n",
    "locald.toml:3:15: \"web\" depends on unknown service \"db\""
)]
#[case::cycle(
    "[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n[services.b]\ncommand = \"x\"\ndepends_on = [\"a\"]\n",
    "locald.toml:6:15: dependency cycle: a -> b -> a"
)]
#[case::bad_port("[services.web]\ncommand = \"x\"\nport = 70000\n", "locald.toml:3:8:")]
#[case::interpolation(
    "[services.web]\ncommand = \"serve ${services.api.url}\"\n",
    "locald.toml:2:18: no service named \"api\""
)]
fn config_errors_are_one_line_with_position(#[case] toml: &str, #[case] expected: &str) {
    let daemon = Daemon::new();
    let dir = daemon.project("bad", toml);
    let out = daemon.run(&["up", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    let path = dir.canonicalize().unwrap().join(expected);
    let want = format!("locald: {}", path.display());
    assert!(stderr.starts_with(&want), "expected prefix {want:?}, got {stderr:?}");
    assert_eq!(daemon.status(), serde_json::json!([]), "a bad config must not leave a project behind");
}

#[test]
fn a_directory_without_config_is_refused() {
    let daemon = Daemon::new();
    let empty = daemon.root.join("projects/empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = daemon.run(&["up", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no locald.toml or Procfile here"), "{}", text(&out));
}

#[test]
fn config_show_has_assigned_ports_and_interpolated_env() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "shop",
        "[services.web]\ncommand = \"x\"\nenv = { API = \"${services.api.url}\" }\n[services.api]\ncommand = \"y\"\n",
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["config", "show", dir.to_str().unwrap()])).unwrap();
    let services = json["services"].as_array().unwrap();
    let api = services.iter().find(|s| s["name"] == "api").unwrap();
    let web = services.iter().find(|s| s["name"] == "web").unwrap();
    let api_port = api["port"].as_u64().unwrap();
    assert!(api_port >= 1024);
    let env = web["env"].as_array().unwrap();
    assert!(env.contains(&serde_json::json!(["API", format!("http://127.0.0.1:{api_port}")])), "{env:?}");
    assert_eq!(web["domain"], "shop.localhost");
    assert_eq!(api["domain"], "api.shop.localhost");
}

#[test]
fn completions_and_version() {
    let daemon = Daemon::new();
    let bash = daemon.ok(&["completions", "bash"]);
    assert!(bash.contains("locald") && bash.contains("logs"), "no completion for subcommands");
    let version = daemon.ok(&["--version"]);
    assert_eq!(version.trim(), format!("locald {}", env!("CARGO_PKG_VERSION")));
    let out = daemon.run(&["completions", "nosuchshell"]);
    assert!(!out.status.success());
}

#[test]
fn a_port_already_in_use_fails_up_naming_the_holder() {
    let daemon = Daemon::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = daemon.project("busy", &format!("[services.web]\ncommand = \"sleep 60\"\nport = {port}\n"));
    let out = daemon.run(&["up", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("wants port {port}, which is already in use")), "{stderr}");
    assert_eq!(daemon.status(), serde_json::json!([]), "nothing was started");
}

/// Image services fail `up` before anything starts, with one line naming the file, the service
/// and what to do.
#[rstest::rstest]
#[case::registry_never_pulled(
    "image = \"postgres:16\"\npull = \"never\"\n",
    "image docker.io/library/postgres:16 is not in the local store and `pull = \"never\"`: run `locald pull` first"
)]
#[case::missing("image = \"./nope.tar\"\n", "nope.tar does not exist")]
#[case::directory_without_command("image = \"./rootfs\"\n", "has no command of its own")]
#[case::no_shim("image = \"./rootfs\"\ncommand = \"true\"\n", "needs the setuid locald-shim")]
fn image_services_that_cannot_run_are_refused_up_front(#[case] service: &str, #[case] expected: &str) {
    let daemon = Daemon::new();
    let dir =
        daemon.project("ct", &format!("[services.db]\n{service}\n[services.web]\ncommand = \"sleep 60\"\n"));
    std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
    let out = daemon
        .cmd()
        .env("LOCALD_SHIM", "/nonexistent/locald-shim")
        .args(["up", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    assert!(stderr.contains("service \"db\""), "the service is named: {stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in {stderr:?}");
    assert_eq!(daemon.status(), serde_json::json!([]), "nothing may have started");
}

/// `locald completions bash | head -c0`: the reader is gone before locald writes. Rust ignores
/// SIGPIPE, so `println!` would panic on EPIPE; the CLI must end as `ls` does, quietly.
#[rstest]
#[case::completions(&["completions", "bash"])]
#[case::status(&["status"])]
fn a_closed_stdout_ends_the_cli_quietly(#[case] args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let daemon = Daemon::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = daemon.cmd().args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "locald {args:?} panicked on a closed stdout: {stderr}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
        "locald {args:?} should end by SIGPIPE like ls: {:?} {stderr}",
        out.status
    );
}
