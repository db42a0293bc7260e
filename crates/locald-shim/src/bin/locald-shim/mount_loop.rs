//! `admin mount-loop` and `admin unmount-loop`: a caller-owned image, mounted with
//! `nosuid,nodev,noexec` (and `ro` unless asked) onto an empty directory in the caller's
//! `<project>/.locald/mounts/`, reached through fds so a renamed path cannot redirect it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::mountinfo::{self, MountEntry};
use locald_shim_protocol::protocol::{MountLoopRequest, UnmountLoopRequest};
use locald_shim_protocol::validate::{
    Anchored, MOUNTS_DIR, absolute_components, join, loop_fstype, loop_mount_data, mount_target,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;

use crate::loopdev::LoopDevice;
use crate::privilege::{Caller, Root};
use crate::userpath::{AsCaller, is_regular, open_as_caller, open_child_dir, own, require_owned_dir, stat};

pub fn mount_loop(root: Root, request: &MountLoopRequest) -> Result<(), ShimError> {
    loop_fstype(&request.fstype)?;
    let image_path = absolute_components(&request.image)?;
    let plan = mount_target(&request.target)?;
    let caller = root.caller();

    let access = if request.read_write { OFlag::O_RDWR } else { OFlag::O_RDONLY };
    let image = open_as_caller(caller, &image_path, access | OFlag::O_NONBLOCK)?;
    let st = stat(&image)?;
    if !is_regular(&st) || st.st_uid != caller.uid.as_raw() {
        return Err(ShimError::refused(format!(
            "{} must be a regular file owned by uid {}",
            request.image.display(),
            caller.uid
        )));
    }

    let mounts = open_mounts_dir(caller, &plan)?;
    let target = {
        let _identity = AsCaller::enter(caller);
        match open_child_dir(mounts.as_raw_fd(), &plan.rest[1]) {
            Ok(fd) => fd,
            Err(Errno::EXDEV) => {
                return Err(ShimError::refused(format!(
                    "{} is already a mount point",
                    request.target.display()
                )));
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(ShimError::refused(format!(
                    "{} is a symlink or not a directory",
                    request.target.display()
                )));
            }
            Err(e) => return Err(ShimError::os(&request.target.display().to_string(), e)),
        }
    };
    require_owned_dir(&target, caller, &[plan.anchor.clone(), plan.rest.clone()].concat())?;
    if !is_empty(&target)? {
        return Err(ShimError::refused(format!("{} is not empty", request.target.display())));
    }

    let device = LoopDevice::attach(&image, !request.read_write)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !request.read_write {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = loop_mount_data(&request.fstype);
    // The magic link names exactly the directory we checked, whatever happens to its path.
    let onto = format!("/proc/self/fd/{}", target.as_raw_fd());
    if let Err(e) =
        mount(Some(device.path.as_str()), onto.as_str(), Some(request.fstype.as_str()), flags, data)
    {
        device.detach();
        return Err(ShimError::os(
            &format!(
                "mount {} ({}) on {}",
                request.image.display(),
                request.fstype,
                request.target.display()
            ),
            e,
        ));
    }
    // Dropping our fd leaves the mount as the device's only user; autoclear detaches it on unmount.
    drop(device);
    Ok(())
}

pub fn unmount_loop(root: Root, request: &UnmountLoopRequest) -> Result<(), ShimError> {
    let plan = mount_target(&request.target)?;
    let caller = root.caller();
    let mounts = open_mounts_dir(caller, &plan)?;
    let shown = request.target.display();
    // Opening the name lands on the root of the topmost mount there, which is what umount2 on
    // that name acts on: that mount is the one judged, by its id, whatever any path string says.
    let target = {
        let _identity = AsCaller::enter(caller);
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(Some(mounts.as_raw_fd()), plan.rest[1].as_os_str(), flags, Mode::empty()).map(own).map_err(
            |e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    ShimError::refused(format!("{shown} is a symlink or not a directory"))
                }
                other => ShimError::os(&shown.to_string(), other),
            },
        )?
    };
    let (parent_id, target_id) = (mount_id(&mounts)?, mount_id(&target)?);
    if target_id == parent_id {
        return Err(ShimError::refused(format!("{shown} is not a mount point")));
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| ShimError::os("read mountinfo", e))?;
    // Mounted directly on the caller's directory (not stacked on another mount), the whole
    // filesystem, and made the way mount-loop makes them.
    match mount_by_id(&mountinfo, target_id) {
        Some(entry) if entry.parent_id == parent_id && entry.root == "/" && is_locald_loop_mount(&entry) => {}
        _ => {
            return Err(ShimError::refused(format!(
                "{shown} is not a loop mount made by locald (nosuid,nodev,noexec on /dev/loop*, \
                 directly on the caller's directory)"
            )));
        }
    }
    // Our fd would keep the mount busy. Unmounting the same name in the same directory meets the
    // same topmost mount: a mount point cannot be renamed or removed, and only root could mount
    // or stack anything there meanwhile (mount-loop refuses a target that is a mount point).
    drop(target);
    nix::unistd::fchdir(mounts.as_raw_fd()).map_err(|e| ShimError::os("fchdir", e))?;
    let result = umount2(plan.rest[1].as_os_str(), MntFlags::UMOUNT_NOFOLLOW);
    let _ = nix::unistd::chdir("/");
    result.map_err(|e| ShimError::os(&format!("unmount {shown}"), e))
}

