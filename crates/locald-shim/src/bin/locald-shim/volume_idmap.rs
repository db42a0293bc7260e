//! Idmapped volumes (protocol 6): a bind mount whose `uidMappings`/`gidMappings` passed
//! [`locald_shim_protocol::volume_idmap::check`] is cloned (`open_tree`), given a user namespace
//! that shows the caller's files to the container's user as its own and writes that user's new
//! files as the caller (`mount_setattr(MOUNT_ATTR_IDMAP)`), and attached in the shim's private
//! mount namespace under `/run/locald/idmap/`, where libcontainer binds it from. Nothing is
//! mounted in the host's namespace; the clone goes when the shim's namespace does, and is
//! detached before its mount point is removed. libcontainer 0.7 refuses idmapped mounts itself,
//! so it only ever sees a plain bind of the prepared tree.
//!
//! A filesystem that cannot idmap (the kernel says EINVAL or EOPNOTSUPP) gets the plain bind
//! and one line on stderr, which the daemon puts in the service's log: the volume then works as
//! before, with the container user's files owned by the caller's subordinate id on the host.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use locald_shim_protocol::ShimError;
use locald_shim_protocol::validate::absolute_components;
use locald_shim_protocol::volume_idmap::{self, Idmap};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Spec};

use crate::privilege::Caller;
use crate::userns;
use crate::userpath::open_as_caller;

/// Root-owned, searchable (the container's init, in its user namespace, walks to the mount
/// point), not listable.
const POINTS: &str = "/run/locald/idmap";

// From linux/mount.h (the libc crate has the syscall numbers, not these).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The mount points in use; each is detached, then removed (never recursively), on drop.
pub struct Staged {
    points: Vec<PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for point in &self.points {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(point);
        }
    }
}

/// Prepares every idmapped bind of `spec` (checked by the policy against `uid_map`/`gid_map`)
/// and points the mount at it, without mapping fields. Runs in the shim's private mount
/// namespace ([`crate::cgroup_view::Placement::enter`]).
pub fn stage(
    spec: &mut Spec,
    caller: Caller,
    id: &str,
    uid_map: &[LinuxIdMapping],
    gid_map: &[LinuxIdMapping],
) -> Result<Staged, ShimError> {
    let mut staged = Staged { points: Vec::new() };
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let ids = (caller.uid.as_raw(), caller.gid.as_raw());
    for (index, mount) in mounts.iter_mut().enumerate() {
        // The policy refused mapping fields on anything but a bind mount.
        let Some(idmap) = volume_idmap::check(mount, true, ids, uid_map, gid_map)? else { continue };
        mount.set_uid_mappings(None);
        mount.set_gid_mappings(None);
        let source = mount.source().clone().ok_or_else(|| ShimError::refused("bind mount without source"))?;
        let point = Path::new(POINTS).join(format!("{}-{id}-{index}", ids.0));
        match attach(caller, &source, idmap, &point) {
            Ok(()) => {
                mount.set_source(Some(point.clone()));
                staged.points.push(point);
            }
            Err(Attach::Unsupported(e)) => eprintln!(
                "locald-shim: volume {}: its filesystem cannot be idmapped ({e}); files the container's user writes there belong to your subordinate uid {} on the host",
                source.display(),
                idmap.kernel_uid
            ),
            Err(Attach::Failed(e)) => return Err(e),
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(staged)
}

enum Attach {
    Unsupported(Errno),
    Failed(ShimError),
}

impl From<ShimError> for Attach {
    fn from(e: ShimError) -> Self {
        Attach::Failed(e)
    }
}

fn attach(caller: Caller, source: &Path, idmap: Idmap, point: &Path) -> Result<(), Attach> {
    // Reached as the caller, without symlinks: the tree cloned is one the caller can reach.
    let source_fd = open_as_caller(caller, &absolute_components(source)?, OFlag::O_PATH)?;
    let tree = syscall_fd("open_tree", || {
        // SAFETY: open_tree on an fd we own with an empty C string; returns a new fd or -1.
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                source_fd.as_raw_fd(),
                c"".as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
            )
        }
    })?;
    // The mount's namespace: on-disk ids (`inside`) shown to processes as (`outside`) — the
    // caller's files as the container user's host id, that id's new files as the caller's.
    let entry = |inside: u32, outside: u32| {
        LinuxIdMappingBuilder::default().container_id(inside).host_id(outside).size(1u32).build()
    };
    let (Ok(uid_entry), Ok(gid_entry)) =
        (entry(idmap.host_uid, idmap.kernel_uid), entry(idmap.host_gid, idmap.kernel_gid))
    else {
        return Err(ShimError::os("idmap", "mapping").into());
    };
    let holder = userns::Holder::create(&[uid_entry], &[gid_entry], false)?;
    let ns =
        nix::fcntl::open(&holder.path(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map(crate::fds::own)
            .map_err(|e| ShimError::os("open the volume's user namespace", e))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on fds we own, with a live, correctly sized struct mount_attr.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set != 0 {
        return match Errno::last() {
            e @ (Errno::EINVAL | Errno::EOPNOTSUPP) => Err(Attach::Unsupported(e)),
            e => Err(ShimError::os("idmap the volume", e).into()),
        };
    }
    drop(holder);
    mount_point(point)?;
    let path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())
        .map_err(|_| ShimError::os("mount point", "NUL in path"))?;
    // SAFETY: move_mount of a detached tree we own onto a path string that outlives the call.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(ShimError::os("attach the idmapped volume", Errno::last()).into());
    }
    Ok(())
}

fn syscall_fd(what: &str, call: impl FnOnce() -> libc::c_long) -> Result<OwnedFd, ShimError> {
    let fd = call();
    if fd < 0 {
        return Err(ShimError::os(what, Errno::last()));
    }
    let fd = i32::try_from(fd).map_err(|_| ShimError::os(what, "fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/run/locald/idmap` (root 0711) and an empty directory `point` in it. A point left by a
/// killed shim is an empty directory (its mount went with that shim's namespace): removed with
/// `remove_dir`, which never touches a non-empty one.
fn mount_point(point: &Path) -> Result<(), ShimError> {
    let base = Path::new(POINTS);
    match fs::DirBuilder::new().mode(0o711).create(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ShimError::os(&format!("create {POINTS}"), e)),
    }
    let meta = fs::symlink_metadata(base).map_err(|e| ShimError::os(POINTS, e))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ShimError::refused(format!("{POINTS} is not a root-owned directory")));
    }
    let _ = fs::remove_dir(point);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(point)
        .map_err(|e| ShimError::os(&format!("create {}", point.display()), e))
}
