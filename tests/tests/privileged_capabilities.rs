//! The `--ports-only` install: `locald admin setup --ports-only` puts the shim in place root-owned,
//! not setuid, with the file capability `cap_net_bind_service=ep`. Driven as the throwaway user:
//! it binds 80 and 443 and hands the listener over, refuses every other request naming the full
//! install (and the effect is checked absent), holds no capability once the socket is bound, and
//! a copy of it carries nothing and is not trusted.
//!
//! Runs as root (CI is root); without root it fails under LOCALD_REQUIRE_PRIVILEGED=1.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use locald_daemon::shim::filecap::{self, FileCaps};
use locald_shim_protocol::{ShimMode, version_line};
use locald_tests::{Privileged, field, install, privileged, text, wait_for};

/// The fixture and the capability install, made once per test binary by `locald admin setup`.
fn fixture() -> Option<(&'static Privileged, &'static Path)> {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    let p = privileged()?;
    let shim = SHIM.get_or_init(|| {
        let dest = p.scratch_dir("ports-only").join("libexec");
        let out = setup(p, &dest, true);
        assert!(out.status.success(), "{}", text(&out));
        dest.join("locald-shim")
    });
    Some((p, shim))
}

fn setup(p: &Privileged, dest: &Path, ports_only: bool) -> Output {
    let mut command = Command::new(p.bin("locald"));
    command.args(["admin", "setup", "--dest"]).arg(dest);
    if ports_only {
        command.arg("--ports-only");
    }
    command.output().unwrap()
}

/// `getcap` of libcap2-bin: an outside reading of what the kernel will grant.
fn getcap(path: &Path) -> String {
    let out = Command::new("getcap")
        .arg(path)
        .output()
        .expect("getcap (Debian package libcap2-bin) is needed for this suite");
    assert!(out.status.success(), "getcap {}: {}", path.display(), text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn raw(p: &Privileged, shim: &Path, args: &[&str]) -> Output {
    p.caller(true).env("LOCALD_SHIM", shim).arg("raw").args(args).output().expect("run shim-caller")
}

#[test]
fn the_install_is_not_setuid_and_carries_exactly_the_bind_capability() {
    let Some((p, shim)) = fixture() else { return };
    let meta = fs::metadata(shim).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, 0, 0o755),
        "root:root 0755, no setuid bit"
    );
    assert_eq!(getcap(shim), format!("{} cap_net_bind_service=ep", shim.display()));
    assert_eq!(filecap::read(shim).unwrap(), Some(FileCaps::BIND_ONLY));

    let out = p.as_user(shim).arg("--shim-version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n{}\n", version_line(), ShimMode::Capabilities.line()),
        "{}",
        text(&out)
    );
}

#[test]
fn setup_is_idempotent_and_switches_modes_in_place() {
    let Some((p, _)) = fixture() else { return };
    let dest = p.scratch_dir("ports-switch").join("libexec");
    let target = dest.join("locald-shim");
    let state = |target: &Path| {
        let mode = fs::metadata(target).unwrap().mode() & 0o7777;
        (mode, filecap::read(target).unwrap())
    };

    assert!(setup(p, &dest, true).status.success());
    let again = setup(p, &dest, true);
    assert!(text(&again).contains("already installed and current"), "{}", text(&again));
    assert_eq!(state(&target), (0o755, Some(FileCaps::BIND_ONLY)));

    let full = setup(p, &dest, false);
    assert!(full.status.success() && text(&full).contains("installed"), "{}", text(&full));
    assert_eq!(state(&target), (0o4755, None), "the setuid install carries no capability");
    let again = setup(p, &dest, false);
    assert!(text(&again).contains("already installed and current (root:root 4755)"), "{}", text(&again));

    let back = setup(p, &dest, true);
    assert!(back.status.success() && !text(&back).contains("already"), "{}", text(&back));
    assert_eq!(state(&target), (0o755, Some(FileCaps::BIND_ONLY)), "the setuid bit is gone");
    let names: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from("locald-shim")], "no temporary file left");
}