/// The id of the mount `fd` is on, as `/proc/self/mountinfo` numbers it.
fn mount_id(fd: &OwnedFd) -> Result<u64, ShimError> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| ShimError::os("read fdinfo", e))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ShimError::os("read fdinfo", "no mnt_id"))
}

/// `<project>/.locald` and its `mounts/`, both real directories owned by the caller.
fn open_mounts_dir(caller: Caller, plan: &Anchored) -> Result<OwnedFd, ShimError> {
    let locald = open_as_caller(caller, &plan.anchor, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    require_owned_dir(&locald, caller, &plan.anchor)?;
    let mounts_shown: Vec<OsString> = [plan.anchor.clone(), vec![MOUNTS_DIR.into()]].concat();
    let mounts = {
        let _identity = AsCaller::enter(caller);
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(Some(locald.as_raw_fd()), MOUNTS_DIR, flags, Mode::empty()).map(own).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                ShimError::refused(format!("{} is a symlink or not a directory", join(&mounts_shown)))
            }
            other => ShimError::os(&join(&mounts_shown), other),
        })?
    };
    require_owned_dir(&mounts, caller, &mounts_shown)?;
    Ok(mounts)
}

fn is_empty(dir: &OwnedFd) -> Result<bool, ShimError> {
    let dup = dir.try_clone().map_err(|e| ShimError::os("dup", e))?;
    let mut listing = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dup))
        .map_err(|e| ShimError::os("fdopendir", e))?;
    for entry in listing.iter() {
        let entry = entry.map_err(|e| ShimError::os("readdir", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Made the way mount-loop makes them: a loop device, nosuid, nodev, noexec.
fn is_locald_loop_mount(entry: &MountEntry) -> bool {
    entry.source.starts_with("/dev/loop")
        && entry.has_option("nosuid")
        && entry.has_option("nodev")
        && entry.has_option("noexec")
}

/// The mount with id `id` in a `/proc/self/mountinfo` text.
fn mount_by_id(text: &str, id: u64) -> Option<MountEntry> {
    mountinfo::entries(text).find(|entry| entry.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 7:0 / /home/u/p/.locald/mounts/data ro,nosuid,nodev,noexec,relatime shared:2 - ext4 /dev/loop0 ro
41 22 0:50 / /home/u/p/.locald/mounts/tmp rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
42 22 7:1 /sub\\040dir /home/u/p/.locald/mounts/with\\040space ro,nosuid,nodev,noexec - ext4 /dev/loop1 ro
";

    #[test]
    fn finds_the_loop_mount_by_id_and_recognises_it() {
        let entry = mount_by_id(INFO, 40).unwrap();
        assert_eq!((entry.parent_id, entry.root.as_str(), entry.source.as_str()), (22, "/", "/dev/loop0"));
        assert!(is_locald_loop_mount(&entry));
    }

    #[test]
    fn other_mounts_are_not_locald_loop_mounts() {
        assert!(!is_locald_loop_mount(&mount_by_id(INFO, 41).unwrap()));
        assert!(mount_by_id(INFO, 99).is_none());
    }

    #[test]
    fn escaped_fields_are_unescaped() {
        let entry = mount_by_id(INFO, 42).unwrap();
        assert!(is_locald_loop_mount(&entry));
        assert_eq!(entry.root, "/sub dir");
    }
}
