//! `bundle run` with subordinate id ranges (issue 20): the shim maps container ids 1… only into
//! the caller's own allocation in `/etc/subuid` and `/etc/subgid`, read by itself from files only
//! root can write. Positive cases show the mapping on disk; each attack is a bundle that would
//! otherwise succeed (it chowns a file to the id it maps), refused with nothing run.
//!
//! The caller and the victim are throwaway users of this file (`locald-subid`, `locald-subid2`)
//! given allocations with `usermod --add-subuids`. Tests that replace the allocation files restore
//! them on drop; every test holds one lock, since all of them read those files.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use locald_image::bundle::{self, ContainerConfig, Volume};
use locald_image::identity::{ProcessUser, Range, Subordinate};
use locald_tests::{Privileged, privileged, text};
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Spec};

const CALLER: &str = "locald-subid";
const VICTIM: &str = "locald-subid2";
const CALLER_RANGE: Range = Range { start: 500_000, count: 65_536 };
const VICTIM_RANGE: Range = Range { start: 600_000, count: 65_536 };
const REFUSED: i32 = 77;

static FILES: Mutex<()> = Mutex::new(());

struct User {
    uid: u32,
    gid: u32,
}

fn id_of(database: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").args([database, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split(':').nth(2)?.trim().parse().ok()
}

/// `name`, with `range` allocated on both sides (added once; usermod refuses nothing twice).
fn user_with(name: &str, range: Range) -> User {
    if id_of("passwd", name).is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd");
        assert!(status.success() || status.code() == Some(9), "useradd {name}: {status}");
    }
    let text = format!("{}-{}", range.start, range.start + range.count - 1);
    let has = |file: &str| {
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| l == format!("{name}:{}:{}", range.start, range.count))
    };
    if !has("/etc/subuid") || !has("/etc/subgid") {
        let status = Command::new("usermod")
            .args(["--add-subuids", &text, "--add-subgids", &text, name])
            .status()
            .unwrap();
        assert!(status.success(), "usermod --add-subuids for {name}: {status}");
    }
    User { uid: id_of("passwd", name).unwrap(), gid: id_of("group", name).unwrap() }
}

fn caller() -> User {
    user_with(VICTIM, VICTIM_RANGE);
    user_with(CALLER, CALLER_RANGE)
}

fn as_caller(c: &User, program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", "/usr/bin:/bin");
    std::os::unix::process::CommandExt::uid(&mut command, c.uid);
    std::os::unix::process::CommandExt::gid(&mut command, c.gid);
    command
}

/// A directory of the caller under the fixture's root-owned install dir.
fn owned_dir(p: &Privileged, c: &User, name: &str) -> PathBuf {
    let dir = p.scratch_dir(name);
    chown(&dir, Some(c.uid), Some(c.gid)).unwrap();
    dir
}

fn config(c: &User, id: &str, script: &str, data: &Path) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        uid: c.uid,
        gid: c.gid,
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        volumes: vec![Volume { host: data.to_owned(), container: "/data".into(), read_only: false }],
        subordinate: Subordinate { uids: Some(CALLER_RANGE), gids: Some(CALLER_RANGE) },
        ..Default::default()
    }
}

/// Runs `config` (its spec edited by `edit`) as the caller. The volume `/data` is world-writable.
fn run(
    p: &Privileged,
    c: &User,
    name: &str,
    config: &ContainerConfig,
    edit: impl FnOnce(&mut Spec),
) -> Output {
    let dir = owned_dir(p, c, name);
    locald_tests::busybox_rootfs(
        &dir.join("rootfs"),
        &["sh", "id", "touch", "chown", "stat", "echo", "cat"],
        &["proc", "dev", "sys", "tmp", "etc", "data"],
    );
    let mut spec = bundle::spec(config).unwrap();
    edit(&mut spec);
    fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    locald_tests::chown_tree(&dir, c.uid, c.gid);
    for volume in &config.volumes {
        fs::set_permissions(&volume.host, fs::Permissions::from_mode(0o777)).unwrap();
    }
    locald_tests::bundle_run(&mut as_caller(c, &p.shim()), &dir, &config.id).output().unwrap()
}

