//! The per-client cap on requests at services: one HTTP/2 connection with many streams to a slow
//! service must not open a service connection per stream (the review saw 200 streams open 200).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use http_body_util::{BodyExt, Empty};

use super::routing_tests::{project, running, service};
use super::tests::{short_limits, start};
use super::*;

/// A service that holds every request until `release` is set, counting how many it holds at
/// once and the most it ever held.
struct Slow {
    port: u16,
    held: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
}

fn slow_service() -> Slow {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (held, most, release) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (h, m, r) = (held.clone(), most.clone(), release.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (held, most, release) = (h.clone(), m.clone(), r.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head at a time; the proxy's requests have no body.
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(n @ 1..) => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    head.clear();
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    held.fetch_sub(1, Ordering::SeqCst);
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Slow { port, held, most, release }
}

#[tokio::test]
async fn one_h2_client_has_at_most_its_share_of_requests_at_a_service() {
    const CAP: usize = 3;
    const STREAMS: usize = 10;
    let limits = limits::Limits { forwards_per_client: CAP, body: Duration::from_secs(10), ..short_limits() };
    let proxy = start(limits).await;
    let slow = slow_service();
    proxy.shared.routes.set(RouteTable::build(&[project(
        "t",
        false,
        vec![service("web", slow.port, &["t.localhost"], running())],
    )]));

    let (sender, _connection) = proxy.h2("t.localhost").await;
    let requests: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = Request::get(format!("https://t.localhost/{i}")).body(Empty::new()).unwrap();
                let response = sender.send_request(request).await.expect("answered");
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.held.load(Ordering::SeqCst) < CAP {
        assert!(Instant::now() < deadline, "the service never got {CAP} requests");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The other streams are open at the proxy; give them the time they would need to reach the
    // service if nothing held them back (the absence of an event needs a window).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slow.held.load(Ordering::SeqCst), CAP, "the requests beyond the cap waited");

    slow.release.store(true, Ordering::SeqCst);
    for request in requests {
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), request).await.unwrap().unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "every stream answered in its turn");
    }
    assert_eq!(slow.most.load(Ordering::SeqCst), CAP);
}

#[tokio::test]
async fn a_fast_path_client_waiting_for_its_answer_is_not_evicted_as_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = limits::Limits { max_clients: 2, ..short_limits() };
    let proxy = start(limits).await;
    let slow = slow_service();
    proxy.shared.routes.set(RouteTable::build(&[project(
        "t",
        false,
        vec![service("web", slow.port, &["t.localhost"], running())],
    )]));

    // A plain HTTP/1.1 request takes the fast path and waits at the service, moving no bytes.
    let mut waiting = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    waiting.write_all(b"GET / HTTP/1.1\r\nHost: t.localhost\r\n\r\n").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.held.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "the request never reached the service");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Later than the waiting one's last byte, so more recently active: an idle connection.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut idle = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    while proxy.shared.admission.admitted() < 2 {
        assert!(Instant::now() < deadline, "the idle connection was never admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // At the cap, a third connection makes room: the idle one must go, not the waiting one.
    let _third = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed to make room")
        .unwrap();

    slow.release.store(true, Ordering::SeqCst);
    let mut answer = [0u8; 128];
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok"), "{answer:?}");
}
