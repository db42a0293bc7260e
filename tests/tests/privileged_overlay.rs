//! `bundle run` with an overlay root (protocol 7): the layers stay untouched and the container's
//! writes land in the bundle's `upper/` only, nothing is mounted on the host, and every lower,
//! upper and work directory that is not the caller's own (another user's, behind a symlink,
//! outside the caller's reach, outside the cache and the bundle, too many) is refused with the
//! container never run.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;

use locald_image::bundle::{self, ContainerConfig};
use locald_tests::{Privileged, privileged, text};

/// What the container does when it runs: overwrite an image file, add one.
const SCRIPT: &str = "cat /image-file; echo changed > /image-file; echo new > /written";

struct Scene {
    /// The caller's cache, holding one busybox layer at `layer`.
    cache: PathBuf,
    layer: PathBuf,
    /// The bundle: config.json, an empty `rootfs`, `upper` and `work`.
    bundle: PathBuf,
}

fn scene(p: &Privileged, name: &str, id: &str) -> Scene {
    let root = p.user_dir(name);
    let cache = root.join("cache");
    let layer = cache.join("oci/layers/sha256/aa");
    locald_tests::busybox_rootfs(&layer, &["sh", "cat", "echo"], &["proc", "dev", "sys", "tmp"]);
    fs::write(layer.join("image-file"), "from the image\n").unwrap();
    let bundle = root.join("project/.locald/containers/web");
    for sub in ["rootfs", "upper", "work"] {
        fs::create_dir_all(bundle.join(sub)).unwrap();
    }
    let config = ContainerConfig {
        id: id.into(),
        uid: p.user.uid,
        gid: p.user.gid,
        args: vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()],
        ..Default::default()
    };
    bundle::write(&bundle, &config).unwrap();
    locald_tests::chown_tree(&root, p.user.uid, p.user.gid);
    Scene { cache, layer, bundle }
}

fn run(p: &Privileged, bundle: &Path, id: &str, cache: &Path, lowers: &[&Path]) -> Output {
    let mut command = p.as_user(&p.shim());
    locald_tests::bundle_run(&mut command, bundle, id);
    command.arg(format!("--cache={}", cache.display()));
    for lower in lowers {
        command.arg(format!("--lower={}", lower.display()));
    }
    command.output().unwrap()
}

fn mounted_below(dir: &Path) -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    mountinfo.lines().filter(|l| l.contains(&dir)).map(str::to_owned).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The refusal, and the container never ran: no write reached the upper or the layer.
fn assert_refused(out: &Output, s: &Scene, what: &str) {
    assert_eq!(out.status.code(), Some(77), "{what} was not refused: {}", text(out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{what}: {}", text(out));
    assert!(!s.bundle.join("upper/written").exists(), "{what}: the container ran");
    assert_eq!(fs::read_to_string(s.layer.join("image-file")).unwrap(), "from the image\n");
    assert!(mounted_below(s.bundle.parent().unwrap()).is_empty(), "{what}: a mount was left");
}

#[test]
fn the_container_writes_into_its_upper_and_the_layer_and_host_stay_untouched() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-basic", "ov-basic");
    let out = run(p, &s.bundle, "ov-basic", &s.cache, &[&s.layer]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the image\n", "the layer is the container's root");
    assert_eq!(fs::read_to_string(s.layer.join("image-file")).unwrap(), "from the image\n");
    assert_eq!(entries(&s.bundle.join("upper")), ["image-file", "written"], "only what it wrote");
    assert_eq!(fs::read_to_string(s.bundle.join("upper/image-file")).unwrap(), "changed\n");
    assert!(entries(&s.bundle.join("rootfs")).is_empty(), "the overlay was mounted on the host's rootfs dir");
    assert!(mounted_below(&s.bundle).is_empty(), "a mount is visible on the host");
    // The overlay's mounter is the caller: what it made in the upper and work is theirs.
    for dir in [s.bundle.join("upper"), s.bundle.join("work")] {
        for entry in fs::read_dir(&dir).unwrap() {
            let meta = fs::symlink_metadata(entry.unwrap().path()).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), p.user.uid, "{}", dir.display());
        }
    }
    // The next run sees the writes of the last one.
    let again = run(p, &s.bundle, "ov-basic", &s.cache, &[&s.layer]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), "changed\n", "{}", text(&again));
}

#[test]
fn a_lower_that_is_another_users_directory_is_refused() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-other", "ov-other");
    // World-readable, so the caller could list it, and inside the caller's cache.
    let theirs = s.cache.join("oci/layers/sha256/bb");
    fs::create_dir_all(theirs.join("private")).unwrap();
    fs::write(theirs.join("private/secret"), "theirs\n").unwrap();
    locald_tests::chown_tree(&theirs, p.other_user.uid, p.other_user.gid);
    fs::set_permissions(theirs.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(p, &s.bundle, "ov-other", &s.cache, &[&theirs, &s.layer]);
    assert_refused(&out, &s, "another user's lower");
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid"), "{}", text(&out));
}