fn map(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default().container_id(container).host_id(host).size(size).build().unwrap()
}

fn set_maps(spec: &mut Spec, uids: Vec<LinuxIdMapping>, gids: Vec<LinuxIdMapping>) {
    let mut linux = spec.linux().clone().unwrap();
    linux.set_uid_mappings(Some(uids));
    linux.set_gid_mappings(Some(gids));
    spec.set_linux(Some(linux));
}

#[test]
fn uid_101_inside_is_the_subordinate_start_plus_100_outside() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let data = owned_dir(p, &c, "subid-ok-data");
    let mut config = config(&c, "subid-ok", "id -u; id -g; touch /data/by-101", &data);
    config.user = Some(ProcessUser { uid: 101, gid: 101, additional_gids: vec![] });
    let out = run(p, &c, "subid-ok", &config, |_| {});
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        ["101", "101"],
        "{}",
        text(&out)
    );
    let meta = fs::metadata(data.join("by-101")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (CALLER_RANGE.start + 100, CALLER_RANGE.start + 100));

    // Container root hands a file to one of its users: the same mapping.
    let data = owned_dir(p, &c, "subid-chown-data");
    let config = self::config(&c, "subid-chown", "touch /data/f && chown 5:7 /data/f", &data);
    let out = run(p, &c, "subid-chown", &config, |_| {});
    assert!(out.status.success(), "{}", text(&out));
    let meta = fs::metadata(data.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (CALLER_RANGE.start + 4, CALLER_RANGE.start + 6));
}

/// Each attack maps container id 1 somewhere it must not and chowns a file to it.
fn attack(p: &Privileged, name: &str, uids: Vec<LinuxIdMapping>, gids: Vec<LinuxIdMapping>, expect: &str) {
    let c = caller();
    let data = owned_dir(p, &c, &format!("{name}-data"));
    let config = config(&c, name, "touch /data/f && chown 1:1 /data/f", &data);
    let out = run(p, &c, name, &config, |spec| set_maps(spec, uids, gids));
    assert_eq!(out.status.code(), Some(REFUSED), "{name}: {}", text(&out));
    assert!(text(&out).contains(expect), "{name}: {}", text(&out));
    assert!(!data.join("f").exists(), "{name}: the container ran");
}

#[test]
fn ranges_outside_the_callers_allocation_are_refused_and_nothing_runs() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let own = |uid| map(0, uid, 1);
    let good = || vec![own(c.gid), map(1, CALLER_RANGE.start, CALLER_RANGE.count)];
    let victim = map(1, VICTIM_RANGE.start, 100);
    attack(p, "subid-victim", vec![own(c.uid), victim], good(), "not inside the caller's allocation");
    attack(
        p,
        "subid-gid-victim",
        vec![own(c.uid), map(1, CALLER_RANGE.start, 10)],
        vec![own(c.gid), victim],
        "gid mapping",
    );
    attack(
        p,
        "subid-too-wide",
        vec![own(c.uid), map(1, CALLER_RANGE.start, CALLER_RANGE.count + 1)],
        good(),
        "not inside",
    );
    attack(
        p,
        "subid-overlap",
        vec![own(c.uid), map(1, CALLER_RANGE.start, 10), map(100, CALLER_RANGE.start + 5, 10)],
        good(),
        "overlaps another mapping's host ids",
    );
    attack(
        p,
        "subid-container-overlap",
        vec![own(c.uid), map(1, CALLER_RANGE.start, 10), map(5, CALLER_RANGE.start + 100, 10)],
        good(),
        "container ids",
    );
    let many: Vec<LinuxIdMapping> = std::iter::once(own(c.uid))
        .chain((0..6).map(|i| map(1 + i * 10, CALLER_RANGE.start + i * 10, 10)))
        .collect();
    attack(p, "subid-many", many, good(), "more than");
}

