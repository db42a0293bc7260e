//! The proxy on the real ports: a daemon running as a throwaway user gets 443 and 80 from the
//! setuid shim, inside a fresh network namespace per test, and serves a Python backend at
//! `https://web.<project>.localhost`. Runs as root (CI is root); without root it fails under
//! LOCALD_REQUIRE_PRIVILEGED=1.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use locald_tests::proxy::{Scene, client_config, project_toml, websocket_echo};
use locald_tests::{privileged, text};
use rustls_pki_types::ServerName;

fn body(out: &std::process::Output) -> String {
    assert!(out.status.success(), "curl failed: {}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn https_on_443_with_http2_forwarded_fields_and_port_80() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-basic", &project_toml("shop", ""));
    let up = scene.ok(&["up"]);
    assert!(up.contains("https://shop.localhost "), "URL without a port on 443:\n{up}");
    assert!(!up.contains("not 443/80"), "{up}");

    // HTTP/2 through ALPN, the backend's own answer, for the service and its alias.
    for host in ["shop.localhost", "web.shop.localhost"] {
        let out = scene
            .curl(host)
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://{host}/"))
            .output()
            .unwrap();
        let got = body(&out);
        assert!(got.starts_with("hello from web\n"), "{got}");
        assert!(got.ends_with("\n2"), "HTTP/2 not negotiated: {got}");
    }
    // HTTP/2 goes through hyper, HTTP/1.1 through the proxy's fast path: the service sees the
    // same fields either way.
    for version in ["--http2", "--http1.1"] {
        let out = scene
            .curl("web.shop.localhost")
            .arg(version)
            .arg("https://web.shop.localhost/headers")
            .output()
            .unwrap();
        let headers = body(&out);
        for expected in [
            "x-forwarded-for: 127.0.0.1\n",
            "x-forwarded-proto: https\n",
            "x-forwarded-host: web.shop.localhost\n",
            "forwarded: for=127.0.0.1;proto=https;host=\"web.shop.localhost\"\n",
            "host: web.shop.localhost\n",
        ] {
            assert!(headers.contains(expected), "{version}: missing {expected:?} in:\n{headers}");
        }
    }
    // A hop-by-hop field the client names in Connection does not reach the service (HTTP/1.1).
    let out = scene
        .curl("web.shop.localhost")
        .args(["--http1.1", "-H", "Connection: x-secret", "-H", "X-Secret: 1", "-H", "Keep-Alive: timeout=5"])
        .arg("https://web.shop.localhost/headers")
        .output()
        .unwrap();
    let headers = body(&out);
    assert!(!headers.contains("x-secret") && !headers.contains("keep-alive"), "{headers}");

    // Port 80 serves the same routes in plain HTTP.
    let out = scene.curl("web.shop.localhost").arg("http://web.shop.localhost/headers").output().unwrap();
    assert!(body(&out).contains("x-forwarded-proto: http\n"));

    let status: serde_json::Value = serde_json::from_str(&scene.ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["services"][0]["url"], "https://shop.localhost", "{status}");
    let doctor = scene.ok(&["doctor"]);
    assert!(doctor.contains("serving https on 443 and http on 80"), "{doctor}");
}

#[test]
fn the_ca_is_private_name_constrained_and_issues_nothing_for_real_sites() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-ca", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let ca = scene.ca();
    let key = ca.with_file_name("ca-key.pem");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "CA key mode");
    assert_eq!(meta.uid(), p.user.uid, "the CA belongs to the user the daemon runs as");
    let out = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&ca).output().unwrap();
    let cert = text(&out);
    assert!(cert.contains("X509v3 Name Constraints: critical"), "{cert}");
    assert!(cert.contains("Permitted:") && cert.contains("DNS:localhost"), "{cert}");

    // No certificate for a name locald does not route: the handshake fails.
    for host in ["example.com", "other.localhost"] {
        let out = scene.curl(host).arg(format!("https://{host}/")).output().unwrap();
        assert!(!out.status.success(), "{host} got an answer: {}", text(&out));
        assert_eq!(out.status.code(), Some(35), "{host}: expected a TLS handshake failure: {}", text(&out));
    }
    // The routed name in the same run verifies against the CA.
    let out = scene.curl("shop.localhost").arg("https://shop.localhost/").output().unwrap();
    assert!(body(&out).contains("hello from web"));
}

