//! `admin sync-hosts` attacked. Every call runs in a private mount namespace where a scratch
//! directory is bind-mounted over /etc, so the host's real /etc/hosts is never touched (and a
//! test asserts that too).

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use locald_tests::{Privileged, User, privileged, text};

const BASE: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n# a comment the admin wrote\n";

fn scratch_etc(p: &Privileged, name: &str) -> PathBuf {
    let etc = p.scratch_dir(name);
    fs::write(etc.join("hosts"), BASE).unwrap();
    fs::set_permissions(etc.join("hosts"), fs::Permissions::from_mode(0o644)).unwrap();
    etc
}

/// The shim's `sync-hosts` as `user`, with `etc` in place of /etc.
fn spawn_sync(p: &Privileged, user: &User, etc: &Path, domains: &[&str]) -> Child {
    spawn_sync_limited(p, user, etc, domains, None)
}

/// The same with the caller's `RLIMIT_FSIZE` (soft and hard) set to `fsize` bytes, as
/// `prlimit --fsize=N` would.
fn spawn_sync_limited(
    p: &Privileged,
    user: &User,
    etc: &Path,
    domains: &[&str],
    fsize: Option<u64>,
) -> Child {
    let source = CString::new(etc.as_os_str().as_encoded_bytes()).unwrap();
    let (uid, gid) = (user.uid, user.gid);
    let mut command = Command::new(p.shim());
    command.args(["admin", "sync-hosts", "--"]).args(domains).env_clear();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe syscalls between fork and exec; the CStrings were built
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            let check =
                |ret: libc::c_int| if ret == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                c"/etc".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            if let Some(bytes) = fsize {
                let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                check(libc::setrlimit(libc::RLIMIT_FSIZE, &limit))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    command.spawn().expect("spawn shim")
}

fn sync(p: &Privileged, user: &User, etc: &Path, domains: &[&str]) -> Output {
    spawn_sync(p, user, etc, domains).wait_with_output().unwrap()
}

fn hosts(etc: &Path) -> String {
    fs::read_to_string(etc.join("hosts")).unwrap()
}

/// The lines between the user's markers, or None without a block.
fn block(content: &str, uid: u32) -> Option<Vec<String>> {
    let begin = format!("# BEGIN locald uid={uid}");
    let end = format!("# END locald uid={uid}");
    assert!(content.matches(&begin).count() <= 1, "duplicate block:\n{content}");
    let start = content.lines().position(|l| l == begin)?;
    let stop = content.lines().position(|l| l == end).expect("block without END");
    Some(content.lines().skip(start + 1).take(stop - start - 1).map(str::to_owned).collect())
}

struct RealHosts(Vec<u8>);

impl RealHosts {
    fn snapshot() -> Self {
        Self(fs::read("/etc/hosts").unwrap_or_default())
    }
    fn assert_untouched(&self) {
        assert_eq!(fs::read("/etc/hosts").unwrap_or_default(), self.0, "the host's /etc/hosts changed");
    }
}

#[test]
fn names_are_written_as_a_block_for_both_loopbacks() {
    let Some(p) = privileged() else { return };
    let real = RealHosts::snapshot();
    let etc = scratch_etc(p, "hosts-basic");
    let out = sync(p, &p.user, &etc, &["web.shop.localhost", "api.shop.localhost"]);
    assert!(out.status.success(), "{}", text(&out));
    let content = hosts(&etc);
    assert!(content.starts_with(BASE), "{content}");
    assert_eq!(
        block(&content, p.user.uid).unwrap(),
        [
            "127.0.0.1\tapi.shop.localhost",
            "::1\tapi.shop.localhost",
            "127.0.0.1\tweb.shop.localhost",
            "::1\tweb.shop.localhost"
        ]
    );
    real.assert_untouched();
}

#[test]
fn injection_and_malformed_names_are_refused_and_change_nothing() {
    let Some(p) = privileged() else { return };
    let real = RealHosts::snapshot();
    let etc = scratch_etc(p, "hosts-injection");
    let long = format!("{}.localhost", "a".repeat(250));
    for bad in [
        "a.localhost\n6.6.6.6 bank.com",
        "a.localhost 6.6.6.6",
        "a.localhost\t6.6.6.6",
        "127.0.0.1",
        "::1",
        "bank.com",
        "WEB.localhost",
        long.as_str(),
        "-x.localhost",
    ] {
        let out = sync(p, &p.user, &etc, &["ok.localhost", bad]);
        assert_eq!(out.status.code(), Some(77), "{bad:?}: {}", text(&out));
        assert_eq!(hosts(&etc), BASE, "{bad:?} changed the file");
    }
    real.assert_untouched();
}

#[test]
fn another_users_block_is_kept_and_an_empty_list_removes_only_ours() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-two-users");
    assert!(sync(p, &p.other_user, &etc, &["theirs.localhost"]).status.success());
    let after_other = hosts(&etc);
    assert!(sync(p, &p.user, &etc, &["mine.localhost"]).status.success());
    let both = hosts(&etc);
    assert!(both.starts_with(&after_other), "the other block moved or changed:\n{both}");
    assert!(block(&both, p.user.uid).is_some());

    // The user cannot remove or rewrite the other user's block by any argument.
    assert!(sync(p, &p.user, &etc, &[]).status.success());
    assert_eq!(hosts(&etc), after_other);
    assert_eq!(
        block(&after_other, p.other_user.uid).unwrap(),
        ["127.0.0.1\ttheirs.localhost", "::1\ttheirs.localhost"]
    );
}

