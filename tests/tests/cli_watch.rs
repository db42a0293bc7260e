//! `locald up --watch` against a real daemon and real files: a change to a watched file
//! restarts its service once, a burst of 300 files restarts it once, ignored paths (the
//! service's `ignore`, `.gitignore`, `.git/`) do not, and a failing `on_change` keeps the
//! running process.

use std::path::Path;
use std::time::Duration;

use locald_tests::daemon::{Daemon, sleep_token};
use locald_tests::{text, wait_for};

/// Long enough for a change that would restart a service to have done so: the watcher's
/// debounce and quiet window are 100 + 300 ms. Only used to show that something did not happen.
const WINDOW: Duration = Duration::from_millis(1500);

fn pid(daemon: &Daemon, project: &str) -> i64 {
    let pid = wait_for(Duration::from_secs(10), || daemon.service(project, "web")["pid"].as_i64());
    pid.expect("web has a pid")
}

/// Waits for web's pid to differ from `old`; the new one.
fn restarted(daemon: &Daemon, project: &str, old: i64) -> i64 {
    let new = wait_for(Duration::from_secs(10), || {
        let s = daemon.service(project, "web");
        let pid = s["pid"].as_i64()?;
        (pid != old && s["state"] == "running").then_some(pid)
    });
    new.unwrap_or_else(|| panic!("web was not restarted (pid {old})"))
}

/// The watcher's notes in web's log, in order.
fn notes(daemon: &Daemon, dir: &Path) -> Vec<String> {
    let logs = daemon.ok(&["logs", "-C", dir.to_str().unwrap(), "web"]);
    logs.lines().filter(|l| l.contains("changed:") || l.contains("on_change")).map(str::to_owned).collect()
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{:?}", std::time::SystemTime::now())).unwrap();
}

#[test]
fn a_watched_change_restarts_once_and_ignored_paths_do_not() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project(
        "watched",
        &format!(
            "[services.web]\ncommand = \"exec sleep {token}\"\nstop_timeout = \"1s\"\nport = false\n\
             watch = [\"src/**\", \"package.json\"]\nignore = [\"**/*.tmp\"]\n"
        ),
    );
    std::fs::write(dir.join(".gitignore"), "src/gen/\n").unwrap();
    // `src/many` exists before the watch: files made in a directory inotify has not been told
    // about yet are not seen (they still cause one restart, but the count would vary).
    for d in ["src/gen", "src/many", ".git"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let up = daemon.ok(&["up", "--watch", dir.to_str().unwrap()]);
    assert!(up.contains("watching web: src/**, package.json"), "{up}");
    let first = pid(&daemon, "watched");

    touch(&dir.join("src/app.py"));
    let second = restarted(&daemon, "watched", first);
    let status = daemon.ok(&["status"]);
    assert!(status.contains("watched        watching files"), "{status}");
    assert!(status.contains("web restarted: src/app.py changed"), "{status}");

    // A checkout's worth of files at once: one restart, its note counting the rest.
    for i in 0..300 {
        touch(&dir.join(format!("src/many/f{i}.js")));
    }
    let third = restarted(&daemon, "watched", second);
    std::thread::sleep(WINDOW);
    assert_eq!(pid(&daemon, "watched"), third, "300 files, one restart");
    let seen = notes(&daemon, &dir);
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(
        seen[1].contains("src/many/f") && seen[1].contains("and 299 more changed: restarting"),
        "{seen:#?}"
    );

    // Ignored by the service, by .gitignore, and never watched: nothing restarts.
    touch(&dir.join("src/scratch.tmp"));
    touch(&dir.join("src/gen/out.js"));
    touch(&dir.join(".git/index"));
    touch(&dir.join("README.md"));
    std::thread::sleep(WINDOW);
    assert_eq!(pid(&daemon, "watched"), third, "ignored paths restarted web");

    // The next restart names only what was watched.
    touch(&dir.join("package.json"));
    restarted(&daemon, "watched", third);
    let seen = notes(&daemon, &dir);
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen[2].ends_with("package.json changed: restarting"), "{seen:#?}");

    daemon.ok(&["down", dir.to_str().unwrap()]);
}

