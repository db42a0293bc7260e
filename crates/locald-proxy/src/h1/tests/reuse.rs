//! A kept service connection is only used again when nothing is waiting on it, a request is
//! sent twice only when that cannot repeat an action, and the fast path frames what hyper's
//! path would refuse as hyper's path does (issue 18, findings 1 and 6).

use tokio::io::AsyncWriteExt;

use super::raw::{Raw, Script, target};
use super::{proxy, read_head, response};

const INJECTED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nINJECTED-bytes";
const SECOND: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";

/// The service answers `/first` with `first`, then, once the client has that answer, writes
/// `later` on the same connection; `/second` gets its own answer. The second request must get
/// that answer, never the bytes that came after the first.
async fn stale(method: &str, first: &'static [u8], later: &'static [u8]) {
    let mut service = Raw::start(move |head| match target(head) {
        "/first" => Script { now: first.to_vec(), later: Some(later.to_vec()), close: false },
        _ => Script { now: SECOND.to_vec(), ..Script::default() },
    })
    .await;
    let (mut client, _) = proxy(service.port);
    client
        .write_all(format!("{method} /first HTTP/1.1\r\nHost: app.localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = if method == "HEAD" || !first.ends_with(b"hello") {
        read_head(&mut client).await
    } else {
        let (head, body) = response(&mut client).await;
        assert_eq!(body, b"hello");
        head
    };
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    service.inject().await;
    client.write_all(b"GET /second HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut client).await;
    assert_eq!(
        (head.lines().next().unwrap(), String::from_utf8_lossy(&body).as_ref()),
        ("HTTP/1.1 200 OK", "second"),
        "{method} then {:?}: the second request got other bytes",
        String::from_utf8_lossy(first)
    );
    let requests = service.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].0, 2, "the second request went over a new connection: {requests:?}");
}

#[tokio::test]
async fn bytes_after_a_length_are_not_the_next_answer() {
    stale("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", INJECTED).await;
}

#[tokio::test]
async fn a_body_after_a_head_response_is_not_the_next_answer() {
    let later = [&b"hello"[..], INJECTED].concat().leak();
    stale("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", later).await;
}

#[tokio::test]
async fn bytes_after_a_204_are_not_the_next_answer() {
    stale("GET", b"HTTP/1.1 204 No Content\r\n\r\n", INJECTED).await;
}

#[tokio::test]
async fn a_body_after_a_304_with_a_length_is_not_the_next_answer() {
    let later = [&b"0123456789012345678901234567890123456789"[..], INJECTED].concat().leak();
    stale("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 40\r\n\r\n", later).await;
}

#[tokio::test]
async fn an_answer_ahead_of_the_request_is_not_taken() {
    // The service writes a whole response before the second request is even sent.
    stale("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", SECOND).await;
}

/// The service answers `/warm` properly (so the connection is kept) and everything else with
/// `answer`; returns what the client got for `method /again` and how many of those requests
/// reached the service.
async fn after_warm(method: &str, answer: Script) -> (String, usize) {
    let service = Raw::start(move |head| match target(head) {
        "/warm" => {
            Script { now: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), ..Script::default() }
        }
        _ => answer.clone(),
    })
    .await;
    let (mut client, _) = proxy(service.port);
    client.write_all(b"GET /warm HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut client).await.1, b"ok");
    let length = if method == "GET" || method == "HEAD" { "" } else { "Content-Length: 0\r\n" };
    let request = format!("{method} /again HTTP/1.1\r\nHost: app.localhost\r\n{length}\r\n");
    client.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = response(&mut client).await;
    let sent = service.requests().iter().filter(|(_, h)| target(h) == "/again").count();
    (head.lines().next().unwrap().to_owned(), sent)
}

#[tokio::test]
async fn an_invalid_answer_is_a_502_and_the_request_is_not_sent_again() {
    let invalid: [&[u8]; 3] = [
        b"nonsense\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        // A head larger than the proxy takes, and still going.
        &*[&b"HTTP/1.1 200 OK\r\nx-big: "[..], &[b'a'; 70 * 1024]].concat().leak(),
    ];
    for answer in invalid {
        for method in ["GET", "DELETE", "PUT"] {
            let script = Script { now: answer.to_vec(), ..Script::default() };
            let (status, sent) = after_warm(method, script).await;
            assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{method}");
            assert_eq!(sent, 1, "{method} reached the service {sent} times after an answer");
        }
    }
}

#[tokio::test]
async fn a_close_before_any_answer_repeats_only_a_safe_request() {
    // The service reads the request and closes a kept connection without a byte: a GET goes
    // again (and gets the new connection's answer), a DELETE or PUT gets the page.
    let script = || Script { now: Vec::new(), close: true, ..Script::default() };
    for (method, sent) in [("GET", 2), ("DELETE", 1), ("PUT", 1)] {
        let (status, got) = after_warm(method, script()).await;
        assert_eq!(got, sent, "{method}");
        assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{method}");
    }
    // A close after part of a head is an answer begun: not repeated either.
    let partial = Script { now: b"HTTP/1.1 200".to_vec(), close: true, ..Script::default() };
    assert_eq!(after_warm("GET", partial).await, ("HTTP/1.1 502 Bad Gateway".to_owned(), 1));
}

#[tokio::test]
async fn framing_hyper_refuses_is_refused_here_too() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let script = Script { now: answer.to_vec(), close: true, ..Script::default() };
        let (status, sent) = after_warm("GET", script).await;
        assert_eq!(
            (status.as_str(), sent),
            ("HTTP/1.1 502 Bad Gateway", 1),
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_a_400_not_the_service_page() {
    // The service never answers: only the body can end the exchange.
    let service = Raw::start(|_| Script::default()).await;
    let (mut client, served) = proxy(service.port);
    let request = b"POST /up HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n";
    client.write_all(request).await.unwrap();
    // The fast path hands a body over; hyper's path (as the proxy runs it) answers.
    let super::super::Outcome::Fallback(rest) = served.await.unwrap() else { panic!("not handed over") };
    tokio::spawn(super::differential::hyper_path(rest, service.port));
    let (head, body) = response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(!String::from_utf8_lossy(&body).contains("not answering"));
}