#[test]
fn starting_down_unknown_and_refusing_services_get_pages() {
    let Some(p) = privileged() else { return };
    // `slow` never gets healthy within the test (its check waits a long start period on a port
    // nobody opens; a request for it is held a few seconds, then gets the starting page),
    // `quiet` passes a health check that is not about its port and listens nowhere, `gone`
    // exits at once after a log line.
    let more = "[services.slow]\ncommand = \"sleep 600\"\nhealth_check = { tcp = true, start_period = \"10m\" }\n\n\
                [services.quiet]\ncommand = \"sleep 600\"\nhealth_check = { command = \"true\" }\n\n\
                [services.gone]\ncommand = \"echo gone-for-good-marker; exit 3\"\nrestart = \"no\"\n";
    let scene = Scene::new(p, "proxy-pages", &project_toml("shop", more));
    // `up` reports the failure of `gone`; the others are started all the same.
    let _ = scene.run(&["up"]);

    let page = |host: &str, scheme: &str| {
        let out = scene
            .curl(host)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{scheme}://{host}/"))
            .output()
            .unwrap();
        body(&out)
    };
    let starting = page("slow.shop.localhost", "https");
    assert!(starting.ends_with("\n503"), "{starting}");
    assert!(
        starting.contains("slow is starting") && starting.contains("http-equiv=\"refresh\""),
        "{starting}"
    );

    let down = page("gone.shop.localhost", "https");
    assert!(down.ends_with("\n503"), "{down}");
    assert!(down.contains("gone is failed") && down.contains("exit code 3"), "{down}");
    assert!(down.contains("gone-for-good-marker"), "the last log lines are shown: {down}");

    let refused = page("quiet.shop.localhost", "https");
    assert!(refused.ends_with("\n502"), "{refused}");
    assert!(refused.contains("Connection refused"), "{refused}");

    let unknown = page("nothing-here.localhost", "http");
    assert!(unknown.ends_with("\n404"), "{unknown}");
    assert!(
        unknown.contains("http://shop.localhost/") && unknown.contains("http://slow.shop.localhost/"),
        "{unknown}"
    );

    // Stopping a running service turns its URL into the stopped page.
    scene.ok(&["stop", "web"]);
    let stopped = page("shop.localhost", "https");
    assert!(stopped.ends_with("\n503") && stopped.contains("web is stopped"), "{stopped}");
}

