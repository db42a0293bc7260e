//! The daemon answers only its own user: a connection from another uid is closed unanswered,
//! even one that can reach the socket (root passes the 0700 directory). Needs root to have two
//! users; skipped loudly otherwise (see `locald_tests::privileged`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use locald_tests::{privileged, text};

fn as_user_in(p: &locald_tests::Privileged, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut command: Command = p.as_user(&p.bin("locald"));
    command
        .args(args)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_STATE_HOME", home.join("state"))
        .current_dir(home);
    command.output().unwrap()
}

#[test]
fn another_uid_gets_no_answer() {
    let Some(p) = privileged() else { return };
    let home = p.user_dir("daemon-peer-uid");
    for sub in ["run", "state"] {
        let dir = home.join(sub);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(p.user.uid), Some(p.user.gid)).unwrap();
    }
    // The user's own CLI starts the daemon and is answered.
    let out = as_user_in(p, &home, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // Root (another uid) connects and asks: the daemon hangs up without a word.
    let socket = home.join("run/locald/locald.sock");
    let mut stream = UnixStream::connect(&socket).expect("root can reach the socket file");
    let _ = stream.write_all(b"{\"v\":1,\"msg\":{\"type\":\"ping\"}}\n");
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    assert!(matches!(read, Ok(0)) || read.is_err(), "another uid got an answer: {answer:?}");

    let out = as_user_in(p, &home, &["server", "stop"]);
    assert!(out.status.success(), "{}", text(&out));
}
