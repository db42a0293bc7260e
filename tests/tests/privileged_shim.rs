//! The privileged suite for the foundation: the shim installed setuid root, driven as a
//! throwaway user, and attacked. Each refusal is paired with the same request made valid, so a
//! refusal that happened for another reason would be noticed.
//!
//! Runs as root (CI is root); without root it fails under LOCALD_REQUIRE_PRIVILEGED=1.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use locald_tests::{Privileged, field, install, privileged, text, wait_for};

fn fixture() -> Option<&'static Privileged> {
    privileged()
}

fn raw_shim(p: &Privileged, netns: bool, args: &[&str]) -> Output {
    p.caller(netns).arg("raw").args(args).output().expect("run shim-caller")
}

#[test]
fn handshake_works_as_the_user() {
    let Some(p) = fixture() else { return };
    let out = p.caller(false).arg("discover").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(field(&out, "shim"), p.shim().display().to_string());

    let out = p.as_user(&p.shim()).arg("--shim-version").output().unwrap();
    let mode = locald_shim_protocol::ShimMode::Setuid.line();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n{mode}\n", locald_shim_protocol::version_line())
    );
}

#[test]
fn binds_80_and_443_in_a_fresh_netns_and_the_listener_accepts() {
    let Some(p) = fixture() else { return };
    for (port, address) in [(80, None), (443, None), (443, Some("::1"))] {
        let mut command = p.caller(true);
        command.args(["bind", &port.to_string()]);
        command.args(address);
        let out = command.output().unwrap();
        assert!(out.status.success(), "bind {port}: {}", text(&out));
        assert!(field(&out, "listening").ends_with(&format!(":{port}")), "{}", text(&out));
        // The accepting process is the unprivileged user, on the socket the shim made.
        assert_eq!(field(&out, "uid"), p.user.uid.to_string());
        assert!(!field(&out, "accepted").is_empty());
    }
}

#[test]
fn unprivileged_ports_are_refused() {
    let Some(p) = fixture() else { return };
    for port in ["0", "1024", "8080", "65535"] {
        let out = raw_shim(p, true, &["bind", "--port", port]);
        assert_eq!(field(&out, "exit"), "77", "port {port}: {}", text(&out));
        assert_eq!(field(&out, "fd"), "no");
        assert!(field(&out, "stderr").contains("not a privileged port"), "{}", text(&out));
    }
    // The same call on a privileged port goes through, so the refusal above was the policy.
    let out = raw_shim(p, true, &["bind", "--port", "1023"]);
    assert_eq!(field(&out, "exit"), "0", "{}", text(&out));
    assert_eq!(field(&out, "fd"), "yes");
}

/// Issue 17 finding 8: `--non-loopback` let any user hold a privileged port on every interface
/// (`0.0.0.0:79`). The flag is gone; no address but loopback is bound, whatever is asked.
#[test]
fn non_loopback_addresses_are_refused_even_with_the_old_flag() {
    let Some(p) = fixture() else { return };
    for address in ["0.0.0.0", "::", "::ffff:127.0.0.1"] {
        let out = raw_shim(p, true, &["bind", "--port", "79", "--address", address]);
        assert_eq!(field(&out, "exit"), "77", "{address}: {}", text(&out));
        assert_eq!(field(&out, "fd"), "no");
        assert_eq!(field(&out, "listeners"), "0", "{address}: {}", text(&out));
    }
    let out = raw_shim(p, true, &["bind", "--port", "79", "--address", "0.0.0.0", "--non-loopback"]);
    assert_eq!(field(&out, "exit"), "64", "the flag is not in the protocol: {}", text(&out));
    assert_eq!(field(&out, "fd"), "no");
    assert_eq!(field(&out, "listeners"), "0", "nothing listens on 0.0.0.0:79: {}", text(&out));
    // The same port on loopback is bound, and the probe sees that listener.
    let out = raw_shim(p, true, &["bind", "--port", "79", "--address", "127.0.0.1"]);
    assert_eq!(field(&out, "exit"), "0", "{}", text(&out));
    assert_eq!(field(&out, "fd"), "yes");
    assert_eq!(field(&out, "listeners"), "1", "{}", text(&out));
}

