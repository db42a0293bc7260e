//! Registries that make a pull hard: HTTPS with a test CA and htpasswd (credentials from
//! Docker's `auths`, a `credHelpers` helper, a `credsStore` and Podman's `auth.json`), rate
//! limiting, flaky connections and 5xx, and a name that is not loopback (never asked over
//! plain HTTP).
//! The misbehaving servers are tiny loopback stand-ins in front of (or instead of) the registry.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use locald_tests::daemon::Daemon;
use locald_tests::registry::{Registry, test_ca, umoci_image};
use locald_tests::text;

fn pushed(registry: &Registry, name: &str, creds: Option<&str>) -> String {
    let layout = registry.dir.path().join(format!("layout-{name}"));
    umoci_image(&layout, "v1", "amd64", name, &["sh"], &["sh"]);
    registry.push(&layout, "v1", name, creds);
    format!("{}/{name}:v1", registry.host())
}

fn project(daemon: &Daemon, name: &str, image: &str, extra: &str) -> PathBuf {
    daemon.project(
        name,
        &format!("[project]\nname = \"{name}\"\n{extra}\n[services.web]\nimage = \"{image}\"\n"),
    )
}

fn pull(daemon: &Daemon, dir: &Path, path: &str) -> Output {
    daemon.cmd().env("PATH", path).args(["pull", "-C"]).arg(dir).output().unwrap()
}

/// stderr, asserted to be one line.
fn one_line(out: &Output) -> String {
    assert!(!out.status.success(), "the pull succeeded: {}", text(out));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

fn pinned(dir: &Path, image: &str) -> bool {
    fs::read(dir.join(".locald/images.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["images"][image]["digest"].is_string())
}

#[test]
fn https_with_a_test_ca_and_htpasswd_takes_credentials_from_docker_helpers_and_podman() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(certs.path());
    let registry = Registry::start_with(Some(("alice", "s3cret")), Some((&cert, &key)));
    let image = pushed(&registry, "private", Some("alice:s3cret"));
    let host = registry.host();
    let daemon = Daemon::new();
    let home = daemon.root.join("home");
    // The daemon is started by the first command and keeps its PATH: the helper's directory.
    let bin = daemon.root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let dir = project(&daemon, "p", &image, "");

    // Not trusted yet: says so and where the CA goes (and never falls back to plain HTTP).
    let pushed_log = registry.log().len();
    let err = one_line(&pull(&daemon, &dir, &path));
    assert!(
        err.contains(&format!("registry {host}"))
            && err.contains("does not trust")
            && err.contains(&format!("certs.d/{host}/ca.crt")),
        "{err}"
    );
    let log = registry.log();
    assert!(!log[pushed_log..].contains("\"GET /v2/"), "a request got through:\n{}", &log[pushed_log..]);

    // Trusted the way Podman users do, no credentials: the unauthorized line.
    let certs_d = home.join(".config/containers/certs.d").join(&host);
    fs::create_dir_all(&certs_d).unwrap();
    fs::copy(&ca, certs_d.join("ca.crt")).unwrap();
    let err = one_line(&pull(&daemon, &dir, &path));
    assert!(
        err.contains(&format!("registry {host} refused access"))
            && err.contains(&format!("docker login {host}")),
        "{err}"
    );

    // `auths` of ~/.docker/config.json ("alice:s3cret").
    let docker = home.join(".docker/config.json");
    fs::create_dir_all(docker.parent().unwrap()).unwrap();
    fs::write(&docker, format!(r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#)).unwrap();
    let out = pull(&daemon, &dir, &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(pinned(&dir, &image));

    // `credHelpers`: docker-credential-<name> on PATH answers `get`.
    let asked = daemon.root.join("helper-asked");
    let helper = bin.join("docker-credential-locald-test");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}' \"$server\"\n",
            asked.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(&docker, format!(r#"{{"credHelpers":{{"{host}":"locald-test"}}}}"#)).unwrap();
    let out = pull(&daemon, &dir, &path);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(&asked).unwrap().trim(), host, "the helper was not asked for {host}");

    // `credsStore`: the same helper, as the store for every registry.
    fs::remove_file(&asked).unwrap();
    fs::write(&docker, r#"{"credsStore":"locald-test"}"#).unwrap();
    let out = pull(&daemon, &dir, &path);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(&asked).unwrap().trim(), host, "the store was not asked for {host}");

    // Podman's auth.json, in the runtime dir and then in ~/.config/containers.
    fs::remove_file(&docker).unwrap();
    let err = one_line(&pull(&daemon, &dir, &path));
    assert!(err.contains("refused access"), "{err}");
    let podman_auth = format!(r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#);
    for file in [daemon.root.join("run/containers/auth.json"), home.join(".config/containers/auth.json")] {
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, &podman_auth).unwrap();
        let out = pull(&daemon, &dir, &path);
        assert!(out.status.success(), "with {}: {}", file.display(), text(&out));
        fs::remove_file(&file).unwrap();
    }
}

/// What a stand-in server saw: the first bytes of every connection.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<Vec<u8>>>>);

impl Seen {
    fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }

    /// Request lines of the plain HTTP connections.
    fn requests(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|b| b.first() != Some(&0x16))
            .map(|b| String::from_utf8_lossy(b).lines().next().unwrap_or("").to_owned())
            .collect()
    }
}

/// What to do with the n-th plain HTTP connection; TLS handshakes (the probe whether a
/// loopback registry speaks TLS) are closed without counting.
#[derive(Clone, Copy)]
enum Act {
    Reset,
    Status(&'static str, &'static str),
    Forward(u16),
}

/// A loopback server doing `script[n]` to the n-th plain connection (the last entry for the
/// rest). Returns its port.
fn stand_in(script: Vec<Act>, seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut plain = 0;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut head = vec![0u8; 2048];
            let n = stream.peek(&mut head).unwrap_or(0);
            head.truncate(n);
            seen.0.lock().unwrap().push(head.clone());
            let act = if head.first() == Some(&0x16) {
                match script.last() {
                    Some(Act::Forward(to)) => Act::Forward(*to),
                    _ => continue,
                }
            } else {
                plain += 1;
                script[(plain - 1).min(script.len() - 1)]
            };
            std::thread::spawn(move || serve(stream, act));
        }
    });
    port
}

