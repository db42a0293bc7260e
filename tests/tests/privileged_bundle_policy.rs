//! `bundle run` attacked through the bundle itself (issue 17): a bundle that leaves the
//! container its user namespace's capabilities, a bind mount of what a group denies the caller,
//! idmapped-mount fields, and shims killed mid-run to pile up root-owned copies under `/run`.
//! Each attack runs as a throwaway user against the installed setuid shim; each test checks the
//! refusal and that the effect is absent.
//!
//! These tests use their own user, `locald-policy`, so that the sweep of stale copies they check
//! sees only their own containers (other suites run containers as `locald-test` meanwhile).

use std::fs;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use locald_image::bundle::{self, ContainerConfig, Volume};
use locald_tests::{Privileged, privileged, text};

const USER: &str = "locald-policy";

/// An edit of a generated `config.json` (or of one of its mounts), for a named case.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;
const DENIED_GROUP: &str = "locald-denied";

struct Caller {
    uid: u32,
    gid: u32,
    /// Supplementary groups the shim is started with, as a login session would have them.
    groups: Vec<u32>,
}

fn id_of(database: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").args([database, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split(':').nth(2)?.trim().parse().ok()
}

/// The user, a member of `locald-denied` (created here once).
fn caller() -> Caller {
    if id_of("group", DENIED_GROUP).is_none() {
        let status = Command::new("groupadd").args(["--system", DENIED_GROUP]).status().expect("groupadd");
        // 9 = the group appeared meanwhile (another test created it).
        assert!(status.success() || status.code() == Some(9), "groupadd: {status}");
    }
    let denied = id_of("group", DENIED_GROUP).expect("locald-denied after groupadd");
    if id_of("passwd", USER).is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"])
            .args(["--groups", DENIED_GROUP, USER])
            .status()
            .expect("useradd");
        assert!(status.success() || status.code() == Some(9), "useradd {USER}: {status}");
    }
    let status = Command::new("usermod").args(["--append", "--groups", DENIED_GROUP, USER]).status().unwrap();
    assert!(status.success(), "usermod: {status}");
    let uid = id_of("passwd", USER).expect("user after useradd");
    let gid = id_of("group", USER).expect("the user's group");
    Caller { uid, gid, groups: vec![gid, denied] }
}

/// `program` as the caller, with their supplementary groups (std's `uid()` would clear them).
fn as_caller(c: &Caller, program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", "/usr/bin:/bin");
    let (uid, gid, groups) = (c.uid, c.gid, c.groups.clone());
    // SAFETY: only setgroups/setgid/setuid between fork and exec, all async-signal-safe; the
    // group list was allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn owned_dir(p: &Privileged, c: &Caller, name: &str) -> PathBuf {
    let dir = p.scratch_dir(name);
    chown(&dir, Some(c.uid), Some(c.gid)).unwrap();
    dir
}

fn config(c: &Caller, id: &str, script: &str, volumes: Vec<Volume>) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        uid: c.uid,
        gid: c.gid,
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        volumes,
        ..Default::default()
    }
}