/// `/etc/subuid` and `/etc/subgid` as they were, put back on drop.
struct Restore(Vec<(PathBuf, Vec<u8>)>);

impl Restore {
    fn save() -> Self {
        Restore(
            ["/etc/subuid", "/etc/subgid"]
                .iter()
                .map(|f| (PathBuf::from(f), fs::read(f).unwrap_or_default()))
                .collect(),
        )
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        for (path, bytes) in &self.0 {
            let _ = fs::remove_file(path);
            fs::write(path, bytes).unwrap();
            chown(path, Some(0), Some(0)).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

#[test]
fn allocation_files_the_caller_could_edit_or_redirect_are_refused() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let grant = format!("{CALLER}:{}:100\n", VICTIM_RANGE.start);
    let victim = || vec![map(0, c.uid, 1), map(1, VICTIM_RANGE.start, 100)];
    let victim_gids = || vec![map(0, c.gid, 1), map(1, VICTIM_RANGE.start, 100)];
    {
        let _restore = Restore::save();
        // Group-writable by the caller's group, and edited by the caller to grant the victim's ids.
        for file in ["/etc/subuid", "/etc/subgid"] {
            chown(file, Some(0), Some(c.gid)).unwrap();
            fs::set_permissions(file, fs::Permissions::from_mode(0o664)).unwrap();
        }
        let edit = as_caller(&c, Path::new("/bin/sh"))
            .args(["-c", &format!("printf '{}' >> /etc/subuid && printf '{}' >> /etc/subgid", grant, grant)])
            .status()
            .unwrap();
        assert!(edit.success(), "the caller could edit the group-writable file");
        attack(p, "subid-writable", victim(), victim_gids(), "writable by no one else");
    }
    {
        let _restore = Restore::save();
        // A symlink to a root-owned file that grants the same.
        let elsewhere = p.scratch_dir("subid-elsewhere").join("subuid");
        fs::write(&elsewhere, format!("{}{grant}", fs::read_to_string("/etc/subuid").unwrap())).unwrap();
        fs::remove_file("/etc/subuid").unwrap();
        symlink(&elsewhere, "/etc/subuid").unwrap();
        attack(p, "subid-symlink", victim(), victim_gids(), "symlink");
    }
    // Restored: the caller's own range works again; the victim's still does not.
    attack(p, "subid-after", victim(), victim_gids(), "not inside the caller's allocation");
}

// --- Idmapped volumes (protocol 6) ------------------------------------------------------------

/// The volume's mount entry given these `uidMappings`/`gidMappings`.
fn set_volume_maps(spec: &mut Spec, uids: Vec<LinuxIdMapping>, gids: Vec<LinuxIdMapping>) {
    let mut mounts = spec.mounts().clone().unwrap();
    let volume = mounts.iter_mut().find(|m| m.destination() == Path::new("/data")).unwrap();
    volume.set_uid_mappings(Some(uids));
    volume.set_gid_mappings(Some(gids));
    spec.set_mounts(Some(mounts));
}

fn as_101(c: &User, name: &str, script: &str, data: &Path) -> ContainerConfig {
    let mut config = config(c, name, script, data);
    config.user = Some(ProcessUser { uid: 101, gid: 102, additional_gids: vec![] });
    config.idmap_volumes = true;
    config
}

#[test]
fn an_idmapped_volume_keeps_the_container_users_files_the_callers() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let data = owned_dir(p, &c, "idmap-ok-data");
    fs::write(data.join("mine"), "x").unwrap();
    chown(data.join("mine"), Some(c.uid), Some(c.gid)).unwrap();
    fs::set_permissions(data.join("mine"), fs::Permissions::from_mode(0o600)).unwrap();
    let script = "id -u; stat -c %u:%g /data/mine; cat /data/mine; echo y >> /data/mine; touch /data/new";
    let out = run(p, &c, "idmap-ok", &as_101(&c, "idmap-ok", script, &data), |_| {});
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The caller's 0600 file is the container user's own inside: it reads and appends.
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["101", "101:102", "x"], "{}", text(&out));
    assert_eq!(fs::read_to_string(data.join("mine")).unwrap(), "xy\n");
    // What uid 101 made is the caller's on the host, not start + 100.
    let meta = fs::metadata(data.join("new")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (c.uid, c.gid));
}

