//! `admin cleanup` attacked: each case is a removal that would hit something outside the
//! caller's `.locald` without the check, and asserts both the refusal and that the victim is
//! intact. Runs as root with the throwaway user (LOCALD_REQUIRE_PRIVILEGED=1 in CI).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use locald_tests::{Privileged, field, privileged, text};
use nix::mount::{MsFlags, mount, umount};

fn cleanup(p: &Privileged, path: &Path) -> Output {
    p.as_user(&p.shim()).args(["admin", "cleanup", "--"]).arg(path).output().unwrap()
}

fn assert_refused(out: &Output) {
    assert_eq!(out.status.code(), Some(77), "expected a policy refusal: {}", text(out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", text(out));
}

/// A root-owned directory with a file in it: what an attack would try to delete.
fn victim(p: &Privileged, name: &str) -> PathBuf {
    let dir = p.scratch_dir(name);
    fs::write(dir.join("precious"), "keep me").unwrap();
    dir
}

fn assert_intact(victim: &Path) {
    assert_eq!(
        fs::read_to_string(victim.join("precious")).unwrap(),
        "keep me",
        "{} was touched",
        victim.display()
    );
}

/// `<user project>/.locald` owned by the user.
fn project(p: &Privileged, name: &str) -> PathBuf {
    let project = p.user_dir(name);
    let locald = project.join(".locald");
    fs::create_dir(&locald).unwrap();
    chown(&locald, Some(p.user.uid), Some(p.user.gid)).unwrap();
    project
}

/// Root-owned leftovers a container could leave: a 0700 root directory with root files.
fn root_leftovers(dir: &Path) {
    fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    fs::write(dir.join("rootfs/etc/file"), "x").unwrap();
    symlink("/etc/passwd", dir.join("rootfs/etc/passwd-link")).unwrap();
    fs::set_permissions(dir.join("rootfs"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn root_owned_leftovers_inside_the_callers_dot_locald_are_removed() {
    let Some(p) = privileged() else { return };
    let project = project(p, "cleanup-ok");
    let leftovers = project.join(".locald/containers/c1");
    root_leftovers(&leftovers);
    // Control: the user alone cannot remove them.
    let out = p.as_user(Path::new("/bin/rm")).arg("-rf").arg(&leftovers).output().unwrap();
    assert!(!out.status.success() && leftovers.join("rootfs/etc/file").exists());

    let out = cleanup(p, &leftovers);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!leftovers.exists());
    assert!(project.join(".locald/containers").is_dir(), "only the named path goes");
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn try_catch_delegate_removes_root_owned_files_end_to_end() {
    let Some(p) = privileged() else { return };
    let project = project(p, "cleanup-tcd");
    let state = project.join(".locald/state");
    fs::create_dir(&state).unwrap();
    chown(&state, Some(p.user.uid), Some(p.user.gid)).unwrap();
    fs::write(state.join("user-file"), "u").unwrap();
    chown(state.join("user-file"), Some(p.user.uid), Some(p.user.gid)).unwrap();
    root_leftovers(&state.join("c2"));

    let out = p.caller(false).args(["remove"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(field(&out, "removed"), state.display().to_string());
    assert!(!state.exists());

    // A user-owned tree is removed without the shim (a broken shim path proves it was not used).
    let plain = project.join(".locald/plain");
    fs::create_dir(&plain).unwrap();
    chown(&plain, Some(p.user.uid), Some(p.user.gid)).unwrap();
    let out =
        p.caller(false).env("LOCALD_SHIM", "/nonexistent").args(["remove"]).arg(&plain).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!plain.exists());
}

#[test]
fn malformed_paths_are_refused() {
    let Some(p) = privileged() else { return };
    let victim = victim(p, "cleanup-victim-paths");
    let project = project(p, "cleanup-paths");
    let parent_escape =
        format!("{}/.locald/../../{}", project.display(), victim.file_name().unwrap().to_string_lossy());
    for path in [
        "relative/.locald/x".to_owned(),
        parent_escape,
        victim.join("precious").display().to_string(),
        format!("{}/.locald", project.display()),
    ] {
        let out = cleanup(p, Path::new(&path));
        assert_refused(&out);
    }
    assert_intact(&victim);
}

#[test]
fn a_dot_locald_not_owned_by_the_caller_is_refused() {
    let Some(p) = privileged() else { return };
    // Root's own .locald (e.g. a system service's state).
    let root_project = p.scratch_dir("cleanup-root-project");
    let locald = root_project.join(".locald");
    fs::create_dir(&locald).unwrap();
    fs::write(locald.join("precious"), "keep me").unwrap();
    assert_refused(&cleanup(p, &locald.join("precious")));
    assert_intact(&locald);

    // Another user's .locald.
    let theirs = p.scratch_dir("cleanup-other-user");
    chown(&theirs, Some(p.other_user.uid), Some(p.other_user.gid)).unwrap();
    let locald = theirs.join(".locald");
    fs::create_dir(&locald).unwrap();
    fs::create_dir(locald.join("data")).unwrap();
    fs::write(locald.join("data/precious"), "keep me").unwrap();
    for path in [&theirs, &locald, &locald.join("data")] {
        chown(path, Some(p.other_user.uid), Some(p.other_user.gid)).unwrap();
    }
    assert_refused(&cleanup(p, &locald.join("data")));
    assert_intact(&locald.join("data"));
}

#[test]
fn a_dot_locald_symlink_to_a_root_directory_is_refused() {
    let Some(p) = privileged() else { return };
    let victim = victim(p, "cleanup-victim-link");
    let project = p.user_dir("cleanup-locald-link");
    symlink(&victim, project.join(".locald")).unwrap();
    assert_refused(&cleanup(p, &project.join(".locald/precious")));
    assert_intact(&victim);
}

#[test]
fn a_symlink_inside_is_removed_not_followed() {
    let Some(p) = privileged() else { return };
    let victim = victim(p, "cleanup-victim-inner");
    let project = project(p, "cleanup-inner-link");
    let run = project.join(".locald/run");
    fs::create_dir(&run).unwrap();
    symlink(&victim, run.join("link")).unwrap();
    symlink(victim.join("precious"), run.join("file-link")).unwrap();
    let out = cleanup(p, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!run.exists());
    assert_intact(&victim);

    // Naming the link itself removes the link only.
    fs::create_dir(&run).unwrap();
    symlink(&victim, run.join("link")).unwrap();
    assert!(cleanup(p, &run.join("link")).status.success());
    assert!(fs::symlink_metadata(run.join("link")).is_err());
    assert_intact(&victim);

    // A symlinked directory in the middle of the path is not traversed.
    symlink(&victim, run.join("dirlink")).unwrap();
    assert_refused(&cleanup(p, &run.join("dirlink/precious")));
    assert_intact(&victim);
}

#[test]
fn a_directory_swapped_for_a_symlink_during_removal_never_reaches_outside() {
    let Some(p) = privileged() else { return };
    let victim = victim(p, "cleanup-victim-race");
    let project = project(p, "cleanup-race");
    let race = project.join(".locald/race");
    let stop = Arc::new(AtomicBool::new(false));
    for round in 0..40 {
        fs::create_dir_all(race.join("a/b/c")).unwrap();
        for i in 0..20 {
            fs::write(race.join(format!("a/b/c/f{i}")), "x").unwrap();
        }
        stop.store(false, Ordering::SeqCst);
        // The attacker keeps swapping a/b for a symlink to the victim and back.
        let swapper = {
            let (stop, race, victim) = (stop.clone(), race.clone(), victim.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _ = fs::rename(race.join("a/b"), race.join("a/b.real"));
                    let _ = symlink(&victim, race.join("a/b"));
                    let _ = fs::remove_file(race.join("a/b"));
                    let _ = fs::rename(race.join("a/b.real"), race.join("a/b"));
                }
            })
        };
        let out = cleanup(p, &race);
        stop.store(true, Ordering::SeqCst);
        swapper.join().unwrap();
        assert_intact(&victim);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(71),
            "round {round}: {}",
            text(&out)
        );
        let _ = fs::remove_dir_all(&race);
    }
    assert_intact(&victim);
}

#[test]
fn a_bind_mount_inside_dot_locald_is_neither_crossed_nor_removed() {
    let Some(p) = privileged() else { return };
    let victim = victim(p, "cleanup-victim-mount");
    let project = project(p, "cleanup-bind");
    let mounted = project.join(".locald/vol/mnt");
    fs::create_dir_all(&mounted).unwrap();
    fs::write(project.join(".locald/vol/other"), "x").unwrap();
    mount(Some(&victim), &mounted, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    let out = cleanup(p, &project.join(".locald/vol"));
    let mounted_still = fs::read_to_string(mounted.join("precious")).ok();
    umount(&mounted).unwrap();
    assert_refused(&out);
    assert!(text(&out).contains("mount point"), "{}", text(&out));
    assert_eq!(mounted_still.as_deref(), Some("keep me"), "the mount must stay in place");
    assert_intact(&victim);
    assert!(!project.join(".locald/vol/other").exists(), "the rest of the tree is still removed");
}
