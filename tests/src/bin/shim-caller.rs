//! Test helper: plays the unprivileged daemon's side of the shim protocol as a given user,
//! optionally inside a fresh network namespace (so ports 80/443 are free whatever the host runs).
//!
//! shim-caller [--netns] --uid U --gid G discover
//! shim-caller [--netns] --uid U --gid G bind PORT [ADDRESS]
//! shim-caller [--netns] --uid U --gid G raw SHIM-ARGS...   (runs the shim with fd 3 = socket)
//! shim-caller [--netns] --uid U --gid G empty-argv         (execs the shim with argc 0)
//! shim-caller [--netns] --uid U --gid G remove PATH        (the daemon's force_remove_dir_all)
//! shim-caller [--netns] --uid U --gid G listen             (listens on 127.0.0.1 until stdin closes)
//! shim-caller [--join-cgroup DIR]... --uid U --gid G exec SHIM-ARGS...  (execs the shim, after
//!     joining each cgroup DIR as root: a caller confined by cgroups root made)
//!
//! shim-caller write-bundle DIR UID GID ID [--memory B] [--pids N] ARGS...  (the daemon's generator)
//!
//! It prints `key=value` lines for the test to assert on.

use std::ffi::CString;
use std::io::{IoSliceMut, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use locald_daemon::shim::{Privileged, Shim};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::unistd::{Gid, Uid};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Not a shim call: writes a bundle's config.json with the daemon's generator (for bench/).
    if args.first().map(String::as_str) == Some("write-bundle") {
        return write_bundle(&args[1..]);
    }
    let netns = take_flag(&mut args, "--netns");
    while args.iter().any(|a| a == "--join-cgroup") {
        let dir = take_value(&mut args, "--join-cgroup");
        std::fs::write(std::path::Path::new(&dir).join("cgroup.procs"), "0").expect("join cgroup");
    }
    let uid = take_value(&mut args, "--uid").parse().expect("--uid");
    let gid = take_value(&mut args, "--gid").parse().expect("--gid");
    if netns {
        enter_fresh_netns();
    }
    drop_to(uid, gid);
    let mode = args.remove(0);
    match mode.as_str() {
        "discover" => match Shim::discover() {
            Ok(shim) => println!("shim={}", shim.path().display()),
            Err(err) => {
                println!("error={err}");
                return ExitCode::FAILURE;
            }
        },
        "bind" => return bind(&args),
        "raw" => raw(&args),
        "empty-argv" => empty_argv(),
        "remove" => return remove(&args[0]),
        "bundle-control" => bundle_control(&args),
        "listen" => listen(),
        "exec" => {
            let shim = std::env::var("LOCALD_SHIM").expect("LOCALD_SHIM");
            panic!("exec {shim}: {}", Command::new(&shim).args(&args).env_clear().exec());
        }
        other => panic!("unknown mode {other}"),
    }
    ExitCode::SUCCESS
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn take_value(args: &mut Vec<String>, flag: &str) -> String {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing"));
    args.remove(at);
    args.remove(at)
}

fn enter_fresh_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    locald_tests::loopback_up().expect("bring up lo in the fresh network namespace");
}

fn drop_to(uid: u32, gid: u32) {
    nix::unistd::setgroups(&[]).expect("setgroups");
    nix::unistd::setgid(Gid::from_raw(gid)).expect("setgid");
    nix::unistd::setuid(Uid::from_raw(uid)).expect("setuid");
    assert_eq!(nix::unistd::geteuid().as_raw(), uid);
}