#[test]
fn twenty_concurrent_calls_leave_one_well_formed_file() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-concurrent");
    let names: Vec<String> = (0..20).map(|i| format!("n{i}.localhost")).collect();
    // Half the calls are another user's: without serialisation one user's update would be lost.
    let children: Vec<Child> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let user = if i % 2 == 0 { &p.user } else { &p.other_user };
            spawn_sync(p, user, &etc, &[n.as_str(), "common.localhost"])
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let content = hosts(&etc);
    assert!(content.starts_with(BASE), "{content}");
    assert!(block(&content, p.other_user.uid).is_some(), "the other user's update was lost:\n{content}");
    let lines = block(&content, p.user.uid).expect("one block");
    let winner = names.iter().find(|n| lines.contains(&format!("127.0.0.1\t{n}"))).expect("one call's names");
    let mut expected = vec![format!("127.0.0.1\t{winner}"), format!("::1\t{winner}")];
    expected.extend(["127.0.0.1\tcommon.localhost".to_owned(), "::1\tcommon.localhost".to_owned()]);
    expected.sort();
    let mut got = lines.clone();
    got.sort();
    assert_eq!(got, expected, "a torn or merged block:\n{content}");
    let leftovers: Vec<_> = fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "hosts" && n != LOCK_FILE)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn mode_and_owner_are_kept() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-mode");
    chown(etc.join("hosts"), Some(0), Some(p.other_user.gid)).unwrap();
    fs::set_permissions(etc.join("hosts"), fs::Permissions::from_mode(0o640)).unwrap();
    assert!(sync(p, &p.user, &etc, &["a.localhost"]).status.success());
    let meta = fs::metadata(etc.join("hosts")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, p.other_user.gid, 0o640));
}

#[test]
fn a_symlinked_hosts_file_is_left_to_the_system_that_manages_it() {
    let Some(p) = privileged() else { return };
    let etc = p.scratch_dir("hosts-symlink");
    let managed = p.scratch_dir("hosts-symlink-store").join("hosts");
    fs::write(&managed, BASE).unwrap();
    symlink(&managed, etc.join("hosts")).unwrap();
    let out = sync(p, &p.user, &etc, &["a.localhost"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("NixOS"), "{}", text(&out));
    assert_eq!(fs::read_to_string(&managed).unwrap(), BASE);
    assert!(fs::symlink_metadata(etc.join("hosts")).unwrap().file_type().is_symlink());
    // Nothing to write is not an error there (the daemon's sync after every up/down on NixOS),
    // and still touches nothing.
    let out = sync(p, &p.user, &etc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(&managed).unwrap(), BASE);
    assert!(fs::symlink_metadata(etc.join("hosts")).unwrap().file_type().is_symlink());
}

/// The shim queued on the lock (a `->` waiter line in /proc/locks for its pid).
fn waits_on_a_lock(pid: u32) -> bool {
    let found = locald_tests::wait_for(std::time::Duration::from_secs(20), || {
        let locks = fs::read_to_string("/proc/locks").ok()?;
        locks
            .lines()
            .any(|l| {
                l.contains("->") && l.contains("FLOCK") && l.split_whitespace().any(|f| f == pid.to_string())
            })
            .then_some(())
    });
    found.is_some()
}

#[test]
fn writers_wait_for_the_exclusive_lock() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-lock");
    // Another shim's lock: root's file, which the shim creates on first use.
    assert!(sync(p, &p.user, &etc, &[]).status.success());
    let lock = fs::File::open(etc.join(LOCK_FILE)).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let child = spawn_sync(p, &p.user, &etc, &["locked.localhost"]);
    assert!(waits_on_a_lock(child.id()), "the shim did not wait for the lock");
    // Nothing written meanwhile.
    assert_eq!(hosts(&etc), BASE);
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(hosts(&etc).contains("locked.localhost"));
}

