//! `admin mount-loop` / `unmount-loop` attacked. Each refusal is checked together with its
//! effect: nothing mounted, no loop device left holding the image.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use locald_tests::{Privileged, privileged, text, wait_for};
use nix::mount::{MsFlags, mount, umount};

/// A user project with `.locald/mounts/<name>` ready as an empty, user-owned directory.
struct Project {
    root: PathBuf,
}

impl Project {
    fn new(p: &Privileged, name: &str) -> Self {
        let root = p.user_dir(name);
        for dir in [".locald", ".locald/mounts", ".locald/mounts/data"] {
            fs::create_dir(root.join(dir)).unwrap();
            chown(root.join(dir), Some(p.user.uid), Some(p.user.gid)).unwrap();
        }
        Self { root }
    }

    fn target(&self) -> PathBuf {
        self.root.join(".locald/mounts/data")
    }
}

/// An ext4 image owned by `uid` with a setuid-root program, a device node, an executable and a
/// plain file in it.
fn ext4_image(p: &Privileged, dir: &Path, uid: u32) -> PathBuf {
    let content = dir.join(format!("content-{uid}"));
    fs::create_dir_all(&content).unwrap();
    fs::write(content.join("hello.txt"), "hello from the image\n").unwrap();
    fs::copy("/usr/bin/id", content.join("suid-id")).unwrap();
    fs::set_permissions(content.join("suid-id"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(content.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(content.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    nix::sys::stat::mknod(
        &content.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let image =
        if uid == p.user.uid { dir.join("image.ext4") } else { dir.join(format!("image-{uid}.ext4")) };
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is needed for the loop-mount suite");
    assert!(out.status.success(), "mkfs.ext4: {}", text(&out));
    let gid = if uid == p.user.uid { p.user.gid } else { uid };
    chown(&image, Some(uid), Some(gid)).unwrap();
    image
}

fn mount_loop(p: &Privileged, image: &Path, target: &Path, extra: &[&str]) -> Output {
    p.as_user(&p.shim())
        .args(["admin", "mount-loop", "--image"])
        .arg(image)
        .arg("--target")
        .arg(target)
        .args(extra)
        .output()
        .unwrap()
}

fn unmount_loop(p: &Privileged, target: &Path) -> Output {
    p.as_user(&p.shim()).args(["admin", "unmount-loop", "--target"]).arg(target).output().unwrap()
}

fn mountinfo_line(target: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find(|l| l.split(' ').nth(4) == Some(&*target.to_string_lossy())).map(str::to_owned)
}

/// Loop devices currently backed by `image`.
fn loop_devices_of(image: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/block").unwrap().flatten() {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(file) = fs::read_to_string(&backing)
            && file.trim() == image.to_string_lossy()
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

fn assert_no_loop_device(image: &Path) {
    let detached = wait_for(Duration::from_secs(10), || loop_devices_of(image).is_empty().then_some(()));
    assert!(
        detached.is_some(),
        "loop device still attached to {}: {:?}",
        image.display(),
        loop_devices_of(image)
    );
}

fn assert_refused(out: &Output, target: &Path) {
    assert_eq!(out.status.code(), Some(77), "expected a refusal: {}", text(out));
    assert!(mountinfo_line(target).is_none(), "{} was mounted", target.display());
}

#[test]
fn an_image_mounts_read_only_nosuid_nodev_noexec_and_unmounts() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-ok");
    let image = ext4_image(p, &project.root, p.user.uid);
    let target = project.target();

    let out = mount_loop(p, &image, &target, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let line = mountinfo_line(&target).expect("mounted");
    for option in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(line.split(' ').nth(5).unwrap().split(',').any(|o| o == option), "{option} missing: {line}");
    }
    assert_eq!(fs::read_to_string(target.join("hello.txt")).unwrap(), "hello from the image\n");
    // Writes fail with EROFS, even for root.
    let err = fs::write(target.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // noexec: neither the script nor the setuid-root program runs (so it cannot gain root).
    for program in ["run.sh", "suid-id"] {
        let err = p.as_user(&target.join(program)).output().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{program}");
    }
    // nodev: the device node inside cannot be opened, even by root.
    let err = fs::File::open(target.join("null")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));

    let out = unmount_loop(p, &target);
    assert!(out.status.success(), "{}", text(&out));
    assert!(mountinfo_line(&target).is_none());
    assert_no_loop_device(&image);
}

#[test]
fn read_write_is_only_on_request_and_keeps_nosuid_nodev_noexec() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-rw");
    let image = ext4_image(p, &project.root, p.user.uid);
    let target = project.target();
    let out = mount_loop(p, &image, &target, &["--read-write"]);
    assert!(out.status.success(), "{}", text(&out));
    let line = mountinfo_line(&target).unwrap();
    let options: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(options.contains(&"rw") && options.contains(&"nosuid") && options.contains(&"noexec"), "{line}");
    fs::write(target.join("written"), "x").unwrap();
    assert!(unmount_loop(p, &target).status.success());
    assert_no_loop_device(&image);
}

#[test]
fn an_image_owned_by_someone_else_is_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-other-image");
    for uid in [0, p.other_user.uid] {
        let image = ext4_image(p, &project.root, uid);
        let out = mount_loop(p, &image, &project.target(), &[]);
        assert_refused(&out, &project.target());
        assert_no_loop_device(&image);
    }
}

#[test]
fn an_image_behind_a_symlink_is_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-image-link");
    let image = ext4_image(p, &project.root, p.user.uid);
    let link = project.root.join("link.ext4");
    symlink(&image, &link).unwrap();
    assert_refused(&mount_loop(p, &link, &project.target(), &[]), &project.target());
    assert_no_loop_device(&image);
}

#[test]
fn a_device_or_fifo_as_image_is_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-special");
    let fifo = project.root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let device = project.root.join("disk");
    // A caller-owned node for the host's first loop device: would expose whatever is on it.
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 0),
    )
    .unwrap();
    for special in [&fifo, &device] {
        chown(special, Some(p.user.uid), Some(p.user.gid)).unwrap();
        let out = mount_loop(p, special, &project.target(), &[]);
        assert_refused(&out, &project.target());
        assert!(text(&out).contains("regular file"), "{}", text(&out));
    }
}

