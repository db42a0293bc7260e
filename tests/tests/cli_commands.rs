//! Every project command against a real daemon: up (and attaching), status, logs, stop, start,
//! restart, down, several projects at once, server start/stop.

use std::os::unix::fs::PermissionsExt;

use locald_tests::daemon::{Daemon, pids_with_arg, sleep_token, wait_pids};
use locald_tests::text;

/// A service listening on its assigned port (python's http.server) with a tcp health check,
/// and a plain worker (no port: it serves nothing) that depends on it.
fn web_and_worker(token: &str) -> String {
    format!(
        r#"
[services.web]
command = "exec python3 -m http.server --bind 127.0.0.1 $PORT"
health_check = {{ tcp = true, interval = "100ms", retries = 50 }}
stop_timeout = "2s"

[services.worker]
command = ["sh", "-c", "echo worker sees $WEB; exec sleep {token}"]
env = {{ WEB = "${{services.web.url}}" }}
depends_on = ["web"]
stop_timeout = "2s"
port = false
"#
    )
}

#[test]
fn up_status_logs_stop_start_restart_down() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project("shop", &web_and_worker(&token));
    let dir_arg = dir.to_str().unwrap();

    let up = daemon.ok(&["up", dir_arg]);
    assert!(up.contains("shop is ready"), "{up}");
    let web = daemon.service("shop", "web");
    assert_eq!(web["state"], "healthy");
    assert_eq!(web["healthy"], true);
    let port = web["port"].as_u64().unwrap() as u16;
    // The health check passed, so the assigned port really serves.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("web listens on its assigned port");
    let worker = daemon.service("shop", "worker");
    assert_eq!(worker["state"], "running");
    assert!(worker["url"].is_null(), "a worker gets no URL: {worker}");
    assert!(!up.contains("worker.shop.localhost"), "{up}");
    assert_eq!(wait_pids(&token, 1), vec![worker["pid"].as_i64().unwrap() as i32]);

    // Interpolated URL reached the worker; logs are prefixed by service.
    let logs = daemon.ok(&["logs", "-C", dir_arg, "worker"]);
    assert!(logs.contains(&format!("worker | worker sees http://127.0.0.1:{port}")), "{logs}");
    let tail = daemon.ok(&["logs", "-C", dir_arg, "--tail", "1", "worker"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let future = daemon.ok(&["logs", "-C", dir_arg, "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future, "");
    let recent = daemon.ok(&["logs", "-C", dir_arg, "--since", "10m", "worker"]);
    assert!(recent.contains("worker sees"), "{recent}");
    let out = daemon.run(&["logs", "-C", dir_arg, "--since", "yesterday-ish"]);
    assert!(!out.status.success() && text(&out).lines().count() == 1, "{}", text(&out));
    let stamped = daemon.ok(&["logs", "-C", dir_arg, "-t", "--tail", "1", "worker"]);
    assert!(stamped.starts_with("20") && stamped.contains('T'), "{stamped}");

    // A second `up` attaches instead of starting a second instance.
    let again = daemon.ok(&["up", dir_arg]);
    assert!(again.contains("already up"), "{again}");
    assert_eq!(pids_with_arg(&token).len(), 1, "up twice must not duplicate");

    daemon.ok(&["stop", "-C", dir_arg, "worker"]);
    assert_eq!(daemon.service("shop", "worker")["state"], "stopped");
    assert!(pids_with_arg(&token).is_empty(), "stop leaves no process");

    daemon.ok(&["start", "-C", dir_arg, "worker"]);
    let started = locald_tests::wait_for(std::time::Duration::from_secs(10), || {
        (daemon.service("shop", "worker")["state"] == "running").then_some(())
    });
    assert!(started.is_some(), "worker did not start again");
    let first = wait_pids(&token, 1);

    daemon.ok(&["restart", "-C", dir_arg, "worker"]);
    let restarted = locald_tests::wait_for(std::time::Duration::from_secs(10), || {
        let pids = pids_with_arg(&token);
        (pids.len() == 1 && pids != first).then_some(())
    });
    assert!(restarted.is_some(), "restart gives exactly one new process");
    assert_eq!(daemon.service("shop", "worker")["restarts"], 1);

    let out = daemon.run(&["stop", "-C", dir_arg, "nope"]);
    assert!(!out.status.success() && text(&out).contains("no service \"nope\""), "{}", text(&out));

    daemon.ok(&["down", dir_arg]);
    assert_eq!(daemon.status(), serde_json::json!([]));
    assert!(pids_with_arg(&token).is_empty(), "down leaves no process");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "web is gone");
    // Logs outlive the project.
    assert!(daemon.ok(&["logs", "-C", dir_arg, "worker"]).contains("worker sees"));
}

#[test]
fn two_projects_run_side_by_side_with_their_own_ports_and_domains() {
    let daemon = Daemon::new();
    let (t1, t2) = (sleep_token(), sleep_token());
    let a = daemon.project("alpha", &web_and_worker(&t1));
    let b = daemon.project("beta", &web_and_worker(&t2));
    daemon.ok(&["up", a.to_str().unwrap()]);
    daemon.ok(&["up", b.to_str().unwrap()]);
    let (wa, wb) = (daemon.service("alpha", "web"), daemon.service("beta", "web"));
    assert_ne!(wa["port"], wb["port"]);
    assert_eq!(public(&wa["url"]), "https://alpha.localhost");
    assert_eq!(public(&wb["url"]), "https://beta.localhost");
    let table = daemon.ok(&["status"]);
    assert!(table.contains("alpha") && table.contains("beta"), "{table}");
    daemon.ok(&["down", a.to_str().unwrap()]);
    assert!(pids_with_arg(&t1).is_empty());
    assert_eq!(wait_pids(&t2, 1).len(), 1, "the other project keeps running");
}

#[test]
fn failing_service_fails_up_with_its_last_lines() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "broken",
        "[services.web]\ncommand = \"echo cannot bind: port in use >&2; exit 3\"\nrestart = \"no\"\n\
         health_check = { tcp = true, interval = \"100ms\" }\n",
    );
    let out = daemon.run(&["up", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("service web failed: exited with status 3"), "{stderr}");
    assert!(stderr.contains("cannot bind: port in use"), "{stderr}");
}

#[test]
fn procfile_project_runs() {
    let daemon = Daemon::new();
    let dir = daemon.root.join("projects/procs");
    std::fs::create_dir_all(&dir).unwrap();
    let token = sleep_token();
    std::fs::write(dir.join("Procfile"), format!("worker: echo hello $GREETING; exec sleep {token}\n"))
        .unwrap();
    std::fs::write(dir.join(".env"), "GREETING=from-dotenv\n").unwrap();
    daemon.ok(&["up", dir.to_str().unwrap()]);
    wait_pids(&token, 1);
    let ok = locald_tests::wait_for(std::time::Duration::from_secs(5), || {
        daemon.ok(&["logs", "-C", dir.to_str().unwrap()]).contains("hello from-dotenv").then_some(())
    });
    assert!(ok.is_some());
}

#[test]
fn socket_is_private_and_a_second_daemon_refuses() {
    let daemon = Daemon::new();
    daemon.ok(&["status"]);
    let socket = daemon.socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(socket.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let out = daemon.run(&["server", "start"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already running"), "{}", text(&out));
    assert!(daemon.ok(&["server", "stop"]).contains("daemon stopped"));
    assert!(!socket.exists(), "a stopped daemon removes its socket");
    assert!(daemon.ok(&["server", "stop"]).contains("no daemon running"));
}

/// `server stop` returns once the proxy's ports are free and its connections closed: a script
/// that stops the daemon and binds 443 or 80 next (another daemon, nginx, a test) never finds
/// them taken by a daemon that said it stopped but has not exited yet.
#[test]
fn server_stop_returns_with_the_proxy_ports_free() {
    use std::io::Read;
    let daemon = Daemon::new();
    let dir = daemon.project("ports", "[services.idle]\ncommand = \"sleep 600\"\nport = false\n");
    daemon.ok(&["up", dir.to_str().unwrap()]);
    // "proxy on ports 8443 (https) and 8080 (http), not 443/80: …"
    let status = daemon.ok(&["status"]);
    let line =
        status.lines().find(|l| l.starts_with("proxy on ports ")).unwrap_or_else(|| panic!("{status}"));
    let ports: Vec<u16> = line.split(' ').filter_map(|word| word.parse().ok()).take(2).collect();
    assert_eq!(ports.len(), 2, "{line}");
    // A client connection the proxy has accepted and keeps open (it sends nothing yet).
    let mut held = std::net::TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
    assert!(daemon.ok(&["server", "stop"]).contains("daemon stopped"));
    for port in &ports {
        let bound = std::net::TcpListener::bind(("127.0.0.1", *port));
        assert!(bound.is_ok(), "port {port} still taken after `server stop` returned: {bound:?}");
    }
    held.set_nonblocking(true).unwrap();
    let read = held.read(&mut [0u8; 1]);
    assert!(matches!(read, Ok(0)), "the proxy's client connection still open after stop: {read:?}");
}

#[test]
fn oversized_request_is_refused_before_parsing() {
    use std::io::{BufRead, Write};
    let daemon = Daemon::new();
    daemon.ok(&["status"]);
    let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    // More than the cap, no newline: the daemon must answer without waiting for the end.
    let junk = vec![b'x'; (1 << 20) + 10];
    let _ = stream.write_all(&junk);
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer).unwrap();
    assert!(answer.contains("larger than"), "{answer}");
}

#[test]
fn logs_follow_streams_new_lines_as_they_come() {
    use std::io::BufRead;
    let daemon = Daemon::new();
    let dir = daemon.project(
        "ticker",
        "[services.tick]\ncommand = \"i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done\"\nstop_timeout = \"1s\"\nport = false\n",
    );
    daemon.ok(&["up", dir.to_str().unwrap()]);
    // --tail 0: nothing from the files, so every line read below was streamed live.
    let mut follower = daemon
        .cmd()
        .args(["logs", "-f", "--tail", "0", "-C", dir.to_str().unwrap(), "tick"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut ticks = Vec::new();
    while ticks.len() < 3 {
        let line = lines.next().expect("follower ended early").unwrap();
        if let Some(n) = line.strip_prefix("tick | tick ") {
            ticks.push(n.parse::<u64>().unwrap());
        }
    }
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "followed lines in order, none skipped: {ticks:?}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    // A follower that went away does not disturb the daemon.
    assert_eq!(daemon.service("ticker", "tick")["state"], "running");
}

#[test]
fn concurrent_ups_start_one_instance_and_up_restarts_what_was_stopped() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon
        .project("once", &format!("[services.app]\ncommand = [\"sleep\", \"{token}\"]\nport = false\n"));
    daemon.ok(&["status"]);
    let ups: Vec<_> =
        (0..4).map(|_| daemon.cmd().args(["up", dir.to_str().unwrap()]).spawn().unwrap()).collect();
    for mut up in ups {
        assert!(up.wait().unwrap().success());
    }
    assert_eq!(wait_pids(&token, 1).len(), 1, "four concurrent ups, one instance");

    daemon.ok(&["stop", "-C", dir.to_str().unwrap(), "app"]);
    assert!(pids_with_arg(&token).is_empty());
    let toml = std::fs::read_to_string(dir.join("locald.toml")).unwrap();
    std::fs::write(dir.join("locald.toml"), format!("{toml}stop_timeout = \"2s\"\n")).unwrap();
    let out = daemon.ok(&["up", dir.to_str().unwrap()]);
    assert!(out.contains("already up"), "{out}");
    assert!(out.contains("note: applied locald.toml: restarted app (changed)"), "{out}");
    assert_eq!(daemon.service("once", "app")["state"], "running");
    assert_eq!(wait_pids(&token, 1).len(), 1);
}

#[test]
fn a_failed_one_shot_dependency_fails_its_dependents_and_up() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "migrate",
        "[services.migrate]\ncommand = \"echo migration 7 failed; exit 1\"\nrestart = \"no\"\n\
         [services.app]\ncommand = [\"sleep\", \"30\"]\ndepends_on = { migrate = \"completed_successfully\" }\n",
    );
    let out = daemon.run(&["up", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("service migrate failed: exited with status 1"), "{stderr}");
    assert!(stderr.contains("migration 7 failed"), "{stderr}");
    let failed = locald_tests::wait_for(std::time::Duration::from_secs(5), || {
        (daemon.service("migrate", "app")["state"] == "failed").then_some(())
    });
    assert!(failed.is_some(), "app must not start without its migration");
    assert!(daemon.service("migrate", "app")["pid"].is_null());
}

/// A service's proxy URL without the port, which is 443 only where the shim gave the proxy one.
fn public(url: &serde_json::Value) -> String {
    let url = url.as_str().expect("url is a string");
    match url.rsplit_once(':') {
        Some((base, port)) if port.bytes().all(|b| b.is_ascii_digit()) => base.to_owned(),
        _ => url.to_owned(),
    }
}

#[test]
fn a_ca_with_wider_constraints_is_replaced_with_a_one_line_notice() {
    let daemon = Daemon::new();
    // What an older locald made: a CA that could also sign names under `internal`.
    let dir = daemon.root.join("home/.local/share/locald/ca");
    let old = locald_ca::LocalCa::load_or_create(&dir, &["internal".to_owned(), "test".to_owned()]).unwrap();
    let old_pem = std::fs::read_to_string(old.cert_path()).unwrap();
    let out = daemon.run(&["ca"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one notice, nothing else:\n{stderr}");
    assert!(
        lines[0].starts_with("locald: replaced the local CA in ")
            && lines[0].contains("internal")
            && lines[0].contains("sudo locald trust"),
        "{stderr}"
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_ne!(std::fs::read_to_string(path).unwrap(), old_pem, "the CA was not replaced");
}

/// A daemon started from a script's background job (SIGINT and SIGQUIT ignored, as a
/// non-interactive shell does for `&`) does not hand that on: its services stop on SIGINT.
#[test]
fn signals_ignored_by_whoever_started_the_daemon_are_not_handed_to_services() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "sigs",
        "[services.show]\ncommand = [\"grep\", \"SigIgn\", \"/proc/self/status\"]\nrestart = \"no\"\nport = false\n",
    );
    // `trap ''` ignores them in the shell, and an ignored signal survives exec into the CLI and
    // on into the daemon it starts; the environment is the fixture's own.
    let fixture = daemon.cmd();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' INT QUIT; exec \"$0\" up \"$1\"")
        .arg(locald_tests::built_bin("locald"))
        .arg(&dir)
        .env_clear()
        .envs(fixture.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(&daemon.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shown = locald_tests::wait_for(std::time::Duration::from_secs(10), || {
        let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap(), "show"]);
        logs.lines().find_map(|l| l.split("SigIgn:").nth(1).map(|m| m.trim().to_owned()))
    })
    .expect("the service's SigIgn line");
    let mask = u64::from_str_radix(&shown, 16).unwrap();
    for signal in [libc_sig::SIGINT, libc_sig::SIGQUIT] {
        assert_eq!(mask & (1 << (signal - 1)), 0, "signal {signal} ignored in the service: SigIgn {shown}");
    }
}

mod libc_sig {
    pub const SIGINT: u64 = 2;
    pub const SIGQUIT: u64 = 3;
}