#[test]
fn an_empty_argv_is_refused() {
    let Some(p) = fixture() else { return };
    let out = p.caller(false).arg("empty-argv").output().unwrap();
    assert_eq!(field(&out, "exit"), "77", "{}", text(&out));
    assert!(field(&out, "stderr").contains("empty argv"), "{}", text(&out));
}

#[test]
fn the_shim_refuses_work_when_not_setuid() {
    let Some(p) = fixture() else { return };
    let dir = p.scratch_dir("not-setuid");
    let shim = dir.join("locald-shim");
    install(&p.shim(), &shim, 0o755);
    let out =
        p.caller(true).env("LOCALD_SHIM", &shim).args(["raw", "bind", "--port", "80"]).output().unwrap();
    assert_eq!(field(&out, "exit"), "77", "{}", text(&out));
    assert!(field(&out, "stderr").contains("setuid"), "{}", text(&out));
}

/// A preload library that would leave a marker if the loader honoured it in the setuid shim.
fn build_preload_library(dir: &std::path::Path, marker: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("evil.c");
    fs::write(
        &source,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{\n  FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f);\n}}\n",
            marker.display()
        ),
    )
    .unwrap();
    let library = dir.join("evil.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) is needed to build the LD_PRELOAD probe");
    assert!(status.success());
    fs::set_permissions(&library, fs::Permissions::from_mode(0o755)).unwrap();
    library
}

#[test]
fn caller_environment_has_no_effect() {
    let Some(p) = fixture() else { return };
    let dir = p.scratch_dir("env-probe");
    let markers = p.scratch_dir("env-markers");
    // The user may write markers here; the library itself stays root-owned.
    chown(&markers, Some(p.user.uid), Some(p.user.gid)).unwrap();
    let marker = markers.join("preloaded");
    let library = build_preload_library(&dir, &marker);

    // Control: the same library does run in a non-setuid program of the user's.
    let out = p.as_user(std::path::Path::new("/bin/true")).env("LD_PRELOAD", &library).output().unwrap();
    assert!(out.status.success());
    assert!(marker.exists(), "the probe library must work, or this test proves nothing");
    fs::remove_file(&marker).unwrap();

    let out = p
        .as_user(&p.shim())
        .arg("--shim-version")
        .env("LD_PRELOAD", &library)
        .env("LD_LIBRARY_PATH", &dir)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "full")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mode = locald_shim_protocol::ShimMode::Setuid.line();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n{mode}\n", locald_shim_protocol::version_line())
    );
    assert!(out.stderr.is_empty(), "no logging or backtraces from the caller's variables: {}", text(&out));
    assert!(!marker.exists(), "LD_PRELOAD ran code inside the setuid shim");

    // A refused request prints exactly one line, whatever the caller's variables ask for.
    let out =
        p.as_user(&p.shim()).args(["bind", "--port", "8080"]).env("RUST_BACKTRACE", "full").output().unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", text(&out));
    assert!(!marker.exists());
}

/// While the shim is blocked handing over the listener, its fd table holds only 0-3, its
/// supplementary groups are gone and it already runs as the caller.
#[test]
fn inherited_fds_are_closed_and_groups_dropped_in_the_running_shim() {
    let Some(p) = fixture() else { return };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // Fill the socket so the shim's sendmsg blocks until we drain it: a window to inspect it.
    theirs.set_nonblocking(true).unwrap();
    let chunk = [0u8; 4096];
    while (&theirs).write(&chunk).is_ok() {}
    theirs.set_nonblocking(false).unwrap();

    let leaked_file = fs::File::open("/etc/passwd").unwrap();
    let (leaked_socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let leaked_fds = [leaked_file.as_raw_fd(), leaked_socket.as_raw_fd()];
    let theirs_fd = theirs.as_raw_fd();

    let mut child = spawn_blocked_shim(p, theirs_fd, &leaked_fds);
    drop(theirs);
    let pid = child.id();
    let status = wait_for(Duration::from_secs(20), || {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?;
        let all_caller = uid_line.split_whitespace().skip(1).all(|u| u == p.user.uid.to_string());
        let sleeping =
            status.lines().any(|l| l.starts_with("State:") && l.split_whitespace().nth(1) == Some("S"));
        (all_caller && sleeping).then_some(status)
    })
    .expect("the shim never reached the hand-over with root dropped");

    let target = |path: String| fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
    let leaked_targets: BTreeSet<String> =
        leaked_fds.iter().map(|fd| target(format!("/proc/self/fd/{fd}"))).collect();
    let shim_fds: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .map(|fd: i32| (fd, target(format!("/proc/{pid}/fd/{fd}"))))
        .collect();
    for (fd, target) in &shim_fds {
        assert!(!leaked_targets.contains(target), "inherited fd survived in the shim as fd {fd} -> {target}");
    }
    // 0-2, the control socket, and the listener being handed over: nothing else.
    let numbers: BTreeSet<i32> = shim_fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers, BTreeSet::from([0, 1, 2, 3, 4]), "{shim_fds:?}");
    assert!(shim_fds.iter().any(|(fd, t)| *fd == 4 && t.starts_with("socket:")), "{shim_fds:?}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim_end(), "Groups:", "supplementary groups must be dropped");

    // Drain the socket; the shim then completes the hand-over and exits 0.
    let mut sink = ours;
    sink.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(std::io::Read::read(&mut sink, &mut buf), Ok(n) if n > 0) {}
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "shim exit {status}");
}

