//! `locald exec SERVICE -- CMD` runs a command with the service's environment in its working
//! directory and exits with its status; `locald env SERVICE` prints that environment with the
//! layer each variable came from.

use locald_tests::daemon::Daemon;
use locald_tests::text;

const PROJECT: &str = "[project]\nname = \"shop\"\n\n[services.api]\ncommand = \"exec sleep 600\"\nport = false\n\n\
                       [services.web]\ncommand = \"exec sleep 600\"\nport = false\ncwd = \"front\"\n\
                       env_file = \".env\"\ntrust_local_ca = true\n\
                       env = { SHARED = \"from env\", API = \"${services.api.url}\" }\n";

fn project(daemon: &Daemon) -> std::path::PathBuf {
    let dir = daemon.project("shop", PROJECT);
    std::fs::create_dir_all(dir.join("front")).unwrap();
    std::fs::write(dir.join(".env"), "FROM_FILE=file\nSHARED=file\n").unwrap();
    dir
}

#[test]
fn exec_runs_with_the_services_environment_in_its_directory_and_passes_the_exit_status() {
    let daemon = Daemon::new();
    let dir = project(&daemon);
    let d = dir.to_str().unwrap();
    daemon.ok(&["up", d]);
    let api_port = daemon.service("shop", "api")["port"].clone();
    let web_port = daemon.service("shop", "web")["port"].clone();

    let script = "echo \"$FROM_FILE|$SHARED|$API|$PORT|$SSL_CERT_FILE\"; pwd; exit 7";
    let out = daemon.run(&["exec", "-C", d, "web", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let vars = lines.next().unwrap();
    let ca_bundle = daemon.root.join("home/.local/share/locald/ca/ca-bundle.pem");
    assert_eq!(
        vars,
        format!("file|from env|http://127.0.0.1:{api_port}|{web_port}|{}", ca_bundle.display()),
        "env_file, env over env_file, interpolation, PORT and the CA variables"
    );
    assert_eq!(lines.next(), Some(dir.join("front").canonicalize().unwrap().to_str().unwrap()));

    let missing = daemon.run(&["exec", "-C", d, "web", "--", "no-such-command-here"]);
    assert_eq!(missing.status.code(), Some(127), "{}", text(&missing));
    assert!(text(&missing).contains("cannot run no-such-command-here"), "{}", text(&missing));
    let unknown = daemon.run(&["exec", "-C", d, "nope", "--", "true"]);
    assert!(
        !unknown.status.success() && text(&unknown).contains("no service \"nope\""),
        "{}",
        text(&unknown)
    );
}

#[test]
fn env_names_the_layer_of_each_variable() {
    let daemon = Daemon::new();
    let dir = project(&daemon);
    let d = dir.to_str().unwrap();
    // Not up: the ports are those `up` would assign, and it says so.
    let before = daemon.ok(&["env", "-C", d, "web"]);
    assert!(before.starts_with("# the project is not up"), "{before}");
    daemon.ok(&["up", d]);
    let env = daemon.ok(&["env", "-C", d, "web"]);
    let port = daemon.service("shop", "web")["port"].clone();
    for line in [
        "FROM_FILE=file  # env_file".to_owned(),
        "SHARED='from env'  # env".to_owned(),
        format!("PORT={port}  # locald"),
        "SSL_CERT_FILE=".to_owned(),
    ] {
        assert!(env.lines().any(|l| l.starts_with(&line)), "no {line:?} in:\n{env}");
    }
    assert!(env.lines().any(|l| l.starts_with("NODE_EXTRA_CA_CERTS=") && l.ends_with("# locald")), "{env}");
    assert_eq!(env.matches("SHARED=").count(), 1, "the value that wins, once:\n{env}");
    assert!(!env.contains("# the project is not up"), "{env}");
}