#[test]
fn targets_outside_dot_locald_mounts_or_through_symlinks_are_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-targets");
    let image = ext4_image(p, &project.root, p.user.uid);
    let elsewhere = project.root.join(".locald/elsewhere");
    let plain = project.root.join("plain");
    for dir in [&elsewhere, &plain] {
        fs::create_dir(dir).unwrap();
        chown(dir, Some(p.user.uid), Some(p.user.gid)).unwrap();
        assert_refused(&mount_loop(p, &image, dir, &[]), dir);
    }
    // A symlink at the target pointing at a root-owned directory.
    let victim = p.scratch_dir("mount-victim");
    let link = project.root.join(".locald/mounts/link");
    symlink(&victim, &link).unwrap();
    let out = mount_loop(p, &image, &link, &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(mountinfo_line(&victim).is_none(), "mounted over the symlink's target");
    // `mounts` itself a symlink to a directory the user owns elsewhere.
    let other_project = Project::new(p, "mount-targets-2");
    fs::remove_dir_all(other_project.root.join(".locald/mounts")).unwrap();
    symlink(project.root.join(".locald/mounts"), other_project.root.join(".locald/mounts")).unwrap();
    let out = mount_loop(p, &image, &other_project.target(), &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(mountinfo_line(&project.target()).is_none());
    assert_no_loop_device(&image);
}

#[test]
fn a_non_empty_target_and_a_foreign_fstype_are_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-nonempty");
    let image = ext4_image(p, &project.root, p.user.uid);
    fs::write(project.target().join("hidden-by-a-mount"), "x").unwrap();
    assert_refused(&mount_loop(p, &image, &project.target(), &[]), &project.target());
    fs::remove_file(project.target().join("hidden-by-a-mount")).unwrap();
    for fstype in ["tmpfs", "proc", "nfs", "fuse.sshfs"] {
        assert_refused(&mount_loop(p, &image, &project.target(), &["--fstype", fstype]), &project.target());
    }
    assert_no_loop_device(&image);
}