/// The shim as the user in a fresh network namespace, with fd 3 and two leaked fds.
fn spawn_blocked_shim(p: &Privileged, control: i32, leaked: &[i32; 2]) -> std::process::Child {
    let leaked = *leaked;
    let (uid, gid) = (p.user.uid, p.user.gid);
    let mut command = Command::new(p.shim());
    command.args(["bind", "--port", "80"]).env_clear().stdout(Stdio::null()).stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, unshare, socket/ioctl, setgroups, setgid,
    // setuid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let check =
                |ret: libc::c_int| if ret == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            for fd in leaked {
                // The leaks must survive exec to test anything: clear FD_CLOEXEC.
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            check(libc::dup2(control, 3))?;
            // A fresh netns so port 80 is free whatever the host runs.
            check(libc::unshare(libc::CLONE_NEWNET))?;
            locald_tests::loopback_up()?;
            // A supplementary group whose removal the test can observe.
            let groups = [0 as libc::gid_t];
            check(libc::setgroups(1, groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    command.spawn().expect("spawn shim")
}

/// A listener held by a `shim-caller listen` running as `uid`/`gid`, and its port.
fn listener_of(p: &Privileged, uid: u32, gid: u32) -> (std::process::Child, String) {
    let mut child = Command::new(p.bin("shim-caller"))
        .env_clear()
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string(), "listen"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let port = line.trim().strip_prefix("port=").unwrap_or_else(|| panic!("no port: {line}")).to_owned();
    (child, port)
}

fn debug_port(p: &Privileged, port: &str) -> Vec<String> {
    let out = p.as_user(&p.shim()).args(["debug", "port", port]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Issue 17 finding 8: which process of another user holds a socket is not something `ps` or
/// `/proc` tells the caller; the shim (root) used to print its pid and command. Now another
/// user's listener (root's, or a second user's) shows only its uid; the caller's own shows all.
#[test]
fn debug_port_shows_other_users_listeners_only_by_uid() {
    let Some(p) = fixture() else { return };
    // Root's listener: this test process.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    assert_eq!(debug_port(p, &port), ["uid=0"], "no pid or command of root's process");
    let out = p
        .as_user(&p.bin("locald"))
        .args(["debug", "port", &port])
        .env("LOCALD_SHIM", p.shim())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a process of uid 0"), "{}", text(&out));
    assert!(!stdout.contains(&std::process::id().to_string()), "{}", text(&out));
    drop(listener);
    assert!(debug_port(p, &port).is_empty());

    // A second user's listener.
    let other = &p.other_user;
    let (mut theirs, port) = listener_of(p, other.uid, other.gid);
    let lines = debug_port(p, &port);
    drop(theirs.stdin.take());
    theirs.wait().unwrap();
    assert_eq!(lines, [format!("uid={}", other.uid)], "pid {} must not be shown", theirs.id());

    // The caller's own listener: pid, uid and command name, reduced to printable ASCII.
    let (mut mine, port) = listener_of(p, p.user.uid, p.user.gid);
    let lines = debug_port(p, &port);
    drop(mine.stdin.take());
    mine.wait().unwrap();
    assert_eq!(lines, [format!("pid={} uid={} comm=shim-caller", mine.id(), p.user.uid)]);
}