#[test]
fn a_symlinked_upper_or_work_or_lower_is_refused() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-links", "ov-links");
    let elsewhere = p.user_dir("ov-links-elsewhere");
    // upper → a directory of the caller's elsewhere: the writes would land outside the bundle.
    fs::remove_dir(s.bundle.join("upper")).unwrap();
    symlink(&elsewhere, s.bundle.join("upper")).unwrap();
    let out = run(p, &s.bundle, "ov-links", &s.cache, &[&s.layer]);
    assert_refused(&out, &s, "a symlinked upper");
    assert!(fs::read_dir(&elsewhere).unwrap().next().is_none(), "something was written through the link");
    fs::remove_file(s.bundle.join("upper")).unwrap();
    fs::create_dir(s.bundle.join("upper")).unwrap();
    chown(s.bundle.join("upper"), Some(p.user.uid), Some(p.user.gid)).unwrap();

    fs::remove_dir(s.bundle.join("work")).unwrap();
    symlink(&elsewhere, s.bundle.join("work")).unwrap();
    assert_refused(&run(p, &s.bundle, "ov-links", &s.cache, &[&s.layer]), &s, "a symlinked work");
    fs::remove_file(s.bundle.join("work")).unwrap();
    fs::create_dir(s.bundle.join("work")).unwrap();
    chown(s.bundle.join("work"), Some(p.user.uid), Some(p.user.gid)).unwrap();

    // A lower through a link in the cache to root's /etc.
    let linked = s.cache.join("oci/layers/sha256/cc");
    symlink("/etc", &linked).unwrap();
    assert_refused(&run(p, &s.bundle, "ov-links", &s.cache, &[&linked]), &s, "a symlinked lower");
    let out = run(p, &s.bundle, "ov-links", &s.cache, &[&s.layer]);
    assert!(out.status.success(), "the same request made legitimate runs: {}", text(&out));
}

#[test]
fn a_lower_outside_the_callers_reach_or_outside_the_cache_and_bundle_is_refused() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-reach", "ov-reach");
    // A directory of the caller's own, but below a root-only one they cannot enter.
    let hidden = s.cache.join("hidden");
    fs::create_dir(&hidden).unwrap();
    let layer = hidden.join("layer");
    locald_tests::busybox_rootfs(&layer, &["sh", "cat", "echo"], &["proc", "dev", "sys", "tmp"]);
    fs::write(layer.join("image-file"), "hidden\n").unwrap();
    locald_tests::chown_tree(&layer, p.user.uid, p.user.gid);
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
    assert_refused(&run(p, &s.bundle, "ov-reach", &s.cache, &[&layer]), &s, "a lower out of reach");

    // The caller's own layer, but outside the cache and the bundle they name.
    let outside = p.user_dir("ov-reach-outside");
    locald_tests::busybox_rootfs(&outside, &["sh", "cat", "echo"], &["proc", "dev", "sys", "tmp"]);
    locald_tests::chown_tree(&outside, p.user.uid, p.user.gid);
    assert_refused(&run(p, &s.bundle, "ov-reach", &s.cache, &[&outside]), &s, "a lower outside the cache");
    // The bundle's own upper as a lower.
    let upper = s.bundle.join("upper");
    assert_refused(&run(p, &s.bundle, "ov-reach", &s.cache, &[&upper]), &s, "the upper as a lower");
    // A cache that is another user's directory.
    let foreign_cache = p.scratch_dir("ov-reach-cache");
    let foreign_layer = foreign_cache.join("layer");
    fs::create_dir(&foreign_layer).unwrap();
    chown(&foreign_layer, Some(p.user.uid), Some(p.user.gid)).unwrap();
    assert_refused(&run(p, &s.bundle, "ov-reach", &foreign_cache, &[&foreign_layer]), &s, "root's cache");
}

#[test]
fn more_lowers_than_the_limit_are_refused() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-many", "ov-many");
    let limit = locald_shim_protocol::overlay::MAX_LOWERS;
    let lowers: Vec<PathBuf> = (0..=limit)
        .map(|i| {
            let dir = s.cache.join(format!("oci/layers/sha256/l{i}"));
            fs::create_dir_all(&dir).unwrap();
            chown(&dir, Some(p.user.uid), Some(p.user.gid)).unwrap();
            dir
        })
        .chain([s.layer.clone()])
        .collect();
    let refs: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let out = run(p, &s.bundle, "ov-many", &s.cache, &refs);
    assert_refused(&out, &s, "too many lowers");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("at most {limit}")), "{}", text(&out));
    let out = run(p, &s.bundle, "ov-many", &s.cache, &refs[refs.len() - limit..]);
    assert!(out.status.success(), "exactly the limit runs: {}", text(&out));
}

#[test]
fn an_upper_on_a_filesystem_overlayfs_refuses_says_overlay_unavailable() {
    let Some(p) = privileged() else { return };
    let s = scene(p, "ov-unavailable", "ov-unavailable");
    // The bundle on an overlayfs of its own: overlayfs takes no overlayfs as an upper.
    let base = p.scratch_dir("ov-unavailable-mnt");
    for sub in ["l", "u", "w", "m"] {
        fs::create_dir(base.join(sub)).unwrap();
    }
    let options = format!("lowerdir={0}/l,upperdir={0}/u,workdir={0}/w", base.display());
    let mount = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(base.join("m"))
        .output()
        .unwrap();
    assert!(mount.status.success(), "{}", text(&mount));
    let bundle = base.join("m/b");
    let copied = std::process::Command::new("cp").arg("-a").arg(&s.bundle).arg(&bundle).output().unwrap();
    assert!(copied.status.success(), "{}", text(&copied));
    locald_tests::chown_tree(&base.join("m"), p.user.uid, p.user.gid);
    let out = run(p, &bundle, "ov-unavailable", &s.cache, &[&s.layer]);
    let _ = std::process::Command::new("umount").arg(base.join("m")).status();
    assert_eq!(out.status.code(), Some(71), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(locald_shim_protocol::overlay::UNAVAILABLE), "{stderr}");
    assert!(!base.join("u/b/upper/written").exists(), "the container ran");
}