#[test]
fn forged_host_and_forwarded_fields_never_reach_the_service() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-forged", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let forged = [
        "Connection: host, x-forwarded-host",
        "X-Forwarded-Host: evil.com",
        "X-Forwarded-For: 6.6.6.6",
        "Forwarded: for=6.6.6.6;proto=https;host=\"x",
        "X_Forwarded_Proto: http",
        "X_Forwarded_Host: evil.com",
        "X_Forwarded_For: 6.6.6.6",
    ];
    // Routed by the absolute-form target, with another Host beside it (HTTPS and port 80).
    for (scheme, proto) in [("https", "https"), ("http", "http")] {
        let mut curl = scene.curl("web.shop.localhost");
        curl.args([
            "--http1.1",
            "--request-target",
            "http://web.shop.localhost/headers",
            "-H",
            "Host: evil.com",
        ]);
        for field in forged {
            curl.args(["-H", field]);
        }
        let headers = body(&curl.arg(format!("{scheme}://web.shop.localhost/")).output().unwrap());
        assert_eq!(headers.matches("host: ").count(), 2, "one Host and one X-Forwarded-Host:\n{headers}");
        for expected in [
            "host: web.shop.localhost\n".to_owned(),
            "x-forwarded-host: web.shop.localhost\n".to_owned(),
            "x-forwarded-for: 127.0.0.1\n".to_owned(),
            format!("x-forwarded-proto: {proto}\n"),
            format!("forwarded: for=127.0.0.1;proto={proto};host=\"web.shop.localhost\"\n"),
        ] {
            assert!(headers.contains(&expected), "{scheme}: missing {expected:?} in:\n{headers}");
        }
        assert!(
            !headers.contains("evil") && !headers.contains("6.6.6.6") && !headers.contains('_'),
            "{headers}"
        );
    }
    // HTTP/2 whose :authority (curl takes it from Host) is not the name the TLS connection is
    // for: 421, nothing forwarded.
    let out = scene
        .curl("web.shop.localhost")
        .args(["--http2", "-H", "Host: evil.com", "-w", "\n%{http_code}"])
        .arg("https://web.shop.localhost/headers")
        .output()
        .unwrap();
    let page = body(&out);
    assert!(page.ends_with("\n421") && !page.contains("x-forwarded"), "{page}");
}

#[test]
fn server_sent_events_arrive_before_the_stream_ends() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-sse", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let mut sse = scene
        .curl("shop.localhost")
        .args(["-N", "https://shop.localhost/sse"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sse.stdout.take().unwrap()).lines();
    // Blocks until the proxy passes the first event on; the service holds the stream open until
    // /release, so an answer buffered to the end would never get here.
    assert_eq!(lines.next().unwrap().unwrap(), "data: first");
    assert!(sse.try_wait().unwrap().is_none(), "the stream is still open");
    let out = scene.curl("shop.localhost").arg("https://shop.localhost/release").output().unwrap();
    assert_eq!(body(&out), "released\n");
    let rest: Vec<String> = lines.map_while(Result::ok).filter(|l| !l.is_empty()).collect();
    assert_eq!(rest, ["data: last"]);
    assert!(sse.wait().unwrap().success());
}

#[test]
fn a_100_mb_upload_streams_with_bounded_proxy_memory() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-upload", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let daemon = scene.daemon_pid();
    let size: u64 = 100 << 20;
    let file = scene.dir.join("upload.bin");
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    for version in ["--http2", "--http1.1"] {
        let out = scene
            .curl("shop.localhost")
            .args([version, "-T"])
            .arg(&file)
            .arg("https://shop.localhost/upload")
            .output()
            .unwrap();
        assert_eq!(body(&out).trim(), size.to_string(), "{version}: the service got every byte");
    }
    let hwm = peak_rss_kib(daemon);
    assert!(hwm < 60 * 1024, "daemon peak RSS {hwm} KiB after two 100 MiB uploads: the body was buffered");
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A TLS connection to 127.0.0.1:443 for `host`, trusting only the scene's CA, offering `alpn`.
async fn tls_connect(
    scene: &Scene,
    host: &'static str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = client_config(&std::fs::read(scene.ca()).unwrap(), alpn).unwrap();
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:443").await.unwrap();
    tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from(host).unwrap(), tcp).await.unwrap()
}

#[test]
fn websocket_echo_round_trip_through_443() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-ws", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = tls_connect(&scene, "shop.localhost", &[b"http/1.1"]).await;
        let (mut ws, response) =
            tokio_tungstenite::client_async("wss://shop.localhost/ws", tls).await.unwrap();
        assert_eq!(response.status(), 101);
        websocket_echo(&mut ws).await.unwrap();
        ws.close(None).await.unwrap();
    });
}