/// Protocol 3 locked /etc itself, which every user can open: one `flock /etc sleep inf` parked
/// every other user's sync-hosts for good. The lock is now a root-only file no user can open.
#[test]
fn a_user_holding_a_lock_on_etc_blocks_nobody() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-lock-dos");
    // The attacker: the other user opens /etc (anyone may) and holds an exclusive flock on it.
    let mut attacker = p
        .as_user(Path::new("/usr/bin/flock"))
        .args(["--exclusive"])
        .arg(&etc)
        .args(["-c", "echo held; exec sleep 600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(attacker.stdout.as_mut().unwrap()), &mut line)
        .unwrap();
    assert_eq!(line.trim(), "held", "the attacker got its lock on /etc");
    let mut child = spawn_sync(p, &p.other_user, &etc, &["victim.localhost"]);
    let finished = locald_tests::wait_for(std::time::Duration::from_secs(20), || child.try_wait().unwrap());
    let _ = attacker.kill();
    let _ = attacker.wait();
    let Some(status) = finished else {
        let _ = child.kill();
        panic!("sync-hosts waited on the user's lock of /etc");
    };
    assert!(status.success(), "sync-hosts failed while a user held /etc");
    assert!(hosts(&etc).contains("victim.localhost"));
    // And the lock the shim takes cannot be opened by a user, so it cannot be held by one.
    let lock = etc.join(LOCK_FILE);
    let meta = fs::metadata(&lock).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "the lock file is root's and private");
    let open =
        p.as_user(Path::new("/bin/sh")).arg("-c").arg(format!("exec 3<{}", lock.display())).output().unwrap();
    assert!(!open.status.success(), "a user could open the lock file: {}", text(&open));
}

/// Finding 2 of issue 17: `internal` and `home.arpa` are reserved, but name real hosts on cloud
/// and home networks (the GCE metadata server, `*.ec2.internal`, routers); pointing them at
/// 127.0.0.1 would hand another user's requests to whoever listens there.
#[test]
fn private_network_names_are_refused_and_change_nothing() {
    let Some(p) = privileged() else { return };
    let real = RealHosts::snapshot();
    let etc = scratch_etc(p, "hosts-private-networks");
    let out = sync(p, &p.user, &etc, &["metadata.google.internal", "db.corp.internal", "nas.home.arpa"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("metadata.google.internal"), "the refusal names the host: {}", text(&out));
    for name in ["metadata.google.internal", "x.ec2.internal", "internal", "nas.home.arpa", "home.arpa"] {
        let out = sync(p, &p.user, &etc, &["ok.localhost", name]);
        assert_eq!(out.status.code(), Some(77), "{name}: {}", text(&out));
    }
    assert_eq!(hosts(&etc), BASE, "a private-network name reached the file");
    real.assert_untouched();
}

/// The root-only lock file every run shares; it stays by design and holds no data.
const LOCK_FILE: &str = ".hosts.locald.lock";

/// `/etc/.hosts.locald*` but the lock: what a sync-hosts run may leave in /etc.
fn temp_files(etc: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(etc)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".hosts.locald") && n != LOCK_FILE)
        .collect();
    names.sort();
    names
}

/// Whether root here may raise a hard rlimit (CAP_SYS_RESOURCE, bit 24, in the bounding set; container
/// runtimes often leave it out).
fn can_raise_hard_limits() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd");
    u64::from_str_radix(bounding.trim(), 16).unwrap() & (1 << 24) != 0
}