fn serve(mut stream: TcpStream, act: Act) {
    match act {
        Act::Reset => {
            let _ = stream.read(&mut [0u8; 2048]);
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
        }
        Act::Status(status, headers) => {
            let _ = stream.read(&mut [0u8; 4096]);
            let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
            let body = if status.starts_with("429") { body } else { "upstream trouble" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Act::Forward(to) => {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", to)) else { return };
            let (mut a, mut b) = (stream.try_clone().unwrap(), upstream.try_clone().unwrap());
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(Shutdown::Write);
            });
            let (mut upstream, mut stream) = (upstream, stream);
            let _ = std::io::copy(&mut upstream, &mut stream);
            let _ = stream.shutdown(Shutdown::Write);
            let _ = up.join();
        }
    }
}

#[test]
fn a_rate_limited_registry_says_until_when_in_one_line_and_is_not_hammered() {
    let seen = Seen::default();
    let port = stand_in(vec![Act::Status("429 Too Many Requests", "Retry-After: 120\r\n")], seen.clone());
    let daemon = Daemon::new();
    let image = format!("127.0.0.1:{port}/app:v1");
    let dir = project(&daemon, "limited", &image, "");
    let before = std::time::SystemTime::now();
    let err = one_line(&pull(&daemon, &dir, &std::env::var("PATH").unwrap()));
    let until = retry_after_lines(before, std::time::SystemTime::now(), 120);
    assert!(
        err.contains(&format!("registry 127.0.0.1:{port} is rate limiting pulls"))
            && until.iter().any(|u| err.contains(u)),
        "{err} (expected one of {until:?})"
    );
    let manifest_gets = seen.requests().iter().filter(|r| r.starts_with("GET /v2/app/manifests/")).count();
    assert_eq!(manifest_gets, 1, "a rate limit is not retried: {:?}", seen.requests());
}

