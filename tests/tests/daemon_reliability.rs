//! What users of compose-like tools complain about, shown not to happen: orphans or duplicates
//! after a daemon crash, restart storms, unhealthy services left alone, children surviving a
//! stop, lost log lines.

use std::time::{Duration, Instant};

use locald_tests::daemon::{Daemon, pids_with_arg, sleep_token, wait_pids};
use locald_tests::{text, wait_for};

#[test]
fn daemon_killed_with_sigkill_leaves_no_orphan_and_no_duplicate() {
    let daemon = Daemon::new();
    let (leader, grandchild) = (sleep_token(), sleep_token());
    let dir = daemon.project(
        "crashy",
        &format!("[services.worker]\ncommand = \"sleep {grandchild} & exec sleep {leader}\"\nstop_timeout = \"1s\"\nport = false\n"),
    );
    daemon.ok(&["up", dir.to_str().unwrap()]);
    let before = (wait_pids(&leader, 1), wait_pids(&grandchild, 1));

    let pid = daemon.daemon_pid().expect("daemon running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let gone = wait_for(Duration::from_secs(5), || daemon.daemon_pid().is_none().then_some(()));
    assert!(gone.is_some(), "daemon did not die");
    assert_eq!(pids_with_arg(&leader), before.0, "services outlive a killed daemon until the next one");

    // The next command starts a new daemon, which clears the old processes and brings the
    // project back: exactly one of each, none of the old ones.
    let worker = daemon.service("crashy", "worker");
    assert_eq!(worker["state"], "running");
    // One instance of each after recovery (a second would make wait_pids fail).
    let after = (wait_pids(&leader, 1), wait_pids(&grandchild, 1));
    assert_ne!(after.0, before.0, "the old leader was stopped");
    assert_ne!(after.1, before.1, "the old grandchild was stopped");
    assert_eq!(worker["pid"].as_i64().unwrap() as i32, after.0[0]);
}

#[test]
fn crash_loop_backs_off_with_growing_delays_and_stops_at_max() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "loop",
        "[services.bad]\ncommand = \"echo boom; exit 1\"\nrestart = \"on-failure\"\nmax_restarts = 3\n\
         backoff = \"200ms\"\nmax_backoff = \"10s\"\n",
    );
    let out = daemon.run(&["up", dir.to_str().unwrap()]);
    // It never accepts a connection, so it is never ready: `up` waits out the loop and fails.
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("service bad failed: exited with status 1; gave up after 3 restarts"),
        "{}",
        text(&out)
    );
    let failed = wait_for(Duration::from_secs(20), || {
        (daemon.service("loop", "bad")["state"] == "failed").then_some(())
    });
    assert!(failed.is_some(), "never gave up");
    assert_eq!(daemon.service("loop", "bad")["restarts"], 3);
    let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap(), "-t", "bad"]);
    assert!(logs.contains("gave up after 3 restarts"), "{logs}");
    let starts: Vec<Duration> = logs
        .lines()
        .filter(|l| l.contains("[locald] started pid"))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap();
            humantime_parse(stamp)
        })
        .collect();
    assert_eq!(starts.len(), 4, "first run plus 3 restarts:\n{logs}");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, min) in gaps.iter().zip([200, 400, 800]) {
        assert!(*gap >= Duration::from_millis(min), "gap {gap:?} shorter than backoff {min}ms: {gaps:?}");
    }
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "delays must grow: {gaps:?}");
}

fn humantime_parse(stamp: &str) -> Duration {
    // RFC 3339 with microseconds, UTC: 2026-01-01T00:00:00.123456Z; only time of day matters
    // within one test.
    let time = stamp.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: u64 = parts.next().unwrap().parse().unwrap();
    let m: u64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(s)
}

#[test]
fn failing_liveness_check_restarts_the_service() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project(
        "live",
        &format!(
            "[services.app]\ncommand = \"exec sleep {token}\"\nstop_timeout = \"1s\"\nport = false\n\
             liveness = {{ command = \"test ! -e wedged\", interval = \"100ms\", retries = 2 }}\n"
        ),
    );
    daemon.ok(&["up", dir.to_str().unwrap()]);
    let first = wait_pids(&token, 1);
    std::fs::write(dir.join("wedged"), "").unwrap();
    let replaced = wait_for(Duration::from_secs(10), || {
        let now = pids_with_arg(&token);
        (now.len() == 1 && now != first).then_some(())
    });
    std::fs::remove_file(dir.join("wedged")).unwrap();
    assert!(replaced.is_some(), "liveness failure did not restart the process");
    let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap()]);
    assert!(logs.contains("liveness check failed; restarting"), "{logs}");
    assert!(daemon.service("live", "app")["restarts"].as_u64().unwrap() >= 1);
}

#[test]
fn stop_escalates_to_sigkill_of_a_term_ignoring_child_and_its_grandchildren() {
    let daemon = Daemon::new();
    let (a, b) = (sleep_token(), sleep_token());
    let dir = daemon.project(
        "stubborn",
        &format!(
            "[services.app]\ncommand = \"trap '' TERM; sleep {a} & sleep {b} & wait\"\nstop_timeout = \"500ms\"\nport = false\n"
        ),
    );
    daemon.ok(&["up", dir.to_str().unwrap()]);
    let ready = wait_for(Duration::from_secs(5), || {
        (pids_with_arg(&a).len() + pids_with_arg(&b).len() == 2).then_some(())
    });
    assert!(ready.is_some());
    let started = Instant::now();
    daemon.ok(&["stop", "-C", dir.to_str().unwrap(), "app"]);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "SIGTERM was ignored, so stop must wait the timeout"
    );
    assert!(pids_with_arg(&a).is_empty() && pids_with_arg(&b).is_empty(), "grandchildren survived the stop");
    let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap()]);
    assert!(logs.contains("sending SIGKILL"), "{logs}");
}