#[test]
fn a_corrupt_image_leaves_no_loop_device_and_no_mount() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-corrupt");
    let image = project.root.join("corrupt.ext4");
    fs::write(&image, vec![0x5a; 4 << 20]).unwrap();
    chown(&image, Some(p.user.uid), Some(p.user.gid)).unwrap();
    let out = mount_loop(p, &image, &project.target(), &[]);
    assert_eq!(out.status.code(), Some(71), "an OS error: {}", text(&out));
    assert!(mountinfo_line(&project.target()).is_none());
    assert_no_loop_device(&image);
}

#[test]
fn unmounting_a_mount_locald_did_not_make_is_refused() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-foreign");
    let target = project.target();
    mount(Some("tmpfs"), &target, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
    let out = unmount_loop(p, &target);
    let still = mountinfo_line(&target).is_some();
    umount(&target).unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(still, "the foreign mount was removed");
    // Nor can a plain directory be "unmounted".
    assert_eq!(unmount_loop(p, &target).status.code(), Some(77));
}

/// Issue 17 finding 8: unmount-loop judged the mountinfo line whose path string matched the
/// target but unmounted whatever was on top there. A foreign mount (older, so listed first)
/// moved onto the caller's loop mount shares its path string; the caller's request must not
/// unmount it.
#[test]
fn a_foreign_mount_stacked_with_the_same_path_string_is_not_unmounted() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-stacked");
    let image = ext4_image(p, &project.root, p.user.uid);
    let target = project.target();
    // The foreign mount is made first; its parent is private, as a move needs.
    let stage = p.scratch_dir("mount-stacked-stage");
    mount(Some("tmpfs"), &stage, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
    mount(None::<&str>, &stage, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).unwrap();
    let foreign = stage.join("foreign");
    fs::create_dir(&foreign).unwrap();
    mount(Some("tmpfs"), &foreign, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
    fs::write(foreign.join("precious"), "keep me").unwrap();
    let out = mount_loop(p, &image, &target, &[]);
    assert!(out.status.success(), "{}", text(&out));
    mount(Some(&foreign), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let shared_string = info.lines().filter(|l| l.split(' ').nth(4) == Some(&*target.to_string_lossy()));
    assert_eq!(shared_string.count(), 2, "both mounts show the target's path: {info}");

    let out = unmount_loop(p, &target);
    let foreign_still = fs::read_to_string(target.join("precious")).ok();
    // Undo: the foreign mount (if still there), the loop mount, the stage.
    let _ = umount(&target);
    let _ = umount(&target);
    umount(&stage).unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert_eq!(foreign_still.as_deref(), Some("keep me"), "the foreign mount was unmounted");
    assert_no_loop_device(&image);
}

#[test]
fn locald_mount_and_unmount_work_in_a_project() {
    let Some(p) = privileged() else { return };
    let project = p.user_dir("mount-cli");
    fs::write(project.join("locald.toml"), "[project]\nname = \"m\"\n").unwrap();
    let image = ext4_image(p, &project, p.user.uid);
    let locald = p.bin("locald");
    let out = p
        .as_user(&locald)
        .current_dir(&project)
        .arg("mount")
        .arg(&image)
        .env("LOCALD_SHIM", p.shim())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let target = project.join(".locald/mounts/image");
    assert_eq!(fs::read_to_string(target.join("hello.txt")).unwrap(), "hello from the image\n");
    let out = p
        .as_user(&locald)
        .current_dir(&project)
        .args(["unmount", "image"])
        .env("LOCALD_SHIM", p.shim())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.exists());
    assert_no_loop_device(&image);
}

/// `/proc/fs/ext4/<loopN>/options` of the ext4 mount at `target`: what the kernel applies.
fn ext4_options(target: &Path) -> String {
    let line = mountinfo_line(target).expect("mounted");
    let after = line.split(" - ").nth(1).expect("mountinfo separator");
    let source = after.split(' ').nth(1).expect("mount source");
    let device = source.strip_prefix("/dev/").expect("a /dev/loop source");
    fs::read_to_string(format!("/proc/fs/ext4/{device}/options")).unwrap()
}

fn tune2fs(image: &Path, args: &[&str]) {
    let out = Command::new("tune2fs").args(args).arg(image).output().expect("tune2fs (e2fsprogs)");
    assert!(out.status.success(), "tune2fs {args:?}: {}", text(&out));
}

/// Finding 3 of issue 17: the image's superblock chose `errors=panic` (both ways it can: the
/// error behaviour and the stored mount options), so any ext4 error on the loop mount panicked the
/// machine. The shim's explicit `errors=remount-ro` wins, read-only and read-write.
#[test]
fn an_images_errors_panic_is_overridden_read_only_and_read_write() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-errors-panic");
    let image = ext4_image(p, &project.root, p.user.uid);
    tune2fs(&image, &["-e", "panic"]);
    tune2fs(&image, &["-E", "mount_opts=errors=panic"]);
    let header = Command::new("dumpe2fs").arg("-h").arg(&image).output().unwrap();
    let header = String::from_utf8_lossy(&header.stdout).into_owned();
    assert!(header.contains("Errors behavior:          Panic"), "the image asks for a panic:\n{header}");
    assert!(header.contains("errors=panic"), "and stores it as a mount option:\n{header}");

    let target = project.target();
    for extra in [&[][..], &["--read-write"][..]] {
        let out = mount_loop(p, &image, &target, extra);
        assert!(out.status.success(), "{extra:?}: {}", text(&out));
        let options = ext4_options(&target);
        let unmounted = unmount_loop(p, &target);
        assert!(unmounted.status.success(), "{}", text(&unmounted));
        assert!(options.lines().any(|o| o == "errors=remount-ro"), "{extra:?}: {options}");
        assert!(!options.contains("panic"), "{extra:?}: the image's errors=panic applies:\n{options}");
        assert_no_loop_device(&image);
    }
}

