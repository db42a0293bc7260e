//! Run as root on a machine with a writable cgroup v2; elsewhere they say why and pass, unless
//! `LOCALD_REQUIRE_PRIVILEGED=1` asks them to fail instead.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use locald_core::config::Service;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Error, Spec, candidates, spawn};
use crate::supervisor::cgroup::ServiceCgroup;
use crate::supervisor::process::{Route, Started, start};

/// A fresh cgroup below the test process's own; its processes are killed and it is removed
/// on drop.
struct TestCgroup {
    cgroup: ServiceCgroup,
    dir: PathBuf,
    /// As `/proc/<pid>/cgroup` names it after `0::`.
    name: String,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.cgroup.kill();
        // Killed processes leave the cgroup asynchronously; rmdir succeeds once they have.
        for _ in 0..500 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// A cgroup for `test`, or `None` (the test is skipped) with the reason printed; a panic
/// instead when `LOCALD_REQUIRE_PRIVILEGED=1`.
fn fresh_cgroup(test: &str) -> Option<TestCgroup> {
    match make_cgroup(test) {
        Ok(cgroup) => Some(cgroup),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn skip(test: &str, why: &str) {
    if std::env::var_os("LOCALD_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{test} needs a writable cgroup v2 with clone3 into it (LOCALD_REQUIRE_PRIVILEGED=1): {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn make_cgroup(test: &str) -> Result<TestCgroup, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let mount = locald_shim_protocol::mountinfo::entries(&mountinfo)
        .find(|m| m.fstype == "cgroup2")
        .ok_or("no cgroup2 mount")?
        .point;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let own =
        own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("no cgroup v2 line in /proc/self/cgroup")?;
    let name = format!("{}/locald-test-{}-{test}", own.trim_end_matches('/'), std::process::id());
    let dir = mount.join(name.trim_start_matches('/'));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cgroup = ServiceCgroup::open(dir.clone()).map_err(|e| e.to_string())?;
    Ok(TestCgroup { cgroup, dir, name })
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Reads the child's output to its end, then reaps it.
fn finish(pid: u32, stdout: OwnedFd, stderr: OwnedFd) -> Outcome {
    let (mut out, mut err) = (String::new(), String::new());
    File::from(stdout).read_to_string(&mut out).unwrap();
    File::from(stderr).read_to_string(&mut err).unwrap();
    let code = match waitpid(Pid::from_raw(pid as i32), None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the child ended with {other:?}; stderr: {err}"),
    };
    Outcome { code, stdout: out, stderr: err }
}

fn finish_started(started: Started) -> Outcome {
    finish(started.pid, started.stdout, started.stderr)
}

/// `argv` in `cgroup` with the test's own environment and cwd, straight through [`spawn`].
fn spawn_sh(script: &str, cgroup: &TestCgroup, nofile: Option<(u64, u64)>) -> Result<super::Child, Error> {
    let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let env = super::environment([(OsString::from("CG"), Some(cgroup.dir.clone().into_os_string()))]);
    let cwd = std::env::current_dir().unwrap();
    spawn(&Spec { argv: &argv, cwd: &cwd, env: &env, nofile, cgroup: cgroup.cgroup.dir_fd() })
}

/// The child of a spawn that must work here: `None` when this kernel cannot (after [`skip`]).
fn spawned(test: &str, result: Result<super::Child, Error>) -> Option<super::Child> {
    match result {
        Ok(child) => Some(child),
        Err(Error::Unsupported(e)) => {
            skip(test, &format!("clone3 into a cgroup: {e}"));
            None
        }
        Err(Error::Failed(e)) => panic!("{test}: {e}"),
    }
}

fn service(dir: &Path, toml: &str) -> Service {
    std::fs::write(dir.join("locald.toml"), toml).unwrap();
    locald_core::config::load(dir, &mut Vec::new()).unwrap().services.remove(0)
}

fn executable(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_child_and_what_it_forks_at_once_are_in_its_cgroup_and_its_pidfd_is_its_own() {
    let test = "created-in";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    let script = "grep '^0::' /proc/$$/cgroup; grep -qx $$ \"$CG/cgroup.procs\" && echo listed; \
                  sleep 30 </dev/null >/dev/null 2>&1 & grep '^0::' /proc/$!/cgroup; kill $!";
    let Some(child) = spawned(test, spawn_sh(script, &cgroup, None)) else { return };
    let pidfd = child.pidfd;
    let outcome = finish(child.pid, child.stdout, child.stderr);
    let line = format!("0::{}", cgroup.name);
    assert_eq!(outcome.stdout, format!("{line}\nlisted\n{line}\n"), "stderr: {}", outcome.stderr);
    // The pidfd from CLONE_PIDFD is this child's: readable now that it has exited.
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1, "the pidfd did not report the exit");
}

/// sh's own signal mask and ignored set, read by builtins: dash empties the mask of what it
/// forks, and blocks everything while it waits for a child, so no other process may look.
const SIGNALS: &str =
    "while read -r line; do case $line in Sig[BI]*) echo \"$line\";; esac; done </proc/$$/status";

/// What `sh` sees of itself (`{signals}`: [`SIGNALS`]), so that two ways of starting it can be compared line by line.
const PROBE: &str = r#"#!/bin/sh
printf 'args:'; printf ' [%s]' "$@"; echo
echo "argv0: $0"
echo "cwd: $(pwd)"
[ "$(ps -o pgid= -p $$ | tr -d ' ')" = "$$" ] && echo "own process group"
echo "stdin: $(readlink /proc/$$/fd/0)"
echo "stdout: $(readlink /proc/$$/fd/1 | cut -d: -f1)"
echo "fds of a child: $(ls /proc/self/fd | tr '\n' ' ')"
{signals}
echo "nofile: $(ulimit -n) $(ulimit -Hn)"
grep '^0::' /proc/$$/cgroup
echo to-stderr >&2
env | sort
"#;

#[test]
fn a_service_started_in_its_cgroup_gets_what_command_gives_it() {
    let test = "differential";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    executable(&dir.join("bin/probe"), &PROBE.replace("{signals}", SIGNALS), 0o755);
    // `probe` is only on the service's PATH, not the daemon's: found in the child's PATH.
    let service = service(
        &dir,
        &format!(
            "[services.probe]\ncommand = [\"probe\", \"one two\", \"three\"]\ncwd = \"sub\"\nport = false\n\
             env = {{ PATH = \"{}/bin:/usr/bin:/bin\", FOO = \"bar\", LOCALD_READY_FD = \"9\", LOCALD_OWNER = \"x\" }}\n",
            dir.display()
        ),
    );
    let ours = finish_started(start(&service, "owner-1", Some(&cgroup.cgroup), Route::Best).unwrap());
    if !super::available() {
        return skip(test, "clone3 into a cgroup is not available here");
    }
    let command = finish_started(start(&service, "owner-1", Some(&cgroup.cgroup), Route::Command).unwrap());
    assert_eq!((ours.code, &ours.stderr), (0, &"to-stderr\n".to_owned()));
    assert_eq!(ours.stdout, command.stdout, "clone3 and Command differ");
    assert_eq!(ours.stderr, command.stderr);
    let lines: Vec<&str> = ours.stdout.lines().collect();
    for expected in [
        "args: [one two] [three]",
        &format!("argv0: {}/bin/probe", dir.display()),
        &format!("cwd: {}/sub", dir.display()),
        "own process group",
        "stdin: /dev/null",
        "stdout: pipe",
        "SigBlk:\t0000000000000000",
        &format!("0::{}", cgroup.name),
        "FOO=bar",
        "LOCALD_OWNER=owner-1",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in:\n{}", ours.stdout);
    }
    assert!(!ours.stdout.contains("LOCALD_READY_FD"), "{}", ours.stdout);
    let ignored = lines.iter().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
    let ignored = u64::from_str_radix(ignored, 16).unwrap();
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE is still ignored: {ignored:x}");
}

#[test]
fn a_service_that_cannot_start_fails_as_it_does_with_command() {
    let test = "exec-errors";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("denied")).unwrap();
    executable(&dir.join("plain"), "#!/bin/sh\n", 0o644);
    executable(&dir.join("denied/tool"), "#!/bin/sh\n", 0o644);
    let cases: [(&str, String, ErrorKind); 5] = [
        ("missing program", "command = [\"locald-no-such-program\"]".into(), ErrorKind::NotFound),
        ("not executable", "command = [\"./plain\"]".into(), ErrorKind::PermissionDenied),
        (
            "only a non-executable on PATH",
            format!("command = [\"tool\"]\nenv = {{ PATH = \"{}/denied:/nonexistent\" }}", dir.display()),
            ErrorKind::PermissionDenied,
        ),
        ("nul in an argument", "command = [\"true\", \"a\\u0000b\"]".into(), ErrorKind::InvalidInput),
        ("cwd gone", "command = [\"true\"]\ncwd = \"gone\"".into(), ErrorKind::NotFound),
    ];
    for (case, toml, kind) in cases {
        if case == "cwd gone" {
            std::fs::create_dir_all(dir.join("gone")).unwrap();
        }
        let mut service = service(&dir, &format!("[services.s]\n{toml}\nport = false\n"));
        if case == "cwd gone" {
            std::fs::remove_dir(dir.join("gone")).unwrap();
            service.cwd = dir.join("gone");
        }
        let ours = start(&service, "o", Some(&cgroup.cgroup), Route::Best).err().expect(case);
        if !super::available() {
            return skip(test, "clone3 into a cgroup is not available here");
        }
        let command = start(&service, "o", Some(&cgroup.cgroup), Route::Command).err().expect(case);
        assert_eq!(ours.kind(), kind, "{case}: {ours}");
        assert_eq!(
            (ours.kind(), ours.raw_os_error(), ours.to_string()),
            (command.kind(), command.raw_os_error(), command.to_string()),
            "{case}"
        );
    }
}

#[test]
fn a_script_without_a_shebang_runs_with_sh_as_execvp_runs_it() {
    let test = "no-shebang";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    executable(&dir.path().join("job"), "echo \"ran by sh with $1\"\n", 0o755);
    let service = service(dir.path(), "[services.s]\ncommand = [\"./job\", \"x\"]\nport = false\n");
    let ours = finish_started(start(&service, "o", Some(&cgroup.cgroup), Route::Best).unwrap());
    let command = finish_started(start(&service, "o", Some(&cgroup.cgroup), Route::Command).unwrap());
    assert_eq!(ours.stdout, "ran by sh with x\n");
    assert_eq!(ours.stdout, command.stdout);
}

#[test]
fn the_descriptor_limit_is_given_back_when_asked() {
    let test = "nofile";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let script = "echo $(ulimit -n) $(ulimit -Hn)";
    let Some(child) = spawned(test, spawn_sh(script, &cgroup, Some((200, hard)))) else { return };
    let outcome = finish(child.pid, child.stdout, child.stderr);
    assert_eq!(outcome.stdout, format!("200 {hard}\n"));
}

/// A signal blocked on the spawning thread is not blocked in the service (std's `Command`
/// would now pass the mask on), and the thread gets its own mask back after the spawn.
#[test]
fn the_child_starts_with_no_signal_blocked_and_the_thread_keeps_its_mask() {
    let test = "sigmask";
    let Some(cgroup) = fresh_cgroup(test) else { return };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut usr1 = nix::sys::signal::SigSet::empty();
                usr1.add(nix::sys::signal::Signal::SIGUSR1);
                usr1.thread_block().unwrap();
                let script = SIGNALS;
                let Some(child) = spawned(test, spawn_sh(script, &cgroup, None)) else { return };
                let outcome = finish(child.pid, child.stdout, child.stderr);
                let blocked = outcome.stdout.lines().find_map(|l| l.strip_prefix("SigBlk:\t"));
                assert_eq!(blocked, Some("0000000000000000"), "{}", outcome.stdout);
                let now = nix::sys::signal::SigSet::thread_get_mask().unwrap();
                assert!(now.contains(nix::sys::signal::Signal::SIGUSR1));
                assert!(!now.contains(nix::sys::signal::Signal::SIGTERM), "the spawn left signals blocked");
            })
            .join()
            .unwrap();
    });
}

#[test]
fn the_program_is_looked_up_as_execvp_looks_it_up() {
    let names = |program: &str, path: Option<&str>| -> Vec<String> {
        candidates(program.as_bytes(), path.map(str::as_bytes))
            .unwrap()
            .into_iter()
            .map(|c| c.into_string().unwrap())
            .collect()
    };
    assert_eq!(names("sh", Some("/a::rel")), ["/a/sh", "sh", "rel/sh"], "an empty entry is the cwd");
    assert_eq!(names("./bin/x", Some("/a")), ["./bin/x"], "a name with a slash is not searched");
    assert_eq!(names("sh", None), ["/bin/sh", "/usr/bin/sh"], "glibc's default PATH");
    assert!(names("", Some("/a")).is_empty(), "an empty name is ENOENT, as execvp has it");
}