#[test]
fn binds_80_and_443_for_the_user_and_hands_the_listener_over() {
    let Some((p, shim)) = fixture() else { return };
    for (port, address) in [(80, None), (443, None), (443, Some("::1"))] {
        let mut command = p.caller(true);
        command.env("LOCALD_SHIM", shim).args(["bind", &port.to_string()]).args(address);
        let out = command.output().unwrap();
        assert!(out.status.success(), "bind {port}: {}", text(&out));
        assert!(field(&out, "listening").ends_with(&format!(":{port}")), "{}", text(&out));
        assert_eq!(field(&out, "uid"), p.user.uid.to_string());
        assert!(!field(&out, "accepted").is_empty());
    }
    // The bind rules are the setuid install's: an unprivileged port, a non-loopback address.
    let out = raw(p, shim, &["bind", "--port", "8080"]);
    assert_eq!((field(&out, "exit"), field(&out, "fd")), ("77".into(), "no".into()), "{}", text(&out));
    let out = raw(p, shim, &["bind", "--port", "80", "--address", "0.0.0.0"]);
    assert_eq!((field(&out, "exit"), field(&out, "fd")), ("77".into(), "no".into()), "{}", text(&out));
    assert_eq!(field(&out, "listeners"), "0", "{}", text(&out));
}

fn assert_refused_naming_the_full_install(out: &Output, request: &str) {
    assert_eq!(field(out, "exit"), "77", "{request}: {}", text(out));
    let stderr = field(out, "stderr");
    assert!(
        stderr.starts_with(&format!("locald-shim: refused: {request} needs the full install")),
        "{stderr}"
    );
    assert!(stderr.contains("capabilities mode") && stderr.contains("sudo locald admin setup"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("stderr=").count(), 1);
}

#[test]
fn every_request_but_bind_is_refused_with_the_mode_named_and_changes_nothing() {
    let Some((p, shim)) = fixture() else { return };
    let uid = p.user.uid;

    // cleanup: a root-owned leftover in the user's .locald, which the setuid shim would remove.
    let project = p.user_dir("ports-cleanup");
    let locald = project.join(".locald");
    fs::create_dir(&locald).unwrap();
    chown(&locald, Some(uid), Some(p.user.gid)).unwrap();
    let leftover = locald.join("root-owned");
    fs::create_dir(&leftover).unwrap();
    fs::write(leftover.join("file"), "x").unwrap();
    let out = raw(p, shim, &["admin", "cleanup", leftover.to_str().unwrap()]);
    assert_refused_naming_the_full_install(&out, "admin cleanup");
    assert!(leftover.join("file").exists(), "the leftover was removed");

    // sync-hosts: /etc/hosts stays byte for byte, no block for the user appears.
    let hosts = fs::read("/etc/hosts").unwrap();
    let out = raw(p, shim, &["admin", "sync-hosts", "ports-only.test"]);
    assert_refused_naming_the_full_install(&out, "admin sync-hosts");
    assert_eq!(fs::read("/etc/hosts").unwrap(), hosts, "/etc/hosts changed");

    // mount-loop: a valid-shaped request on the user's own image; nothing gets mounted.
    let image = project.join("data.img");
    let made = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).arg("1M").output().unwrap();
    assert!(made.status.success(), "mkfs.ext4: {}", text(&made));
    chown(&image, Some(uid), Some(p.user.gid)).unwrap();
    let mounts = locald.join("mounts");
    let target = mounts.join("data");
    fs::create_dir_all(&target).unwrap();
    locald_tests::chown_tree(&mounts, uid, p.user.gid);
    let args =
        ["admin", "mount-loop", "--image", image.to_str().unwrap(), "--target", target.to_str().unwrap()];
    let out = raw(p, shim, &args);
    assert_refused_naming_the_full_install(&out, "admin mount-loop");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(target.to_str().unwrap()), "mounted: {mountinfo}");
    let loops = fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok());
    assert!(loops.into_iter().all(|backing| !backing.contains("data.img")), "a loop device holds the image");

    // bundle run: no state for the user's container appears under the shim's state directory.
    let bundle = p.user_dir("ports-bundle");
    fs::write(bundle.join("config.json"), "{}").unwrap();
    chown(bundle.join("config.json"), Some(uid), Some(p.user.gid)).unwrap();
    let out = raw(p, shim, &["bundle", "run", "--bundle", bundle.to_str().unwrap(), "--id", "ports-only"]);
    assert_refused_naming_the_full_install(&out, "bundle run");
    assert!(!Path::new(&format!("/run/locald/{uid}/bundles/ports-only")).exists());

    let out = raw(p, shim, &["admin", "unmount-loop", "--target", target.to_str().unwrap()]);
    assert_refused_naming_the_full_install(&out, "admin unmount-loop");
    let out = raw(p, shim, &["debug", "port", "80"]);
    assert_refused_naming_the_full_install(&out, "debug port");
}

