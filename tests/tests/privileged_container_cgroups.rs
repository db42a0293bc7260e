//! Finding 4 of issue 17: a container's cgroups lie below its caller's, so limits the caller is
//! under (an admin's `pids.max`, systemd's `TasksMax` on the user's slice) hold inside it too.
//! Before, the shim put every container at `/locald/<uid>/<id>` at the root of each hierarchy.

use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locald_image::bundle::{self, ContainerConfig, Volume};
use locald_shim_protocol::cgroup_placement;
use locald_tests::{Privileged, bundle_run, privileged, spawn_piped, text, wait_for};

const SLEEPERS: usize = 50;
const CALLER_PIDS_MAX: usize = 10;
/// The container says it is ready and blocks on a FIFO until the test has looked, with builtins
/// only (no fork, no polling).
const WAIT_FOR_GO: &str = ": > /data/ready; read x < /data/go";

/// A volume directory for the container with the FIFO of [`WAIT_FOR_GO`].
fn data_dir(p: &Privileged, name: &str) -> PathBuf {
    let data = p.user_dir(name);
    nix::unistd::mkfifo(&data.join("go"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    chown(data.join("go"), Some(p.user.uid), Some(p.user.gid)).unwrap();
    data
}

fn go(data: &Path) {
    // Opening blocks until the container opens its end; it is waiting for this.
    fs::write(data.join("go"), "\n").unwrap();
}

fn busybox_bundle(p: &Privileged, name: &str, config: &ContainerConfig) -> PathBuf {
    let dir = p.user_dir(name);
    locald_tests::busybox_rootfs(
        &dir.join("rootfs"),
        &["sh", "sleep"],
        &["proc", "dev", "sys", "tmp", "etc", "data"],
    );
    bundle::write(&dir, config).unwrap();
    locald_tests::chown_tree(&dir, p.user.uid, p.user.gid);
    dir
}

/// A pids cgroup made by root (v1 where pids is a v1 controller, as on hybrid hosts; else v2),
/// with `pids.max` set: the caller cannot raise it or leave it.
struct CallerCgroup(PathBuf);

impl CallerCgroup {
    fn new(name: &str, max: usize) -> Self {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let dir = if v1.join("cgroup.procs").exists() {
            v1.join(name)
        } else {
            let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
            Path::new("/sys/fs/cgroup").join(name)
        };
        if dir.exists() {
            let _ = fs::remove_dir(&dir);
        }
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("pids.max"), max.to_string()).unwrap();
        Self(dir)
    }
}

impl Drop for CallerCgroup {
    fn drop(&mut self) {
        // The shim removes a container's own cgroup; locald/<uid> stays, as at the root before.
        for dir in fs::read_dir(self.0.join("locald")).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(dir.path());
        }
        let _ = fs::remove_dir(self.0.join("locald"));
        for _ in 0..200 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Where a container of this test process's children lands in each hierarchy of the pids cgroup's
/// mount: the test's own cgroups are the shim's starting point, like a daemon's.
fn own_container_dirs(uid: u32, id: &str) -> Vec<PathBuf> {
    let memberships =
        cgroup_placement::parse_memberships(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
    let mounts =
        cgroup_placement::parse_cgroup_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap()).unwrap();
    cgroup_placement::hierarchies(&memberships, &mounts)
        .unwrap()
        .iter()
        .map(|h| cgroup_placement::container_dir(&h.caller, uid, id).unwrap())
        .collect()
}

#[test]
fn a_container_cannot_fork_beyond_its_callers_pids_limit() {
    let Some(p) = privileged() else { return };
    let id = "pidcap";
    let caller_cg = CallerCgroup::new(&format!("locald-test-caller-{}", std::process::id()), CALLER_PIDS_MAX);
    let data = data_dir(p, "cg-pidcap-data");
    // The loop counts the sleepers it forked; a failed fork ends the loop's subshell. Only
    // builtins after that: every pid may be taken.
    let script = format!(
        "( i=0; while [ $i -lt {SLEEPERS} ]; do sleep 60 & i=$((i + 1)); echo $i > /data/count; done ) 2>/dev/null; \
         {WAIT_FOR_GO}; read n < /data/count; echo started=$n"
    );
    let config = ContainerConfig {
        id: id.into(),
        uid: p.user.uid,
        gid: p.user.gid,
        args: vec!["/bin/sh".into(), "-c".into(), script],
        volumes: vec![Volume { host: data.clone(), container: "/data".into(), read_only: false }],
        ..Default::default()
    };
    let bundle = busybox_bundle(p, "cg-pidcap", &config);
    let mut child = spawn_piped(bundle_run(
        p.caller(false).arg("--join-cgroup").arg(&caller_cg.0).arg("exec"),
        &bundle,
        id,
    ));

    let ready = wait_for(Duration::from_secs(30), || data.join("ready").exists().then_some(()));
    // While it runs: the container's pids cgroup is below the caller's, not at the root.
    let nested = caller_cg.0.join(format!("locald/{}/{id}", p.user.uid));
    let nested_procs = fs::read_to_string(nested.join("cgroup.procs")).unwrap_or_default();
    let at_root = caller_cg.0.parent().unwrap().join(format!("locald/{}/{id}", p.user.uid));
    let root_procs = fs::read_to_string(at_root.join("cgroup.procs")).unwrap_or_default();
    let caller_current = fs::read_to_string(caller_cg.0.join("pids.current")).unwrap_or_default();
    if ready.is_some() {
        go(&data);
    } else {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(ready.is_some(), "the container never got ready: {}", text(&out));

    let started: usize = fs::read_to_string(data.join("count")).unwrap().trim().parse().unwrap();
    assert!(
        started < CALLER_PIDS_MAX,
        "{started}/{SLEEPERS} sleepers forked under a caller limited to pids.max={CALLER_PIDS_MAX}: {}",
        text(&out)
    );
    assert!(!nested_procs.trim().is_empty(), "no task in {}: {}", nested.display(), text(&out));
    assert!(root_procs.trim().is_empty(), "tasks at the hierarchy's root cgroup {}", at_root.display());
    let current: usize = caller_current.trim().parse().unwrap_or(usize::MAX);
    assert!(current <= CALLER_PIDS_MAX, "the caller's cgroup holds {current} tasks");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("started={started}")), "{}", text(&out));
    // Removed after exit, at the nested path.
    assert!(!nested.exists(), "{} left behind", nested.display());
}

/// The stale sweep follows the new path: a frozen cgroup left at the nested path is thawed and
/// removed, and one at the old root path (another user's or another tool's) is not touched.
#[test]
fn the_stale_sweep_works_below_the_callers_cgroup_only() {
    let Some(p) = privileged() else { return };
    let id = "sweep";
    let freezer = Path::new("/sys/fs/cgroup/freezer");
    assert!(freezer.is_dir(), "this test needs the v1 freezer (a hybrid host)");
    let caller_cg = freezer.join(format!("locald-test-sweep-{}", std::process::id()));
    let _ = fs::remove_dir_all(&caller_cg);
    fs::create_dir(&caller_cg).unwrap();
    let nested = caller_cg.join(format!("locald/{}/{id}", p.user.uid));
    fs::create_dir_all(&nested).unwrap();
    fs::write(nested.join("freezer.state"), "FROZEN").unwrap();
    // A cgroup outside the caller's, at the root path the old layout used: a victim's.
    let outside = freezer.join(format!("locald/{}/{id}", p.user.uid));
    fs::create_dir_all(&outside).unwrap();
    let mut victim = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    fs::write(outside.join("cgroup.procs"), victim.id().to_string()).unwrap();

    let config = ContainerConfig {
        id: id.into(),
        uid: p.user.uid,
        gid: p.user.gid,
        args: vec!["/bin/sh".into(), "-c".into(), "echo thawed".into()],
        ..Default::default()
    };
    let bundle = busybox_bundle(p, "cg-sweep", &config);
    let mut child = spawn_piped(bundle_run(
        p.caller(false).arg("--join-cgroup").arg(&caller_cg).arg("exec"),
        &bundle,
        id,
    ));
    let finished = wait_for(Duration::from_secs(30), || child.try_wait().unwrap());
    if finished.is_none() {
        let _ = fs::write(nested.join("freezer.state"), "THAWED");
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let victim_alive = victim.try_wait().unwrap().is_none();
    let victim_still_there = fs::read_to_string(outside.join("cgroup.procs")).unwrap_or_default();
    let _ = victim.kill();
    let _ = victim.wait();
    for _ in 0..200 {
        if fs::remove_dir(&outside).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = fs::remove_dir(outside.parent().unwrap());
    let _ = fs::remove_dir(caller_cg.join(format!("locald/{}", p.user.uid)));
    let _ = fs::remove_dir(caller_cg.join("locald"));
    let _ = fs::remove_dir(&caller_cg);
    assert!(finished.is_some(), "bundle run hung in the frozen nested cgroup");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "thawed");
    assert!(victim_alive, "the sweep killed a process outside the caller's cgroup");
    assert!(victim_still_there.contains(&victim.id().to_string()), "the cgroup outside was emptied");
}

/// A container started by this (unconfined) test process lands in the test's own cgroups,
/// however they differ between hierarchies (on this hybrid host memory is often elsewhere).
#[test]
fn each_hierarchy_nests_below_the_callers_cgroup_in_that_hierarchy() {
    let Some(p) = privileged() else { return };
    let id = "perhier";
    let data = data_dir(p, "cg-perhier-data");
    let config = ContainerConfig {
        id: id.into(),
        uid: p.user.uid,
        gid: p.user.gid,
        args: vec!["/bin/sh".into(), "-c".into(), WAIT_FOR_GO.into()],
        volumes: vec![Volume { host: data.clone(), container: "/data".into(), read_only: false }],
        ..Default::default()
    };
    let bundle = busybox_bundle(p, "cg-perhier", &config);
    let mut child = spawn_piped(bundle_run(&mut p.as_user(&p.shim()), &bundle, id));
    let ready = wait_for(Duration::from_secs(30), || data.join("ready").exists().then_some(()));
    let expected = own_container_dirs(p.user.uid, id);
    // libcontainer's v1 manager handles the controller hierarchies (not name=systemd or the
    // empty v2 of a hybrid host): each of those must hold the container's task.
    let populated: Vec<_> = expected
        .iter()
        .filter(|d| fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()))
        .cloned()
        .collect();
    if ready.is_some() {
        go(&data);
    } else {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(ready.is_some(), "the container never got ready: {}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    for controller in ["pids", "memory", "freezer", "devices"] {
        let mount = Path::new("/sys/fs/cgroup").join(controller);
        if !mount.join("cgroup.procs").exists() {
            continue;
        }
        assert!(
            populated.iter().any(|d| d.starts_with(&mount)),
            "no task below the caller's {controller} cgroup; expected one of {expected:?}"
        );
    }
    assert!(expected.iter().all(|d| !d.exists()), "cgroups left behind: {expected:?}");
}