/// The real daemon-side client: discover, handshake, bind; then a real connection is accepted.
fn bind(args: &[String]) -> ExitCode {
    let port: u16 = args[0].parse().expect("port");
    let address: Option<IpAddr> = args.get(1).map(|a| a.parse().expect("address"));
    let shim = match Shim::discover() {
        Ok(shim) => shim,
        Err(err) => {
            println!("error={err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match shim.bind(port, address) {
        Ok(listener) => listener,
        Err(err) => {
            println!("error={err}");
            println!("class={:?}", err.class());
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().expect("local_addr");
    println!("listening={local}");
    let mut client = TcpStream::connect(local).expect("connect to the received listener");
    let (mut server, peer) = listener.accept().expect("accept");
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    println!("accepted={peer}");
    println!("uid={}", nix::unistd::getuid());
    ExitCode::SUCCESS
}

/// Runs `bundle run` with fd 3 = a socket, as the daemon does; after `started <pid>` it sends
/// `args[2]` (a signal name) or, for `EOF`, closes the socket as a dying daemon would.
fn bundle_control(args: &[String]) {
    use std::io::BufRead;
    let shim = std::env::var("LOCALD_SHIM").expect("LOCALD_SHIM");
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).expect("socketpair");
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(&shim);
    command.args(["bundle", "run", "--bundle", &args[0], "--id", &args[1]]).env_clear();
    // A stop request is sent once the container said it is ready (its trap is installed: the
    // init of a pid namespace ignores a signal it has no handler for).
    let stop = args[2] != "EOF";
    command.stdout(if stop { Stdio::piped() } else { Stdio::null() }).stderr(Stdio::inherit());
    // SAFETY: only dup2 between fork and exec, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn shim");
    drop(theirs);
    let stream = std::os::unix::net::UnixStream::from(ours);
    // A shim that never answers fails the test instead of hanging it.
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut lines = std::io::BufReader::new(stream.try_clone().unwrap()).lines();
    let started = lines.next().expect("a started line").expect("read");
    println!("{}", started.replace(' ', "="));
    if stop {
        let stdout = child.stdout.take().expect("piped");
        let ready = std::io::BufReader::new(stdout).lines().next().expect("a line from the container");
        assert_eq!(ready.expect("read"), "ready");
        (&stream).write_all(format!("{}\n", args[2]).as_bytes()).unwrap();
        let exited = lines.next().expect("an exited line").expect("read");
        println!("{}", exited.replace(' ', "="));
    } else {
        drop(lines);
        drop(stream);
    }
    let status = child.wait().expect("wait shim");
    println!("shim_exit={}", status.code().unwrap_or(-1));
}

/// write-bundle DIR UID GID ID [--memory BYTES] [--pids N] ARGS...
fn write_bundle(args: &[String]) -> ExitCode {
    let mut rest = args[4..].to_vec();
    let mut limit = |flag: &str| {
        let at = rest.iter().position(|a| a == flag)?;
        rest.remove(at);
        Some(rest.remove(at).parse::<i64>().expect("a number"))
    };
    let (memory_bytes, pids) = (limit("--memory"), limit("--pids"));
    let config = locald_image::bundle::ContainerConfig {
        id: args[3].clone(),
        uid: args[1].parse().expect("uid"),
        gid: args[2].parse().expect("gid"),
        args: rest,
        memory_bytes,
        pids,
        ..Default::default()
    };
    locald_image::bundle::write(std::path::Path::new(&args[0]), &config).expect("write bundle");
    ExitCode::SUCCESS
}

/// Try-Catch-Delegate removal exactly as the daemon does it.
fn remove(path: &str) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    match runtime.block_on(locald_daemon::shim::force_remove_dir_all(
        std::path::Path::new(path),
        locald_daemon::shim::discover(),
    )) {
        Ok(()) => {
            println!("removed={path}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("error={err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the shim with raw arguments and fd 3 = a socket, reporting what came back.
fn raw(args: &[String]) {
    let shim = std::env::var("LOCALD_SHIM").expect("LOCALD_SHIM");
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).expect("socketpair");
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(&shim);
    command.args(args).env_clear().stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only dup2 between fork and exec, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn shim");
    drop(theirs);
    let got_fd = receive_fd(ours.as_raw_fd());
    let out = child.wait_with_output().expect("wait shim");
    println!("exit={}", out.status.code().unwrap_or(-1));
    println!("fd={}", if got_fd { "yes" } else { "no" });
    println!("stdout={}", String::from_utf8_lossy(&out.stdout).trim());
    println!("stderr={}", String::from_utf8_lossy(&out.stderr).trim());
    // In a fresh netns nothing else listens: this counts what the shim's call left listening.
    println!("listeners={}", listening_sockets());
}

/// TCP sockets in state LISTEN in this network namespace.
fn listening_sockets() -> usize {
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|text| text.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("0A")).count())
        .sum()
}

/// A listener of this user's, for `debug port` to find: prints its port, holds it until stdin
/// closes.
fn listen() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    println!("port={}", listener.local_addr().expect("local_addr").port());
    std::io::stdout().flush().expect("flush");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(listener);
}

fn receive_fd(socket: RawFd) -> bool {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    match recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::empty()) {
        Ok(msg) => msg
            .cmsgs()
            .map(|mut c| c.any(|m| matches!(m, ControlMessageOwned::ScmRights(_))))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// execve with argc 0 (the pkexec CVE-2021-4034 shape). Newer kernels substitute argv = [""].
fn empty_argv() {
    let shim = CString::new(std::env::var("LOCALD_SHIM").expect("LOCALD_SHIM")).unwrap();
    let mut stderr_pipe = [0; 2];
    // SAFETY: a plain pipe(2) into a two-element array.
    assert_eq!(unsafe { libc::pipe(stderr_pipe.as_mut_ptr()) }, 0);
    // SAFETY: the helper is single-threaded; the child only dup2s and execs.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            // SAFETY: async-signal-safe calls only; argv and envp are null-terminated empty lists.
            unsafe {
                libc::dup2(stderr_pipe[1], 2);
                let empty: [*const libc::c_char; 1] = [std::ptr::null()];
                libc::execve(shim.as_ptr(), empty.as_ptr(), empty.as_ptr());
                libc::_exit(127);
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            // SAFETY: closing our copy of the write end we own.
            unsafe { libc::close(stderr_pipe[1]) };
            let mut stderr = String::new();
            // SAFETY: the read end is ours and open; File takes ownership.
            let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(stderr_pipe[0]) };
            let _ = file.read_to_string(&mut stderr);
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            let code = match status {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("shim did not exit normally: {other:?}"),
            };
            println!("exit={code}");
            println!("stderr={}", stderr.trim());
        }
    }
}
