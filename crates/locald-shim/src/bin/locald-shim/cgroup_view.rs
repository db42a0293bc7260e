//! The container's cgroups, below its caller's in every hierarchy (see
//! `locald_shim::cgroup_placement`).
//!
//! libcontainer takes one `cgroupsPath` for all hierarchies and joins it to each mount point, but
//! the caller sits at a different path in each (`pids:/user.slice/user-1000.slice/session-2.scope`,
//! `cpu:/user.slice`, ...). So the shim gives libcontainer a private view: in a mount namespace of
//! its own, each cgroup mount point shows the caller's confining cgroup, and the spec's
//! `cgroupsPath` is `/locald/<uid>/<id>` inside that view. libcontainer, the stale sweep and the
//! removal after exit then all work below the caller's cgroup and can reach nothing above it
//! (on v2 not even the ancestors' `cgroup.subtree_control`, which libcontainer writes).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use locald_shim::ShimError;
use locald_shim::cgroup_placement::{self, Hierarchy};
use nix::mount::{MsFlags, mount};

/// Where the caller's cgroups are, read once at the start of `bundle run`.
pub struct Placement {
    /// Mount point and the caller's confining cgroup under it, per cgroup mount.
    bases: Vec<(PathBuf, PathBuf)>,
}

impl Placement {
    /// Reads `/proc/self/cgroup` and `/proc/self/mountinfo`: the shim is the caller's child, so
    /// it starts in the caller's cgroups. Whatever the caller moves the shim to later changes
    /// nothing (these paths are fixed now), and it could only be a cgroup it may join anyway.
    pub fn of_caller(uid: u32) -> Result<Self, ShimError> {
        let read =
            |path: &str| fs::read_to_string(path).map_err(|e| ShimError::os(&format!("read {path}"), e));
        let memberships = cgroup_placement::parse_memberships(&read("/proc/self/cgroup")?)?;
        let mounts = cgroup_placement::parse_cgroup_mounts(&read("/proc/self/mountinfo")?)?;
        let hierarchies = cgroup_placement::hierarchies(&memberships, &mounts)?;
        let owned = |dir: &Path| owned_by(dir, uid) && owned_by(&dir.join("cgroup.procs"), uid);
        let bases = hierarchies
            .iter()
            .map(|h: &Hierarchy| (h.point.clone(), cgroup_placement::confining_cgroup(h, owned)))
            .collect();
        Ok(Self { bases })
    }

    /// Enters a mount namespace of the shim's own in which every cgroup mount point shows the
    /// caller's confining cgroup. Must run while the shim is single-threaded (unshare of the
    /// mount namespace implies CLONE_FS).
    pub fn enter(&self) -> Result<(), ShimError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| ShimError::os("unshare the shim's mount namespace", e))?;
        // Slave, so the binds below never propagate back to the host's namespace.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(|e| ShimError::os("make the shim's mounts private", e))?;
        for (point, base) in &self.bases {
            if base == point {
                continue;
            }
            mount(Some(base.as_path()), point.as_path(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| ShimError::os(&format!("show {} at {}", base.display(), point.display()), e))?;
        }
        Ok(())
    }
}

fn owned_by(path: &Path, uid: u32) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.uid() == uid)
}

/// The spec's `cgroupsPath` inside the view: `/locald/<uid>/<id>`.
pub fn spec_path(uid: u32, id: &str) -> PathBuf {
    PathBuf::from(format!("/{}", cgroup_placement::container_leaf(uid, id)))
}
