//! `up` of a subset of services (with what they depend on), profiles, and `stop`/`restart` of
//! several services, against a real daemon and real processes.

use locald_tests::daemon::{Daemon, pids_with_arg, sleep_token, wait_pids};
use locald_tests::text;

/// db ← api ← web, a lone worker, and a debugger in the `debug` profile that needs api; each
/// `sleep`s a token of its own so its process can be found.
fn project(tokens: &Tokens) -> String {
    format!(
        r#"
[services.db]
command = ["sleep", "{db}"]
port = false
stop_timeout = "1s"

[services.api]
command = ["sleep", "{api}"]
port = false
depends_on = ["db"]
stop_timeout = "1s"

[services.web]
command = ["sleep", "{web}"]
port = false
depends_on = ["api"]
stop_timeout = "1s"

[services.worker]
command = ["sleep", "{worker}"]
port = false
stop_timeout = "1s"

[services.debugger]
command = ["sleep", "{debugger}"]
port = false
depends_on = ["api"]
profiles = ["debug"]
stop_timeout = "1s"
"#,
        db = tokens.db,
        api = tokens.api,
        web = tokens.web,
        worker = tokens.worker,
        debugger = tokens.debugger
    )
}

struct Tokens {
    db: String,
    api: String,
    web: String,
    worker: String,
    debugger: String,
}

impl Tokens {
    fn new() -> Self {
        Self {
            db: sleep_token(),
            api: sleep_token(),
            web: sleep_token(),
            worker: sleep_token(),
            debugger: sleep_token(),
        }
    }
}

/// The names of the services the project runs, as `status` lists them.
fn services(daemon: &Daemon) -> Vec<String> {
    let status = daemon.status();
    status[0]["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn up_of_a_service_starts_it_and_its_dependencies_then_up_adds_the_rest_but_not_a_profile() {
    let daemon = Daemon::new();
    let t = Tokens::new();
    let dir = daemon.project("shop", &project(&t));
    let dir_arg = dir.to_str().unwrap();

    let up = daemon.ok(&["up", dir_arg, "web"]);
    assert!(up.contains("shop is ready"), "{up}");
    assert_eq!(services(&daemon), ["db", "api", "web"], "only web and what it depends on");
    let web = wait_pids(&t.web, 1);
    wait_pids(&t.db, 1);
    wait_pids(&t.api, 1);
    assert!(pids_with_arg(&t.worker).is_empty() && pids_with_arg(&t.debugger).is_empty());

    // `up` with no names adds every service outside a profile and leaves the others running.
    daemon.ok(&["up", "-C", dir_arg]);
    wait_pids(&t.worker, 1);
    assert_eq!(pids_with_arg(&t.web), web, "web kept running");
    assert!(pids_with_arg(&t.debugger).is_empty(), "a profile keeps debugger out");

    daemon.ok(&["up", dir_arg, "--profile", "debug"]);
    wait_pids(&t.debugger, 1);
    assert_eq!(services(&daemon), ["db", "api", "debugger", "web", "worker"]);
    assert_eq!(pids_with_arg(&t.web), web);
}

#[test]
fn a_service_named_on_the_command_line_starts_even_in_a_profile() {
    let daemon = Daemon::new();
    let t = Tokens::new();
    let dir = daemon.project("dbg", &project(&t));
    // From inside the project: the only argument is a service name, not a directory.
    let out = daemon.cmd().current_dir(&dir).args(["up", "debugger"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(services(&daemon), ["db", "api", "debugger"]);
    wait_pids(&t.debugger, 1);
    assert!(pids_with_arg(&t.web).is_empty());
}

#[test]
fn unknown_services_and_profiles_are_refused_in_one_line_naming_the_known_ones() {
    let daemon = Daemon::new();
    let t = Tokens::new();
    let dir = daemon.project("typo", &project(&t));
    let dir_arg = dir.to_str().unwrap();

    let out = daemon.run(&["up", dir_arg, "wbe"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err, "locald: no service \"wbe\" in project typo (have: db, api, debugger, web, worker)");
    assert!(pids_with_arg(&t.db).is_empty(), "nothing started");

    let out = daemon.run(&["up", dir_arg, "--profile", "dbg"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().ends_with("has profile \"dbg\" (profiles: debug)") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn stop_and_restart_take_several_services_and_check_every_name_first() {
    let daemon = Daemon::new();
    let t = Tokens::new();
    let dir = daemon.project("many", &project(&t));
    let dir_arg = dir.to_str().unwrap();
    daemon.ok(&["up", dir_arg]);
    let db = wait_pids(&t.db, 1);
    let api = wait_pids(&t.api, 1);
    wait_pids(&t.worker, 1);
    wait_pids(&t.web, 1);

    let out = daemon.run(&["stop", "-C", dir_arg, "web", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no service \"nope\" in project many (have: db, api, debugger, web, worker)"),
        "{err}"
    );
    assert_eq!(pids_with_arg(&t.web).len(), 1, "a bad name stops nothing");

    let stopped = daemon.ok(&["stop", "-C", dir_arg, "web", "worker"]);
    assert_eq!(stopped.trim(), "stopped web, worker");
    assert!(pids_with_arg(&t.web).is_empty() && pids_with_arg(&t.worker).is_empty());
    assert_eq!(daemon.service("many", "worker")["state"], "stopped");
    assert_eq!(pids_with_arg(&t.db), db, "the others run on");

    daemon.ok(&["restart", "-C", dir_arg, "db", "api"]);
    let restarted = locald_tests::wait_for(std::time::Duration::from_secs(10), || {
        let (new_db, new_api) = (pids_with_arg(&t.db), pids_with_arg(&t.api));
        (new_db.len() == 1 && new_api.len() == 1 && new_db != db && new_api != api).then_some(())
    });
    assert!(restarted.is_some(), "db and api got new processes");
    assert!(pids_with_arg(&t.worker).is_empty(), "restart of others does not start worker");
}