/// While the shim is blocked handing over the listener (the socket it sends on is full), it has
/// bound and dropped: every capability set it can change is empty, fds are 0-4 only.
#[test]
fn after_the_bind_the_shim_holds_no_capability() {
    let Some((p, shim)) = fixture() else { return };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    while (&theirs).write(&[0u8; 4096]).is_ok() {}
    theirs.set_nonblocking(false).unwrap();
    let control = theirs.as_raw_fd();
    let (uid, gid) = (p.user.uid, p.user.gid);

    let mut command = Command::new(shim);
    command.args(["bind", "--port", "80"]).env_clear().stdout(Stdio::null()).stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls (dup2, unshare, socket/ioctl, setgroups, setgid, setuid)
    // between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let check =
                |ret: libc::c_int| if ret == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::dup2(control, 3))?;
            check(libc::unshare(libc::CLONE_NEWNET))?;
            locald_tests::loopback_up()?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn shim");
    drop(theirs);
    let pid = child.id();
    // Bound (fd 4 is the listener) and asleep: only the blocked sendmsg sleeps after the bind.
    let status = wait_for(Duration::from_secs(20), || {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let sleeping =
            status.lines().any(|l| l.starts_with("State:") && l.split_whitespace().nth(1) == Some("S"));
        let listener = fs::read_link(format!("/proc/{pid}/fd/4")).ok()?;
        (sleeping && listener.to_string_lossy().starts_with("socket:")).then_some(status)
    })
    .expect("the shim never reached the hand-over");
    let cap = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(cap(set), "0000000000000000", "{set} after the bind:\n{status}");
    }
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uids.split_whitespace().skip(1).all(|u| u == uid.to_string()), "{uids}");
    let fds: BTreeSet<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert_eq!(fds, BTreeSet::from([0, 1, 2, 3, 4]));

    let mut sink = ours;
    sink.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(std::io::Read::read(&mut sink, &mut buf), Ok(n) if n > 0) {}
    });
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_copy_carries_no_capability_and_is_not_trusted() {
    let Some((p, shim)) = fixture() else { return };
    // The user's own copy, in a directory of theirs: the kernel copies no capability with it.
    let dir = p.user_dir("ports-copy");
    let copy = dir.join("locald-shim");
    let out = p.as_user(Path::new("/bin/cp")).arg(shim).arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(getcap(&copy), "", "the copy carries a capability");
    assert_eq!(filecap::read(&copy).unwrap(), None);
    let out = p.caller(false).env("LOCALD_SHIM", &copy).arg("discover").output().unwrap();
    assert!(!out.status.success(), "the user's copy was trusted: {}", text(&out));
    assert!(text(&out).contains("not root"), "{}", text(&out));
    let out = raw(p, &copy, &["bind", "--port", "80"]);
    assert_eq!((field(&out, "exit"), field(&out, "fd")), ("77".into(), "no".into()), "{}", text(&out));
    assert_eq!(field(&out, "listeners"), "0", "{}", text(&out));
    let out = p.as_user(&copy).arg("--shim-version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("mode none\n"), "{}", text(&out));

    // Root-owned in a root-only directory, but without the attribute: not trusted either.
    let plain = p.scratch_dir("ports-plain").join("locald-shim");
    install(shim, &plain, 0o755);
    let out = p.caller(false).env("LOCALD_SHIM", &plain).arg("discover").output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("neither setuid nor carries exactly the file capability"), "{}", text(&out));

    // The capability install itself is trusted under the same rules: not in a writable directory.
    let open = p.scratch_dir("ports-open");
    let out = setup(p, &open.join("libexec"), true);
    assert!(out.status.success(), "{}", text(&out));
    fs::set_permissions(open.join("libexec"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = p.caller(false).env("LOCALD_SHIM", open.join("libexec/locald-shim")).arg("discover").output();
    let out = out.unwrap();
    assert!(!out.status.success() && text(&out).contains("writable by group or others"), "{}", text(&out));
}

#[test]
fn doctor_names_the_mode_and_what_it_cannot_do() {
    let Some((p, shim)) = fixture() else { return };
    let out =
        p.as_user(&p.bin("locald")).args(["doctor", "--json"]).env("LOCALD_SHIM", shim).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let finding =
        |id: &str| report["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).cloned().unwrap();
    assert_eq!(finding("shim.version")["severity"], "ok", "{report}");
    let mode = finding("shim.mode");
    assert_eq!(mode["severity"], "warn", "{report}");
    let message = mode["message"].as_str().unwrap();
    assert!(message.starts_with("capabilities (cap_net_bind_service=ep, not setuid)"), "{message}");
    assert!(message.contains("no containers, loop mounts, /etc/hosts entries"), "{message}");
    assert!(mode["hint"].as_str().unwrap().contains("sudo locald admin setup"), "{report}");
}