/// RFC 8441: a WebSocket over an HTTP/2 stream (extended CONNECT), which the proxy turns into
/// an HTTP/1.1 upgrade to the service.
#[test]
fn websocket_over_http2_extended_connect() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-ws-h2", &project_toml("shop", ""));
    scene.ok(&["up"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = tls_connect(&scene, "shop.localhost", &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let empty = http_body_util::Empty::<bytes::Bytes>::new;
        // A plain request first: by its answer the server's SETTINGS (which must enable
        // extended CONNECT) have arrived.
        let plain = hyper::Request::get("https://shop.localhost/").body(empty()).unwrap();
        assert_eq!(sender.send_request(plain).await.unwrap().status(), 200);
        let mut connect = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri("https://shop.localhost/ws")
            .header("sec-websocket-version", "13")
            .body(empty())
            .unwrap();
        connect.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let response = sender.send_request(connect).await.unwrap();
        assert_eq!(response.status(), 200, "extended CONNECT accepted");
        let stream = hyper::upgrade::on(response).await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(stream),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        websocket_echo(&mut ws).await.unwrap();
    });
}

/// What a one-shot service prints: its TLS trust variables, then whether curl (which reads
/// `CURL_CA_BUNDLE`) verifies `https://shop.localhost/` with them.
const CALL_WEB: &str = "env | grep -E \"^(NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE)=\" | sort; \
                        curl -sS --max-time 20 --resolve shop.localhost:443:127.0.0.1 https://shop.localhost/; \
                        echo curl-exit=$?";

#[test]
fn trust_local_ca_lets_a_service_verify_another_over_https() {
    let Some(p) = privileged() else { return };
    let more = format!(
        "[services.client]\ncommand = '{CALL_WEB}'\nrestart = \"no\"\ndepends_on = [\"web\"]\n\
         env = {{ REQUESTS_CA_BUNDLE = \"/mine.pem\" }}\n\n\
         [services.plain]\ncommand = '{CALL_WEB}'\nrestart = \"no\"\ndepends_on = [\"web\"]\ntrust_local_ca = false\n\n\
         [services.after]\ncommand = \"exec sleep 600\"\nport = false\n\
         depends_on = {{ client = \"completed_successfully\", plain = \"completed_successfully\" }}\n"
    );
    let toml = project_toml("shop", &more).replacen("[project]\n", "[project]\ntrust_local_ca = true\n", 1);
    let scene = Scene::new(p, "proxy-trust", &toml);
    // `up` is done once `after` runs, which is once both callers have finished.
    scene.ok(&["up"]);
    let ca = scene.ca();
    let bundle = ca.with_file_name("ca-bundle.pem");

    let client = scene.ok(&["logs", "client"]);
    for expected in [
        format!("NODE_EXTRA_CA_CERTS={}", ca.display()),
        format!("SSL_CERT_FILE={}", bundle.display()),
        format!("CURL_CA_BUNDLE={}", bundle.display()),
        "REQUESTS_CA_BUNDLE=/mine.pem".to_owned(),
        "hello from web".to_owned(),
        "curl-exit=0".to_owned(),
    ] {
        assert!(
            client.contains(&expected),
            "missing {expected:?} in the opted-in service's output:\n{client}"
        );
    }
    // The same call without the opt-in: no variables, and the system store alone rejects the CA.
    let plain = scene.ok(&["logs", "plain"]);
    for name in ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        assert!(!plain.contains(name), "{name} set without the opt-in:\n{plain}");
    }
    assert!(plain.contains("curl-exit=60"), "expected a certificate verification failure:\n{plain}");

    let meta = std::fs::metadata(&bundle).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644, "bundle mode");
    assert_eq!(meta.uid(), p.user.uid);
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(text.ends_with(&std::fs::read_to_string(&ca).unwrap()), "the bundle ends with the locald CA");
    if let Ok(system) = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
        assert!(text.starts_with(system.trim_end()), "the bundle starts with the system's roots");
    }
}