/// A caller-owned bundle with a busybox rootfs and `spec` (the daemon's, then `edit`ed).
fn bundle_dir(
    p: &Privileged,
    c: &Caller,
    name: &str,
    config: &ContainerConfig,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dir = owned_dir(p, c, name);
    locald_tests::busybox_rootfs(
        &dir.join("rootfs"),
        &["sh", "cat", "echo", "touch", "mount", "sleep", "grep", "id"],
        &["proc", "dev", "sys", "tmp", "etc", "data", "mnt"],
    );
    let mut json = serde_json::to_value(bundle::spec(config).unwrap()).unwrap();
    edit(&mut json);
    fs::write(dir.join("config.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    locald_tests::chown_tree(&dir, c.uid, c.gid);
    dir
}

fn run(p: &Privileged, c: &Caller, bundle: &Path, id: &str) -> Output {
    locald_tests::bundle_run(&mut as_caller(c, &p.shim()), bundle, id).output().unwrap()
}

/// A volume the container writes its marker into: present afterwards only if the command ran.
fn marker_volume(p: &Privileged, c: &Caller, name: &str) -> (PathBuf, Volume) {
    let data = owned_dir(p, c, name);
    let volume = Volume { host: data.clone(), container: "/data".into(), read_only: false };
    (data.join("ran"), volume)
}

// --- Finding 1: capabilities ---------------------------------------------------------------

#[test]
fn a_bundle_that_leaves_capabilities_to_libcontainer_is_refused_and_never_runs() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let edits: [(&str, &str, Edit); 4] = [
        (
            "caps-none",
            "process.capabilities is missing",
            Box::new(|j: &mut serde_json::Value| {
                j["process"].as_object_mut().unwrap().remove("capabilities");
            }),
        ),
        (
            "caps-nobound",
            "process.capabilities.bounding is missing",
            Box::new(|j: &mut serde_json::Value| {
                j["process"]["capabilities"].as_object_mut().unwrap().remove("bounding");
            }),
        ),
        (
            "caps-noamb",
            "process.capabilities.ambient is missing",
            Box::new(|j: &mut serde_json::Value| {
                j["process"]["capabilities"].as_object_mut().unwrap().remove("ambient");
            }),
        ),
        (
            "caps-noproc",
            "no process section",
            Box::new(|j: &mut serde_json::Value| {
                j.as_object_mut().unwrap().remove("process");
            }),
        ),
    ];
    for (id, why, edit) in edits {
        let (marker, volume) = marker_volume(p, &c, &format!("{id}-data"));
        // With every capability of its namespace, both would succeed (the CapEff 1ff..).
        let script = "mount -t tmpfs none /mnt && touch /data/ran; touch /data/ran";
        let bundle = bundle_dir(p, &c, id, &config(&c, id, script, vec![volume]), |j| edit(j));
        let out = run(p, &c, &bundle, id);
        assert_eq!(out.status.code(), Some(77), "{id}: {}", text(&out));
        assert!(text(&out).contains(why), "{id}: {}", text(&out));
        assert!(!marker.exists(), "{id}: the container's command ran");
    }
}

/// The daemon's own bundle still runs, with exactly its three capabilities and no mount.
#[test]
fn a_generated_bundle_runs_with_only_its_capabilities() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let (marker, volume) = marker_volume(p, &c, "caps-gen-data");
    let script = "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; mount -t tmpfs none /mnt && echo mounted; \
                  touch /data/ran";
    let bundle = bundle_dir(p, &c, "caps-gen", &config(&c, "capsgen", script, vec![volume]), |_| {});
    let out = run(p, &c, &bundle, "capsgen");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // AUDIT_WRITE (29), KILL (5), NET_BIND_SERVICE (10).
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(stdout.contains(&format!("{set}:\t0000000020000420")), "{set}: {}", text(&out));
    }
    assert!(!stdout.contains("mounted"), "mounted a tmpfs without CAP_SYS_ADMIN: {}", text(&out));
    assert!(marker.exists(), "the container ran");
}

// --- Finding 7: supplementary groups -------------------------------------------------------

/// A root-owned directory holding `secret` (root:locald-denied, `file_mode`) and `public`.
fn denied_files(p: &Privileged, name: &str, dir_mode: u32, file_mode: u32) -> PathBuf {
    let denied = id_of("group", DENIED_GROUP).unwrap();
    let host = p.scratch_dir(name);
    fs::write(host.join("secret"), "DENIED-SECRET").unwrap();
    chown(host.join("secret"), Some(0), Some(denied)).unwrap();
    fs::set_permissions(host.join("secret"), fs::Permissions::from_mode(file_mode)).unwrap();
    fs::write(host.join("public"), "public").unwrap();
    chown(&host, Some(0), Some(denied)).unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(dir_mode)).unwrap();
    host
}