#[test]
fn a_fifty_megabyte_burst_loses_no_line() {
    let daemon = Daemon::new();
    const LINES: usize = 500_000;
    let dir = daemon
        .project("burst", "[services.flood]\nrestart = \"no\"\ncommand = [\"python3\", \"flood.py\"]\n");
    std::fs::write(
        dir.join("flood.py"),
        format!("import sys\nw = sys.stdout.write\npad = 'x' * 91\nfor i in range({LINES}):\n    w(f'{{i:08d}} {{pad}}\\n')\n"),
    )
    .unwrap();
    daemon.ok(&["up", dir.to_str().unwrap()]);
    let done = wait_for(Duration::from_secs(120), || {
        let state = daemon.service("burst", "flood")["state"].clone();
        (state == "completed" || state == "failed").then_some(state)
    });
    let logs = || text(&daemon.run(&["logs", "-C", dir.to_str().unwrap(), "--tail", "5"]));
    assert_eq!(done, Some("completed".into()), "flood did not finish: {}", logs());
    let out = daemon.run(&["logs", "-C", dir.to_str().unwrap(), "flood"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut expected = 0usize;
    for line in stdout.lines() {
        let Some(payload) = line.strip_prefix("flood | ") else { continue };
        if payload.starts_with("[locald]") {
            continue;
        }
        let n: usize = payload[..8].parse().unwrap_or_else(|_| panic!("garbled line {line:?}"));
        assert_eq!(n, expected, "line {expected} missing or out of order");
        assert_eq!(payload.len(), 100, "line {n} cut");
        expected += 1;
    }
    assert_eq!(expected, LINES);
}

#[test]
fn a_hanging_service_fails_liveness_even_while_its_health_check_passes() {
    let daemon = Daemon::new();
    // Accepts connections (the tcp health check passes every 50 ms) but never answers HTTP.
    let dir = daemon.project(
        "hang",
        "[services.app]\ncommand = [\"python3\", \"hang.py\"]\nstop_timeout = \"1s\"\n\
         health_check = { tcp = true, interval = \"50ms\", retries = 100 }\n\
         liveness = { http = \"/\", interval = \"200ms\", timeout = \"300ms\", retries = 2, start_period = \"5s\" }\n",
    );
    std::fs::write(
        dir.join("hang.py"),
        "import os, socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', int(os.environ['PORT'])))\ns.listen(64)\nkept = []\n\
         while True:\n    kept.append(s.accept()[0])\n",
    )
    .unwrap();
    // start_period: a slow python start on a loaded machine must not count against liveness
    // before the health check could pass, or `up` itself fails.
    daemon.ok(&["up", dir.to_str().unwrap()]);
    let restarted = wait_for(Duration::from_secs(30), || {
        (daemon.service("hang", "app")["restarts"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    assert!(restarted.is_some(), "liveness never failed: {}", daemon.service("hang", "app"));
}

#[test]
fn with_a_delegated_cgroup_stop_also_kills_processes_that_left_the_group() {
    let daemon = Daemon::new();
    let (escapee, leader) = (sleep_token(), sleep_token());
    let dir = daemon.project(
        "escape",
        &format!("[services.app]\ncommand = \"setsid sleep {escapee} & exec sleep {leader}\"\nstop_timeout = \"1s\"\nport = false\n"),
    );
    daemon.ok(&["up", dir.to_str().unwrap()]);
    wait_pids(&leader, 1);
    let escaped = wait_pids(&escapee, 1);
    let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap()]);
    if !logs.contains("in its own cgroup") {
        eprintln!(
            "SKIPPED: no delegated cgroup v2 subtree here; the process group alone cannot reach a setsid child"
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped[0]), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        return;
    }
    daemon.ok(&["stop", "-C", dir.to_str().unwrap(), "app"]);
    assert!(pids_with_arg(&leader).is_empty());
    let gone = wait_for(Duration::from_secs(5), || pids_with_arg(&escapee).is_empty().then_some(()));
    assert!(gone.is_some(), "a setsid grandchild survived the stop");
}

/// The daemon raises its soft RLIMIT_NOFILE for the proxy's connections; its services must still
/// get the limit the user started it with, or select()-based programs break above 1,024 fds.
#[test]
fn services_get_the_descriptor_limit_the_daemon_was_started_with() {
    use std::os::unix::process::CommandExt;
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon
        .project("limits", &format!("[services.worker]\ncommand = \"exec sleep {token}\"\nport = false\n"));
    let mut up = daemon.cmd();
    up.args(["up", dir.to_str().unwrap()]);
    // SAFETY: setrlimit(2) is async-signal-safe; the limit is a plain value.
    unsafe {
        up.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 1000, rlim_max: 4000 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = up.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let open_files = |pid: i64| -> Vec<String> {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
        line.split_whitespace().skip(3).take(2).map(str::to_owned).collect()
    };
    let daemon_pid = i64::from(daemon.daemon_pid().expect("daemon running"));
    assert_eq!(open_files(daemon_pid), ["4000", "4000"], "the daemon raised its soft limit");
    let worker = daemon.service("limits", "worker");
    assert_eq!(open_files(worker["pid"].as_i64().unwrap()), ["1000", "4000"], "the service got the original");
}