#[test]
fn https_redirect_sends_plain_http_to_https_with_308() {
    let Some(p) = privileged() else { return };
    // `side` also answers to a name outside the local suffixes, which /etc/hosts cannot have.
    let more = "[services.side]\ncommand = \"exec sleep 600\"\ndomains = [\"side.example\"]\n\
                health_check = { command = \"true\" }\n";
    let toml = project_toml("shop", more).replacen("[project]\n", "[project]\nhttps_redirect = true\n", 1);
    let scene = Scene::new(p, "proxy-redirect", &toml);
    let up = scene.ok(&["up"]);
    assert!(up.contains("\nnote: side.example is not under a reserved local suffix"), "{up}");
    let log = std::fs::read_to_string(scene.dir.join("state/locald/daemon.log")).unwrap();
    assert!(!log.contains("/etc/hosts"), "the other names were still synced:\n{log}");
    let head = |host: &str, url: &str, extra: &[&str]| {
        let out = scene
            .curl(host)
            .args(["-o", "/dev/null", "-D", "-", "-w", "status=%{http_code}\n"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        body(&out).to_ascii_lowercase()
    };
    let answer = head("web.shop.localhost", "http://web.shop.localhost/headers?x=1&y=%20", &[]);
    assert!(answer.contains("status=308"), "{answer}");
    assert!(answer.contains("\nlocation: https://web.shop.localhost/headers?x=1&y=%20\r\n"), "{answer}");

    // A WebSocket handshake on port 80 is sent to https:// as well (its client must use wss://).
    let upgrade = [
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let answer = head("shop.localhost", "http://shop.localhost/ws", &upgrade);
    assert!(
        answer.contains("status=308") && answer.contains("\nlocation: https://shop.localhost/ws\r\n"),
        "{answer}"
    );

    // Followed, it lands on the service over HTTPS; names no project routes are not redirected.
    let out = scene.curl("shop.localhost").args(["-L", "http://shop.localhost/headers"]).output().unwrap();
    assert!(body(&out).contains("x-forwarded-proto: https\n"));
    let answer = head("other.localhost", "http://other.localhost/", &[]);
    assert!(answer.contains("status=404") && !answer.contains("location:"), "{answer}");
}

#[test]
fn ipv6_loopback_serves_https_and_http() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-ipv6", &project_toml("shop", ""));
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap();
    assert!(inet6.lines().any(|l| l.starts_with("00000000000000000000000000000001")), "no ::1 in the netns");
    scene.ok(&["up"]);
    let curl6 = |url: &str, port: u16| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(scene.ca())
            .args(["--resolve", &format!("web.shop.localhost:{port}:[::1]"), url])
            .output()
            .unwrap();
        body(&out)
    };
    assert_eq!(curl6("https://web.shop.localhost/", 443), "hello from web\n");
    let headers = curl6("http://web.shop.localhost/headers", 80);
    assert!(headers.contains("x-forwarded-for: ::1\n"), "{headers}");
    let doctor = scene.ok(&["doctor"]);
    assert!(doctor.contains("also listening on ::1"), "{doctor}");
}

#[test]
fn without_ipv6_loopback_the_proxy_stays_on_ipv4_and_says_why() {
    let Some(p) = privileged() else { return };
    let scene = Scene::new(p, "proxy-no-ipv6", &project_toml("shop", ""));
    // This thread's netns (sysctls under /proc/sys/net are the opener's): ::1 goes away.
    std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "1").unwrap();
    let up = scene.ok(&["up"]);
    assert!(up.contains("https://shop.localhost "), "{up}");
    let out = scene.curl("shop.localhost").arg("https://shop.localhost/").output().unwrap();
    assert_eq!(body(&out), "hello from web\n");
    let status = scene.ok(&["status"]);
    assert!(status.contains("proxy not on ::1: no IPv6 loopback (::1) here: "), "{status}");
    let doctor = scene.ok(&["doctor"]);
    assert!(doctor.contains("not listening on ::1"), "{doctor}");
}