/// `0604 root:locald-denied`: others may read, the group may not, and the caller is in it.
#[test]
fn a_file_the_callers_group_denies_stays_unreadable_through_a_bind_mount() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let host = denied_files(p, "grp-file", 0o755, 0o604);
    // The caller holds the group and cannot read the file on the host.
    let own = as_caller(&c, Path::new("/bin/cat")).arg(host.join("secret")).output().unwrap();
    assert!(!own.status.success() && !text(&own).contains("DENIED-SECRET"), "{}", text(&own));
    let groups = as_caller(&c, Path::new("/usr/bin/id")).arg("-G").output().unwrap();
    let denied = id_of("group", DENIED_GROUP).unwrap().to_string();
    assert!(String::from_utf8_lossy(&groups.stdout).split_whitespace().any(|g| g == denied));

    let volume = Volume { host: host.clone(), container: "/mnt".into(), read_only: true };
    let script = "cat /mnt/public; echo; cat /mnt/secret";
    let bundle = bundle_dir(p, &c, "grp-file-bundle", &config(&c, "grpfile", script, vec![volume]), |_| {});
    let out = run(p, &c, &bundle, "grpfile");
    assert!(String::from_utf8_lossy(&out.stdout).contains("public"), "the mount works: {}", text(&out));
    assert!(
        !text(&out).contains("DENIED-SECRET"),
        "the container read what the caller cannot: {}",
        text(&out)
    );
    assert!(text(&out).contains("ermission denied"), "{}", text(&out));
}

/// `0705 root:locald-denied` directory: the caller cannot enter it, so it is no bind source.
#[test]
fn a_directory_the_callers_group_denies_is_refused_as_a_bind_source() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let host = denied_files(p, "grp-dir", 0o705, 0o644);
    let own = as_caller(&c, Path::new("/bin/cat")).arg(host.join("secret")).output().unwrap();
    assert!(!own.status.success(), "the caller can read it after all: {}", text(&own));
    // A file inside it: the walk to it, made with the caller's groups, cannot enter the directory.
    let volume = Volume { host: host.join("secret"), container: "/mnt/secret".into(), read_only: true };
    let bundle =
        bundle_dir(p, &c, "grp-dir-file", &config(&c, "grpdir", "cat /mnt/secret", vec![volume]), |_| {});
    let out = run(p, &c, &bundle, "grpdir");
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("not accessible to the caller"), "{}", text(&out));
    assert!(!text(&out).contains("DENIED-SECRET"), "{}", text(&out));
    // The directory itself is reachable (O_PATH needs no search permission on it), but the
    // container, holding the caller's groups, cannot enter it either.
    let volume = Volume { host: host.clone(), container: "/mnt".into(), read_only: true };
    let bundle =
        bundle_dir(p, &c, "grp-dir-bundle", &config(&c, "grpdir", "cat /mnt/secret", vec![volume]), |_| {});
    let out = run(p, &c, &bundle, "grpdir");
    assert!(text(&out).contains("ermission denied"), "{}", text(&out));
    assert!(!text(&out).contains("DENIED-SECRET"), "{}", text(&out));
}

// --- Finding 8: idmapped mounts ------------------------------------------------------------

#[test]
fn idmapped_mount_fields_are_refused_before_anything_runs() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let map_to_root = serde_json::json!([{"containerID": 0, "hostID": 0, "size": 1}]);
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "idmap-fields",
            // Only the container's user onto the caller (privileged_subid has the rest).
            "onto host id 0",
            Box::new(move |last: &mut serde_json::Value| {
                last["uidMappings"] = map_to_root.clone();
                last["gidMappings"] = map_to_root.clone();
            }),
        ),
        ("idmap-opt", "idmap", Box::new(|last| last["options"].as_array_mut().unwrap().push("idmap".into()))),
        (
            "ridmap-opt",
            "ridmap",
            Box::new(|last| last["options"].as_array_mut().unwrap().push("ridmap".into())),
        ),
    ];
    for (id, why, edit) in cases {
        let (marker, volume) = marker_volume(p, &c, &format!("{id}-data"));
        let bundle = bundle_dir(p, &c, id, &config(&c, id, "touch /data/ran", vec![volume]), |json| {
            // The /data volume is the last mount the generator writes.
            edit(json["mounts"].as_array_mut().unwrap().last_mut().unwrap());
        });
        let out = run(p, &c, &bundle, id);
        assert_eq!(out.status.code(), Some(77), "{id}: {}", text(&out));
        assert!(text(&out).contains("bundle refused") && text(&out).contains(why), "{id}: {}", text(&out));
        assert!(!marker.exists(), "{id}: the container ran");
    }
}

