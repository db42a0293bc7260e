//! The container's cgroups, below its caller's in every hierarchy (see
//! `locald_shim_protocol::cgroup_placement`).
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

use locald_shim_protocol::ShimError;
use locald_shim_protocol::cgroup_placement::{self, Hierarchy};
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

/// On a unified (v2-only) host, inside the view: makes `/locald/<uid>/<id>` before libcontainer
/// does, which then only attaches to it. libcontainer would write `+<every controller>` into the
/// `cgroup.subtree_control` of each cgroup on the way, the caller's own included: where that
/// holds processes, the threaded controllers (pids, cpu, cpuset) get enabled anyway, which makes
/// it a thread root and every domain cgroup below it unusable (EOPNOTSUPP on attach). So
/// controllers are enabled only from a caller cgroup without processes of its own (the root
/// cgroup, the top of a delegated subtree); below one with processes the container has none of
/// its own, and the caller's limits still count all of its tasks.
pub fn prepare_unified(uid: u32, id: &str) -> Result<(), ShimError> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.subtree_control").exists() {
        return Ok(());
    }
    let leaf = spec_path(uid, id);
    let mut dir = root.to_owned();
    let busy = !fs::read_to_string(root.join("cgroup.procs")).unwrap_or_default().trim().is_empty();
    let enable = !busy || is_root_cgroup(root);
    for name in leaf.iter().skip(1) {
        if enable {
            let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            for controller in available.split_whitespace() {
                // Best effort, as libcontainer does: a limit needing a missing one fails later.
                let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
            }
        }
        dir.push(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ShimError::os(&format!("create {}", dir.display()), e)),
        }
    }
    Ok(())
}

/// The root cgroup has no `cgroup.type` and may hold processes and controllers at once.
fn is_root_cgroup(dir: &Path) -> bool {
    !dir.join("cgroup.type").exists()
}

fn owned_by(path: &Path, uid: u32) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.uid() == uid)
}

/// The spec's `cgroupsPath` inside the view: `/locald/<uid>/<id>`.
pub fn spec_path(uid: u32, id: &str) -> PathBuf {
    PathBuf::from(format!("/{}", cgroup_placement::container_leaf(uid, id)))
}