/// Finding 5: a caller's `RLIMIT_FSIZE` made the root write of the temp file die of SIGXFSZ
/// halfway, leaving `/etc/.hosts.locald-<pid>` behind, one per run. The shim lifts the limit
/// (succeeds) or, without CAP_SYS_RESOURCE, gets EFBIG and removes its file (fails cleanly).
#[test]
fn a_tiny_file_size_limit_neither_breaks_the_write_nor_leaves_a_temp_file() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-fsize");
    let lifted = can_raise_hard_limits();
    for round in 0..3 {
        let name = format!("r{round}.localhost");
        let out =
            spawn_sync_limited(p, &p.user, &etc, &[name.as_str()], Some(100)).wait_with_output().unwrap();
        if lifted {
            assert!(out.status.success(), "round {round}: {:?} {}", out.status, text(&out));
            let lines = block(&hosts(&etc), p.user.uid).unwrap();
            assert_eq!(lines, [format!("127.0.0.1\t{name}"), format!("::1\t{name}")]);
            assert!(hosts(&etc).starts_with(BASE));
        } else {
            assert_eq!(
                out.status.code(),
                Some(71),
                "round {round}: not a clean failure: {:?} {}",
                out.status,
                text(&out)
            );
            assert!(text(&out).contains("replace /etc/hosts"), "{}", text(&out));
            assert_eq!(hosts(&etc), BASE, "round {round}");
        }
        assert_eq!(temp_files(&etc), Vec::<String>::new(), "round {round} left a temp file");
    }
}

/// Waits on inotify for the creation of a `.hosts.locald*` temp file (not the lock) in a directory.
struct CreateWatch(std::os::fd::OwnedFd);

impl CreateWatch {
    fn new(dir: &Path) -> Self {
        use std::os::fd::FromRawFd;
        let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain syscalls on a fresh fd that is owned right away; `path` outlives the call.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let watch =
                libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), libc::IN_CREATE);
            assert!(watch >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
            Self(fd)
        }
    }

    /// Blocks until a temp file appears (the shim holds the lock and is about to write it).
    fn wait_for_temp(&self) {
        let mut buffer = [0u8; 4096];
        loop {
            let n = nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.0), &mut buffer)
                .expect("read inotify");
            let mut at = 0;
            while at + 16 <= n {
                // struct inotify_event: wd, mask, cookie (3 × 4 bytes), len (4 bytes), name[len].
                let len = u32::from_ne_bytes(buffer[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buffer[at + 16..at + 16 + len];
                if name.starts_with(b".hosts.locald") && !name.starts_with(LOCK_FILE.as_bytes()) {
                    return;
                }
                at += 16 + len;
            }
        }
    }
}

/// Finding 5: the caller may SIGKILL the shim (same real uid). Killed between creating the temp
/// file and renaming it over /etc/hosts, the old shim left one `.hosts.locald-<pid>` per run; now
/// there is one fixed name, replaced by the next run, and the old per-pid leftovers go too.
#[test]
fn a_shim_killed_mid_write_leaves_at_most_the_one_fixed_temp_file() {
    let Some(p) = privileged() else { return };
    let etc = scratch_etc(p, "hosts-killed");
    // A big file, so each write spends long enough between create and rename to be killed there.
    let big = format!(
        "{BASE}{}",
        "# padding padding padding padding padding padding padding pad\n".repeat(200_000)
    );
    fs::write(etc.join("hosts"), &big).unwrap();
    fs::write(etc.join(".hosts.locald-4242"), "what an older shim left\n").unwrap();
    let watch = CreateWatch::new(&etc);
    for round in 0..8 {
        let name = format!("k{round}.localhost");
        let mut child = spawn_sync(p, &p.user, &etc, &[name.as_str()]);
        watch.wait_for_temp();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        let left = temp_files(&etc);
        assert!(left.is_empty() || left == [".hosts.locald.tmp"], "round {round} left {left:?}");
        let content = hosts(&etc);
        assert!(content.starts_with(&big), "round {round} tore /etc/hosts");
    }
    let out = sync(p, &p.user, &etc, &["done.localhost"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        block(&hosts(&etc), p.user.uid).unwrap(),
        ["127.0.0.1\tdone.localhost", "::1\tdone.localhost"]
    );
    assert_eq!(temp_files(&etc), Vec::<String>::new(), "a completed run leaves no temp file");
}
