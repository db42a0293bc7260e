//! `up` on a running project whose `locald.toml` changed applies it: what changed restarts with
//! its dependents, added services start, removed ones stop, the rest keeps its processes; an
//! invalid file is reported at its line and column and changes nothing.

use locald_tests::daemon::{Daemon, sleep_token, wait_pids};
use locald_tests::text;

struct Tokens {
    db: String,
    api: String,
    web: String,
    cache: String,
    mail: String,
}

/// db ← api ← web and a lone cache; api sees `X`.
fn project(t: &Tokens, x: &str) -> String {
    format!(
        r#"[services.db]
command = ["sleep", "{db}"]
port = false
stop_timeout = "1s"

[services.api]
command = ["sleep", "{api}"]
port = false
env = {{ X = "{x}" }}
depends_on = ["db"]
stop_timeout = "1s"

[services.web]
command = ["sleep", "{web}"]
port = false
depends_on = ["api"]
stop_timeout = "1s"

[services.cache]
command = ["sleep", "{cache}"]
port = false
stop_timeout = "1s"
"#,
        db = t.db,
        api = t.api,
        web = t.web,
        cache = t.cache
    )
}

/// The one process of each token, waiting for it to be there.
fn pids(tokens: &[&String]) -> Vec<i32> {
    tokens.iter().map(|t| wait_pids(t, 1)[0]).collect()
}

fn env_of(pid: i32) -> Vec<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

#[test]
fn a_changed_env_restarts_that_service_and_its_dependents_only() {
    let daemon = Daemon::new();
    let t = Tokens {
        db: sleep_token(),
        api: sleep_token(),
        web: sleep_token(),
        cache: sleep_token(),
        mail: sleep_token(),
    };
    let dir = daemon.project("shop", &project(&t, "1"));
    let dir_arg = dir.to_str().unwrap();
    daemon.ok(&["up", dir_arg]);
    let [db, api, web, cache] = pids(&[&t.db, &t.api, &t.web, &t.cache])[..] else { unreachable!() };
    let ports: Vec<_> =
        ["db", "api", "web", "cache"].iter().map(|s| daemon.service("shop", s)["port"].clone()).collect();

    std::fs::write(dir.join("locald.toml"), project(&t, "2")).unwrap();
    let up = daemon.ok(&["up", dir_arg]);
    assert!(
        up.contains("note: applied locald.toml: restarted api (changed) and web (depending on it)"),
        "{up}"
    );
    let [db2, api2, web2, cache2] = pids(&[&t.db, &t.api, &t.web, &t.cache])[..] else { unreachable!() };
    assert_eq!((db2, cache2), (db, cache), "db and cache kept their processes");
    assert_ne!(api2, api, "api restarted");
    assert_ne!(web2, web, "web, which depends on api, restarted");
    assert!(env_of(api2).contains(&"X=2".to_owned()), "the new api has the new env");
    let after: Vec<_> =
        ["db", "api", "web", "cache"].iter().map(|s| daemon.service("shop", s)["port"].clone()).collect();
    assert_eq!(after, ports, "every service kept its port");

    // The same file again: nothing moves.
    let up = daemon.ok(&["up", dir_arg]);
    assert!(!up.contains("applied"), "{up}");
    assert_eq!(pids(&[&t.db, &t.api, &t.web, &t.cache]), [db2, api2, web2, cache2]);
}

#[test]
fn an_added_service_starts_and_a_removed_one_stops() {
    let daemon = Daemon::new();
    let t = Tokens {
        db: sleep_token(),
        api: sleep_token(),
        web: sleep_token(),
        cache: sleep_token(),
        mail: sleep_token(),
    };
    let dir = daemon.project("shop", &project(&t, "1"));
    let dir_arg = dir.to_str().unwrap();
    daemon.ok(&["up", dir_arg]);
    let kept = pids(&[&t.db, &t.api, &t.web]);
    wait_pids(&t.cache, 1);

    let edited = project(&t, "1").replace(
        &format!("[services.cache]\ncommand = [\"sleep\", \"{}\"]\nport = false", t.cache),
        &format!("[services.mail]\ncommand = [\"sleep\", \"{}\"]\nport = false", t.mail),
    );
    std::fs::write(dir.join("locald.toml"), edited).unwrap();
    let up = daemon.ok(&["up", dir_arg]);
    assert!(up.contains("note: applied locald.toml: started mail; stopped cache (removed)"), "{up}");
    wait_pids(&t.mail, 1);
    wait_pids(&t.cache, 0);
    assert_eq!(pids(&[&t.db, &t.api, &t.web]), kept, "the others kept their processes");
    let names: Vec<_> = daemon.status()[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["db", "api", "mail", "web"]);
}

#[test]
fn an_invalid_edit_is_reported_at_its_line_and_column_and_changes_nothing() {
    let daemon = Daemon::new();
    let t = Tokens {
        db: sleep_token(),
        api: sleep_token(),
        web: sleep_token(),
        cache: sleep_token(),
        mail: sleep_token(),
    };
    let dir = daemon.project("shop", &project(&t, "1"));
    let dir_arg = dir.to_str().unwrap();
    daemon.ok(&["up", dir_arg]);
    let before = pids(&[&t.db, &t.api, &t.web, &t.cache]);

    // Line 10 of the file: api now depends on a service that does not exist.
    let broken = project(&t, "2").replace("depends_on = [\"db\"]", "depends_on = [\"dbb\"]");
    assert_eq!(broken.lines().nth(9), Some("depends_on = [\"dbb\"]"));
    std::fs::write(dir.join("locald.toml"), broken).unwrap();
    let out = daemon.run(&["up", dir_arg]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locald.toml:10:15: \"api\" depends on unknown service \"dbb\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(pids(&[&t.db, &t.api, &t.web, &t.cache]), before, "everything kept running");
    assert_eq!(daemon.service("shop", "api")["state"], "running");
}