/// "until <HTTP date> (in <n> s)" for each n in `range`, from now.
/// What the one line may say of a `Retry-After: secs` answered between `before` and `after`:
/// the date it ends (the answer's time + secs, to the second) and the seconds left then, which a
/// slow machine may have eaten into by two.
fn retry_after_lines(before: std::time::SystemTime, after: std::time::SystemTime, secs: u64) -> Vec<String> {
    let epoch = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (first, last) = (epoch(before).saturating_sub(1), epoch(after) + 1);
    (first..=last)
        .flat_map(|answered| {
            let date = fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(answered + secs));
            (secs.saturating_sub(2)..=secs).map(move |left| format!("until {date} (in {left} s)"))
        })
        .collect()
}

fn fmt_http_date(t: std::time::SystemTime) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-R", "-d"])
        .arg(format!("@{}", t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()))
        .output()
        .unwrap();
    // `date -R` says "+0000" where HTTP says "GMT".
    String::from_utf8_lossy(&out.stdout).trim().replace("+0000", "GMT")
}

#[test]
fn a_reset_connection_and_a_503_are_retried_and_a_registry_that_keeps_failing_is_given_up() {
    let registry = Registry::start(None);
    let _ = pushed(&registry, "app", None);
    // Before every request oci-client asks /v2/ on a connection of its own: the 503 hits that
    // check, the reset the manifest request.
    let seen = Seen::default();
    let script = vec![Act::Status("503 Service Unavailable", ""), Act::Reset, Act::Forward(registry.port)];
    let port = stand_in(script, seen.clone());
    let daemon = Daemon::new();
    let image = format!("127.0.0.1:{port}/app:v1");
    let dir = project(&daemon, "flaky", &image, "");
    let out = pull(&daemon, &dir, &std::env::var("PATH").unwrap());
    assert!(out.status.success(), "{}\nseen: {:?}", text(&out), seen.requests());
    assert!(pinned(&dir, &image));
    assert!(seen.requests().len() >= 3, "{:?}", seen.requests());

    // Always 503: a bounded number of tries, one line, in bounded time.
    let seen = Seen::default();
    let port = stand_in(vec![Act::Status("503 Service Unavailable", "")], seen.clone());
    let image = format!("127.0.0.1:{port}/app:v1");
    let dir = project(&daemon, "down", &image, "");
    let started = Instant::now();
    let err = one_line(&pull(&daemon, &dir, &std::env::var("PATH").unwrap()));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(
        err.contains(&format!("registry 127.0.0.1:{port} failed serving")) && err.contains("503"),
        "{err}"
    );
    let manifest_gets = seen.requests().iter().filter(|r| r.starts_with("GET /v2/app/manifests/")).count();
    assert_eq!(manifest_gets, 3, "{:?}", seen.requests());
}

#[test]
fn a_name_that_is_not_loopback_is_never_asked_over_plain_http_unless_listed_insecure() {
    let registry = Registry::start(None);
    let _ = pushed(&registry, "app", None);
    // 0.0.0.0 reaches this machine but is not 127.0.0.0/8: as good a stand-in for a remote
    // name as a loopback-only test gets. The stand-in forwards everything to the registry.
    let seen = Seen::default();
    let port = stand_in(vec![Act::Forward(registry.port)], seen.clone());
    let daemon = Daemon::new();
    let image = format!("0.0.0.0:{port}/app:v1");
    let path = std::env::var("PATH").unwrap();
    let dir = project(&daemon, "remote", &image, "");
    let err = one_line(&pull(&daemon, &dir, &path));
    assert!(err.contains(&format!("0.0.0.0:{port}")), "{err}");
    assert!(!seen.all().is_empty(), "the registry was not contacted at all");
    assert_eq!(
        seen.requests(),
        Vec::<String>::new(),
        "plain HTTP was sent to a non-loopback name ({err}): {:?}",
        seen.all()
            .iter()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned())
            .collect::<Vec<_>>()
    );

    let dir = project(&daemon, "listed", &image, &format!("insecure_registries = [\"0.0.0.0:{port}\"]\n"));
    let out = pull(&daemon, &dir, &path);
    assert!(out.status.success(), "{}", text(&out));
    assert!(pinned(&dir, &image));
    // Listed: the TLS attempt meets a plain answer, and plain HTTP is used.
    assert!(seen.requests().iter().any(|r| r.starts_with("GET /v2/")), "{:?}", seen.requests());
}
