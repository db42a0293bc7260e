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

/// `other_user`'s directory tree: the caller may not remove any of it themselves.
fn victims_tree(p: &Privileged, dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("precious"), "keep me").unwrap();
    fs::write(dir.join("sub/precious"), "keep me").unwrap();
    for path in [dir.to_owned(), dir.join("sub"), dir.join("precious"), dir.join("sub/precious")] {
        chown(&path, Some(p.other_user.uid), Some(p.other_user.gid)).unwrap();
    }
}

fn assert_refused_naming(out: &Output, path: &Path, uid: u32) {
    assert_refused(out);
    let message = text(out);
    assert!(message.contains(&format!("{} (owned by uid {uid})", path.display())), "{message}");
}

/// Issue 17 finding 6: a directory of the caller's holding another user's subtree, renamed to
/// `<p>/.locald`, made the victim's files removable through cleanup.
#[test]
fn another_users_tree_moved_into_dot_locald_is_refused_and_kept() {
    let Some(p) = privileged() else { return };
    let project = p.user_dir("cleanup-moved-in");
    // The caller's drop box, where the victim made a directory of theirs.
    let dropbox = project.join("dropbox");
    fs::create_dir(&dropbox).unwrap();
    chown(&dropbox, Some(p.user.uid), Some(p.user.gid)).unwrap();
    fs::set_permissions(&dropbox, fs::Permissions::from_mode(0o777)).unwrap();
    let vdir = dropbox.join("vdir");
    victims_tree(p, &vdir);
    // Control: the caller cannot remove it themselves.
    let out = p.as_user(Path::new("/bin/rm")).arg("-rf").arg(&vdir).output().unwrap();
    assert!(!out.status.success() && vdir.join("sub/precious").exists(), "{}", text(&out));

    // The attack: the caller renames their directory to `.locald`, then asks for cleanup.
    let locald = project.join(".locald");
    let out = p.as_user(Path::new("/bin/mv")).arg(&dropbox).arg(&locald).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let vdir = locald.join("vdir");
    let out = cleanup(p, &vdir);
    assert_refused_naming(&out, &vdir, p.other_user.uid);
    assert_intact(&vdir);
    assert_intact(&vdir.join("sub"));

    // Nor through a path below the victim's directory: it is not entered.
    let out = cleanup(p, &vdir.join("sub"));
    assert_refused(&out);
    assert!(text(&out).contains(&format!("{} is owned by uid {}", vdir.display(), p.other_user.uid)));
    assert_intact(&vdir.join("sub"));
    assert_intact(&vdir);
}

/// Root's leftovers and the caller's own files go; another user's directory, file and a hard
/// link to their file stay, and each is named.
#[test]
fn a_mixed_tree_loses_only_root_and_caller_entries() {
    let Some(p) = privileged() else { return };
    let project = project(p, "cleanup-mixed");
    let mix = project.join(".locald/mix");
    fs::create_dir(&mix).unwrap();
    chown(&mix, Some(p.user.uid), Some(p.user.gid)).unwrap();
    root_leftovers(&mix.join("root"));
    fs::write(mix.join("mine"), "u").unwrap();
    chown(mix.join("mine"), Some(p.user.uid), Some(p.user.gid)).unwrap();
    victims_tree(p, &mix.join("root/theirs"));
    fs::write(mix.join("their-file"), "keep me").unwrap();
    chown(mix.join("their-file"), Some(p.other_user.uid), Some(p.other_user.gid)).unwrap();
    // A hard link (where protected_hardlinks is off) to a file only the victim can change.
    let elsewhere = p.scratch_dir("cleanup-mixed-victim");
    victims_tree(p, &elsewhere.join("home"));
    fs::hard_link(elsewhere.join("home/precious"), mix.join("link")).unwrap();

    let out = cleanup(p, &mix);
    for kept in [mix.join("root/theirs"), mix.join("their-file"), mix.join("link")] {
        assert_refused_naming(&out, &kept, p.other_user.uid);
    }
    assert_intact(&mix.join("root/theirs"));
    assert_intact(&mix.join("root/theirs/sub"));
    assert_eq!(fs::read_to_string(mix.join("their-file")).unwrap(), "keep me");
    assert_eq!(fs::read_to_string(mix.join("link")).unwrap(), "keep me");
    assert_intact(&elsewhere.join("home"));
    assert!(!mix.join("mine").exists(), "the caller's file is removed");
    assert!(!mix.join("root/rootfs").exists(), "root's leftovers are removed");
    let mut left: Vec<String> = fs::read_dir(mix.join("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["theirs"], "only the victim's entry keeps its parent");
}