/// The fstypes locald has no use for are refused before any loop device exists; an ext2 image
/// still mounts, through the ext4 driver (and so with the ext4 error override).
#[test]
fn ext2_ext3_and_vfat_are_refused_and_an_ext2_image_mounts_as_ext4() {
    let Some(p) = privileged() else { return };
    let project = Project::new(p, "mount-narrowed-fstypes");
    let content = project.root.join("content-ext2");
    fs::create_dir(&content).unwrap();
    fs::write(content.join("hello.txt"), "ext2\n").unwrap();
    let image = project.root.join("old.ext2");
    let out = Command::new("mkfs.ext2")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("4M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext2: {}", text(&out));
    chown(&image, Some(p.user.uid), Some(p.user.gid)).unwrap();
    tune2fs(&image, &["-e", "panic"]);
    let target = project.target();
    for fstype in ["ext2", "ext3", "vfat"] {
        let out = mount_loop(p, &image, &target, &["--fstype", fstype]);
        assert_refused(&out, &target);
        assert!(text(&out).contains("is not one of ext4, squashfs, erofs"), "{}", text(&out));
        assert!(loop_devices_of(&image).is_empty(), "{fstype}: a loop device was attached");
    }
    let out = mount_loop(p, &image, &target, &["--fstype", "ext4"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(target.join("hello.txt")).unwrap(), "ext2\n");
    let options = ext4_options(&target);
    assert!(unmount_loop(p, &target).status.success());
    assert!(options.lines().any(|o| o == "errors=remount-ro"), "{options}");
    assert_no_loop_device(&image);
}