/// An idmap the policy must refuse: the container would have written `/data/new` otherwise.
fn idmap_attack(
    p: &Privileged,
    name: &str,
    uids: Vec<LinuxIdMapping>,
    gids: Vec<LinuxIdMapping>,
    expect: &str,
) {
    let c = caller();
    let data = owned_dir(p, &c, &format!("{name}-data"));
    let config = as_101(&c, name, "touch /data/new", &data);
    let out = run(p, &c, name, &config, |spec| set_volume_maps(spec, uids, gids));
    assert_eq!(out.status.code(), Some(REFUSED), "{name}: {}", text(&out));
    assert!(
        text(&out).contains("bundle refused: mount at /data") && text(&out).contains(expect),
        "{name}: {}",
        text(&out)
    );
    assert!(!data.join("new").exists(), "{name}: the container ran");
}

#[test]
fn idmaps_onto_anyone_but_the_caller_or_beyond_the_containers_user_are_refused() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let victim = user_with(VICTIM, VICTIM_RANGE);
    let gid = || vec![map(102, c.gid, 1)];
    // The container's writes would land as root on the host, or as another user.
    idmap_attack(p, "idmap-root", vec![map(101, 0, 1)], gid(), "onto host id 0");
    idmap_attack(
        p,
        "idmap-victim",
        vec![map(101, victim.uid, 1)],
        gid(),
        &format!("onto host id {}", victim.uid),
    );
    idmap_attack(
        p,
        "idmap-gid-root",
        vec![map(101, c.uid, 1)],
        vec![map(102, 0, 1)],
        "gid mapping onto host id 0",
    );
    // More than one id: the host's other files would show as the container's.
    idmap_attack(p, "idmap-range", vec![map(101, c.uid, 1000)], gid(), "size 1000");
    idmap_attack(p, "idmap-two", vec![map(101, c.uid, 1), map(5, c.uid, 1)], gid(), "one entry");
    // A container id the container's own map does not send into the caller's allocation.
    idmap_attack(p, "idmap-unmapped", vec![map(70_000, c.uid, 1)], gid(), "uid 70000 is not one of your");
    idmap_attack(p, "idmap-zero", vec![map(0, c.uid, 1)], gid(), "container id 0");
}

/// Unmounts the filesystem mounted at the path on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// ramfs has no `FS_ALLOW_IDMAP` (tmpfs has one since Linux 6.3), so the kernel refuses to idmap
/// it for real: the volume is a plain bind, the container still runs, the shim's stderr (the
/// service's log) says whose the files are, and uid 101's file is `start + 100` on the host.
#[test]
fn a_volume_the_kernel_cannot_idmap_is_a_plain_bind_that_says_whose_files_are_there() {
    let Some(p) = privileged() else { return };
    let _lock = FILES.lock().unwrap_or_else(|e| e.into_inner());
    let c = caller();
    let data = owned_dir(p, &c, "idmap-ramfs-data");
    let status = Command::new("mount").args(["-t", "ramfs", "locald-test"]).arg(&data).status().unwrap();
    assert!(status.success(), "mount ramfs: {status}");
    let _mounted = Mounted(data.clone());
    chown(&data, Some(c.uid), Some(c.gid)).unwrap();
    let out = run(p, &c, "idmap-ramfs", &as_101(&c, "idmap-ramfs", "id -u; touch /data/new", &data), |_| {});
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "101", "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!(
        "its filesystem cannot be idmapped (EINVAL: Invalid argument); files the container's user writes there belong to your subordinate uid {} on the host",
        CALLER_RANGE.start + 100
    );
    assert!(stderr.contains(&line), "{}", text(&out));
    let meta = fs::metadata(data.join("new")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (CALLER_RANGE.start + 100, CALLER_RANGE.start + 101));
}