#[test]
fn a_failing_on_change_keeps_the_running_copy_and_watch_stop_ends_the_watch() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project(
        "built",
        &format!(
            "[services.web]\ncommand = \"exec sleep {token}\"\nstop_timeout = \"1s\"\nport = false\nwatch = [\"src\"]\n\
             on_change = \"test -f fixed || {{ echo build broke >&2; exit 3; }}\"\n"
        ),
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let dir_arg = dir.to_str().unwrap();
    daemon.ok(&["watch", dir_arg]);
    let first = pid(&daemon, "built");

    touch(&dir.join("src/main.c"));
    let failed = wait_for(Duration::from_secs(10), || {
        let seen = notes(&daemon, &dir);
        seen.iter()
            .any(|l| l.contains("on_change failed (exit code 3); the running copy stays up"))
            .then_some(seen)
    });
    let seen = failed.expect("the failed build was reported");
    assert!(seen.iter().any(|l| l.contains("on_change: build broke")), "{seen:#?}");
    assert_eq!(pid(&daemon, "built"), first, "a failed build keeps the running process");

    std::fs::write(dir.join("fixed"), "").unwrap();
    touch(&dir.join("src/main.c"));
    let second = restarted(&daemon, "built", first);

    daemon.ok(&["watch", "--stop", dir_arg]);
    touch(&dir.join("src/main.c"));
    std::thread::sleep(WINDOW);
    assert_eq!(pid(&daemon, "built"), second, "no restart once the watch stopped");
    daemon.ok(&["down", dir_arg]);
}

#[test]
fn watch_without_watched_services_or_with_a_bad_glob_says_so() {
    let daemon = Daemon::new();
    let dir = daemon.project(
        "plain",
        "[services.web]\ncommand = \"exec sleep 3600\"\nstop_timeout = \"1s\"\nport = false\n",
    );
    let out = daemon.run(&["up", "--watch", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("no service of") && err.contains("has watch = [...]"), "{err}");
    daemon.ok(&["down", dir.to_str().unwrap()]);

    let bad = daemon.project("bad", "[services.web]\ncommand = \"true\"\nwatch = [\"../outside/**\"]\n");
    let out = daemon.run(&["up", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("locald.toml:3:") && err.contains("leaves the project directory"), "{err}");
}

#[test]
fn a_daemon_started_after_a_crash_watches_the_same_projects() {
    let daemon = Daemon::new();
    let token = sleep_token();
    let dir = daemon.project(
        "kept",
        &format!(
            "[services.web]\ncommand = \"exec sleep {token}\"\nstop_timeout = \"1s\"\nport = false\nwatch = [\"src\"]\n"
        ),
    );
    std::fs::create_dir_all(dir.join("src")).unwrap();
    daemon.ok(&["up", "--watch", dir.to_str().unwrap()]);
    let pid_before = daemon.daemon_pid().expect("daemon running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_before), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    // Gone once its socket refuses: a process being torn down (its inotify watches take a
    // moment) no longer shows a command line but may still hold the listener.
    let gone = wait_for(Duration::from_secs(5), || {
        let refused = std::os::unix::net::UnixStream::connect(daemon.socket()).is_err();
        (daemon.daemon_pid().is_none() && refused).then_some(())
    });
    assert!(gone.is_some(), "daemon did not die");

    // The next command starts a daemon that brings the project back, watched.
    let status = daemon.ok(&["status"]);
    assert!(status.contains("kept           watching files"), "{status}");
    let first = pid(&daemon, "kept");
    touch(&dir.join("src/lib.rs"));
    restarted(&daemon, "kept", first);
    daemon.ok(&["down", dir.to_str().unwrap()]);
    let status = daemon.ok(&["status"]);
    assert!(!status.contains("watching"), "{status}");
}