// --- Finding 5: root-owned copies under /run -------------------------------------------------

fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path).into_iter().flatten().flatten().map(|e| bytes_under(&e.path())).sum::<u64>()
}

/// The attack of the issue: ~800 KB bundles under many ids, each shim SIGKILLed by the caller
/// while its container runs. The next run clears what no live shim holds.
#[test]
fn shims_killed_mid_run_leave_no_copies_behind() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let state = PathBuf::from(format!("/run/locald/{}", c.uid));
    let padding = "x".repeat(800 << 10);
    let ids: Vec<String> = (0..4).map(|i| format!("killed-{i}")).collect();
    for id in &ids {
        let padding = padding.clone();
        let bundle =
            bundle_dir(p, &c, id, &config(&c, id, "echo ready; exec sleep 1000", vec![]), move |json| {
                json["annotations"] = serde_json::json!({ "padding": padding });
            });
        let mut child =
            locald_tests::spawn_piped(locald_tests::bundle_run(&mut as_caller(&c, &p.shim()), &bundle, id));
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().map(|l| l.unwrap()).as_deref(), Some("ready"), "{id} did not start");
        // The caller may signal their own shim: its real uid is theirs.
        let kill =
            as_caller(&c, Path::new("/usr/bin/kill")).args(["-KILL", &child.id().to_string()]).output();
        assert!(kill.unwrap().status.success(), "{id}: the caller could not kill the shim");
        child.wait().unwrap();
        assert!(state.join("bundles").join(id).exists(), "{id}: the copy is there while the shim is gone");
    }
    // Each run cleared the copies of the shims killed before it: only the last one is left.
    let remaining: Vec<_> = ids.iter().filter(|id| state.join("bundles").join(id).exists()).collect();
    assert_eq!(remaining, [&ids[3]], "copies of killed shims pile up under {}", state.display());

    let bundle = bundle_dir(p, &c, "killed-next", &config(&c, "next", "echo next", vec![]), |_| {});
    let out = run(p, &c, &bundle, "next");
    assert!(out.status.success(), "{}", text(&out));
    for id in &ids {
        assert!(
            !state.join("bundles").join(id).exists(),
            "{id}: its copy is still under {}",
            state.display()
        );
        assert!(!state.join(id).exists(), "{id}: its container state is still under {}", state.display());
    }
    let left = bytes_under(&state);
    assert!(left < 256 << 10, "{left} bytes of root-owned data left under {}", state.display());
    // The orphaned containers went with them (their init was `sleep 1000` as the caller).
    // (Killed processes are reaped by the host's init in its own time, so this polls.)
    let alive = || {
        let out =
            Command::new("pgrep").args(["-u", &c.uid.to_string(), "-f", "sleep 1000"]).output().unwrap();
        let pids = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!pids.is_empty()).then_some(pids)
    };
    let gone = locald_tests::wait_for(std::time::Duration::from_secs(10), || alive().is_none().then_some(()));
    assert!(gone.is_some(), "orphaned containers still running: {:?}", alive());
}

#[test]
fn a_config_json_over_one_mib_is_refused_and_leaves_nothing() {
    let Some(p) = privileged() else { return };
    let c = caller();
    let (marker, volume) = marker_volume(p, &c, "huge-data");
    let bundle = bundle_dir(p, &c, "huge", &config(&c, "huge", "touch /data/ran", vec![volume]), |json| {
        json["annotations"] = serde_json::json!({ "padding": "x".repeat(1 << 20) });
    });
    assert!(fs::metadata(bundle.join("config.json")).unwrap().size() > 1 << 20);
    let out = run(p, &c, &bundle, "huge");
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("larger than 1 MiB"), "{}", text(&out));
    assert!(!marker.exists());
    assert!(!Path::new(&format!("/run/locald/{}/bundles/huge", c.uid)).exists());
}
