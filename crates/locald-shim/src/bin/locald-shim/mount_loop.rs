//! `admin mount-loop` and `admin unmount-loop`: a caller-owned image, mounted with
//! `nosuid,nodev,noexec` (and `ro` unless asked) onto an empty directory in the caller's
//! `<project>/.locald/mounts/`, reached through fds so a renamed path cannot redirect it.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim::ShimError;
use locald_shim::protocol::{MountLoopRequest, UnmountLoopRequest};
use locald_shim::validate::{
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
    let name = &plan.rest[1];
    match open_child_dir(mounts.as_raw_fd(), name) {
        Err(Errno::EXDEV) => {}
        _ => return Err(ShimError::refused(format!("{} is not a mount point", request.target.display()))),
    }
    let mounts_path = std::fs::read_link(format!("/proc/self/fd/{}", mounts.as_raw_fd()))
        .map_err(|e| ShimError::os("resolve the mounts directory", e))?;
    let mount_point = mounts_path.join(name);
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| ShimError::os("read mountinfo", e))?;
    match find_mount(&mountinfo, &mount_point.to_string_lossy()) {
        Some(entry) if entry.is_locald_loop_mount() => {}
        _ => {
            return Err(ShimError::refused(format!(
                "{} is not a loop mount made by locald (nosuid,nodev,noexec on /dev/loop*)",
                request.target.display()
            )));
        }
    }
    // Unmount by name relative to the checked directory, not following a final symlink.
    nix::unistd::fchdir(mounts.as_raw_fd()).map_err(|e| ShimError::os("fchdir", e))?;
    let result = umount2(name.as_os_str(), MntFlags::UMOUNT_NOFOLLOW);
    let _ = nix::unistd::chdir("/");
    result.map_err(|e| ShimError::os(&format!("unmount {}", request.target.display()), e))
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

#[derive(Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    fn is_locald_loop_mount(&self) -> bool {
        let has = |o: &str| self.options.iter().any(|x| x == o);
        self.source.starts_with("/dev/loop") && has("nosuid") && has("nodev") && has("noexec")
    }
}

/// The topmost mount at `mount_point` in a `/proc/self/mountinfo` text.
pub fn find_mount(mountinfo: &str, mount_point: &str) -> Option<MountEntry> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if unescape(fields.get(4)?) != mount_point {
            return None;
        }
        Some(MountEntry {
            options: fields.get(5)?.split(',').map(str::to_owned).collect(),
            fstype: right.first()?.to_string(),
            source: right.get(1)?.to_string(),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 7:0 / /home/u/p/.locald/mounts/data ro,nosuid,nodev,noexec,relatime shared:2 - ext4 /dev/loop0 ro
41 22 0:50 / /home/u/p/.locald/mounts/tmp rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
42 22 7:1 / /home/u/p/.locald/mounts/with\\040space ro,nosuid,nodev,noexec - ext4 /dev/loop1 ro
";

    #[test]
    fn finds_the_loop_mount_and_recognises_it() {
        let entry = find_mount(INFO, "/home/u/p/.locald/mounts/data").unwrap();
        assert_eq!(entry.source, "/dev/loop0");
        assert!(entry.is_locald_loop_mount());
    }

    #[test]
    fn other_mounts_are_not_locald_loop_mounts() {
        assert!(!find_mount(INFO, "/home/u/p/.locald/mounts/tmp").unwrap().is_locald_loop_mount());
        assert!(find_mount(INFO, "/home/u/p/.locald/mounts/none").is_none());
    }

    #[test]
    fn escaped_mount_points_match() {
        assert!(find_mount(INFO, "/home/u/p/.locald/mounts/with space").unwrap().is_locald_loop_mount());
    }
}
