//! Where a container's cgroups go: strictly below its caller's own cgroup in every hierarchy, so
//! whatever limits the caller is under (systemd's `TasksMax`/`MemoryMax` on `user-<uid>.slice`,
//! an admin's `pids.max`) hold for the container too. The shim derives the place from its own
//! `/proc/self/cgroup` (it is the caller's child and starts in the caller's cgroups) and
//! `/proc/self/mountinfo`, never from anything the caller wrote.
//!
//! This module is the pure part (parsing and path rules); the shim binary reads the files, checks
//! ownership and builds the private view of the hierarchies libcontainer works in.

use std::path::{Component, Path, PathBuf};

use crate::{ShimError, mountinfo};

/// The container's cgroup relative to the caller's: `locald/<uid>/<id>`. The uid keeps two
/// callers that share a cgroup (everyone is in `/` of an unused v1 hierarchy) apart.
pub fn container_leaf(uid: u32, id: &str) -> String {
    format!("locald/{uid}/{id}")
}

/// One line of `/proc/self/cgroup`: `<id>:<controllers>:<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy: u32,
    /// Empty for the v2 hierarchy; `name=systemd` for a named v1 one.
    pub controllers: Vec<String>,
    pub path: String,
}

/// One cgroup filesystem from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub point: PathBuf,
    /// The cgroup this mount shows at `point` (`/` unless a subtree was bind-mounted).
    pub root: String,
    pub v2: bool,
    pub options: Vec<String>,
}

/// A hierarchy as the caller sits in it: the mount point, and the caller's cgroup directory
/// below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub point: PathBuf,
    pub caller: PathBuf,
}

fn malformed(what: &str, line: &str) -> ShimError {
    ShimError::refused(format!("cannot place the container's cgroup: malformed {what} line {line:?}"))
}

pub fn parse_memberships(text: &str) -> Result<Vec<Membership>, ShimError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(malformed("/proc/self/cgroup", line));
            };
            let hierarchy = id.parse().map_err(|_| malformed("/proc/self/cgroup", line))?;
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Ok(Membership { hierarchy, controllers, path: checked_cgroup_path(path)?.to_owned() })
        })
        .collect()
}

pub fn parse_cgroup_mounts(text: &str) -> Result<Vec<CgroupMount>, ShimError> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let Some(entry) = mountinfo::parse_line(line) else { return Err(malformed("mountinfo", line)) };
        if entry.fstype != "cgroup" && entry.fstype != "cgroup2" {
            continue;
        }
        checked_cgroup_path(&entry.root)?;
        mounts.push(CgroupMount {
            point: entry.point,
            root: entry.root,
            v2: entry.fstype == "cgroup2",
            options: entry.super_options,
        });
    }
    Ok(mounts)
}

/// An absolute cgroup path of plain names only: no `..` or `.` that could climb out of the
/// hierarchy or the caller's subtree once joined.
pub fn checked_cgroup_path(path: &str) -> Result<&str, ShimError> {
    // Split by hand: Path::components would quietly drop a `.` or a doubled `/`.
    let plain = path == "/"
        || path
            .strip_prefix('/')
            .is_some_and(|rest| rest.split('/').all(|name| !matches!(name, "" | "." | "..")));
    if plain && !path.contains('\0') {
        Ok(path)
    } else {
        Err(ShimError::refused(format!(
            "cannot place the container's cgroup: {path:?} is not a plain cgroup path"
        )))
    }
}

/// Pairs every cgroup mount with the caller's membership in its hierarchy. A mount that cannot
/// be paired, or that does not show the caller's cgroup, is refused: libcontainer would use it
/// at its root, outside the caller's cgroup.
pub fn hierarchies(memberships: &[Membership], mounts: &[CgroupMount]) -> Result<Vec<Hierarchy>, ShimError> {
    let mut out = Vec::new();
    for mount in mounts {
        let member = memberships.iter().find(|m| {
            if mount.v2 {
                m.hierarchy == 0 && m.controllers.is_empty()
            } else {
                !m.controllers.is_empty() && m.controllers.iter().all(|c| mount.options.contains(c))
            }
        });
        let Some(member) = member else {
            return Err(ShimError::refused(format!(
                "cannot place the container's cgroup: no membership for the cgroup mount {}",
                mount.point.display()
            )));
        };
        let below = if mount.root == "/" {
            Some(member.path.trim_start_matches('/'))
        } else {
            member
                .path
                .strip_prefix(&mount.root)
                .and_then(|rest| rest.strip_prefix('/').or((rest.is_empty()).then_some("")))
        };
        let Some(below) = below else {
            return Err(ShimError::refused(format!(
                "cannot place the container's cgroup: {} does not show the caller's cgroup {}",
                mount.point.display(),
                member.path
            )));
        };
        let caller = if below.is_empty() { mount.point.clone() } else { mount.point.join(below) };
        out.push(Hierarchy { point: mount.point.clone(), caller });
    }
    Ok(out)
}

/// The cgroup the caller is confined to in one hierarchy: their own, or, where it lies in a
/// subtree delegated to them (`owned_by_caller` of a directory: it and its `cgroup.procs` are the
/// caller's), the top of that subtree, since they could move their processes anywhere in it
/// themselves. On cgroup v2 this is what lets a container's own limits work: the caller's own
/// cgroup holds processes, so it cannot enable controllers for a child ("no internal processes"),
/// while a delegated subtree's top usually holds none.
pub fn confining_cgroup(hierarchy: &Hierarchy, owned_by_caller: impl Fn(&Path) -> bool) -> PathBuf {
    let mut dir = hierarchy.caller.clone();
    while dir != hierarchy.point {
        match dir.parent() {
            Some(parent) if parent.starts_with(&hierarchy.point) && owned_by_caller(parent) => {
                dir = parent.to_owned()
            }
            _ => break,
        }
    }
    dir
}

/// `<base>/locald/<uid>/<id>`, checked to lie strictly below `base`.
pub fn container_dir(base: &Path, uid: u32, id: &str) -> Result<PathBuf, ShimError> {
    crate::bundle_policy::container_id(id)?;
    let dir = base.join(container_leaf(uid, id));
    let strictly_below = dir.strip_prefix(base).is_ok_and(|rest| {
        rest.components().count() == 3 && rest.components().all(|c| matches!(c, Component::Normal(_)))
    });
    if strictly_below {
        Ok(dir)
    } else {
        Err(ShimError::refused(format!("cannot place the container's cgroup below {}", base.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "\
9:name=systemd:/user.slice/user-1000.slice/session-2.scope
8:pids:/user.slice/user-1000.slice/session-2.scope
4:memory:/process_api/1f64
2:cpu,cpuacct:/user.slice
0::/user.slice/user-1000.slice/session-2.scope
";

    const HYBRID_MOUNTS: &str = "\
25 20 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 22 0:5 / /proc rw - proc proc rw
";

    fn hybrid() -> Vec<Hierarchy> {
        hierarchies(&parse_memberships(HYBRID_CGROUP).unwrap(), &parse_cgroup_mounts(HYBRID_MOUNTS).unwrap())
            .unwrap()
    }

    #[test]
    fn every_hierarchy_nests_below_the_callers_own_cgroup_in_it() {
        let found: Vec<(String, String)> = hybrid()
            .iter()
            .map(|h| {
                let dir = container_dir(&confining_cgroup(h, |_| false), 1000, "web-1").unwrap();
                (h.point.display().to_string(), dir.display().to_string())
            })
            .collect();
        let session = "user.slice/user-1000.slice/session-2.scope";
        assert_eq!(
            found,
            [
                (
                    "/sys/fs/cgroup/unified".into(),
                    format!("/sys/fs/cgroup/unified/{session}/locald/1000/web-1")
                ),
                (
                    "/sys/fs/cgroup/systemd".into(),
                    format!("/sys/fs/cgroup/systemd/{session}/locald/1000/web-1")
                ),
                ("/sys/fs/cgroup/pids".into(), format!("/sys/fs/cgroup/pids/{session}/locald/1000/web-1")),
                (
                    "/sys/fs/cgroup/memory".into(),
                    "/sys/fs/cgroup/memory/process_api/1f64/locald/1000/web-1".into()
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct".into(),
                    "/sys/fs/cgroup/cpu,cpuacct/user.slice/locald/1000/web-1".into()
                ),
            ]
        );
    }

    #[test]
    fn a_caller_in_the_root_cgroup_gets_the_old_layout() {
        let mounts = parse_cgroup_mounts("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").unwrap();
        let h = hierarchies(&parse_memberships("0::/\n").unwrap(), &mounts).unwrap();
        assert_eq!(
            container_dir(&confining_cgroup(&h[0], |_| true), 1000, "limits").unwrap(),
            Path::new("/sys/fs/cgroup/locald/1000/limits")
        );
    }

    #[test]
    fn a_delegated_subtree_is_climbed_to_its_top_and_no_further() {
        let mounts = parse_cgroup_mounts("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").unwrap();
        let member = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/locald.service\n";
        let h = hierarchies(&parse_memberships(member).unwrap(), &mounts).unwrap();
        let delegated = Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service");
        let base = confining_cgroup(&h[0], |dir| dir.starts_with(delegated));
        assert_eq!(base, delegated);
        // Nothing owned: the caller's own cgroup.
        assert_eq!(confining_cgroup(&h[0], |_| false), h[0].caller);
        // A root-owned cgroup between the caller and a caller-owned one stops the climb.
        let gap = confining_cgroup(&h[0], |dir| dir.starts_with(delegated) && !dir.ends_with("app.slice"));
        assert_eq!(gap, h[0].caller);
    }

    #[test]
    fn a_mount_of_a_subtree_maps_the_callers_path_into_it() {
        let mounts =
            parse_cgroup_mounts("30 1 0:26 /outer /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").unwrap();
        let h = hierarchies(&parse_memberships("0::/outer/me\n").unwrap(), &mounts).unwrap();
        assert_eq!(h[0].caller, Path::new("/sys/fs/cgroup/me"));
        let err = hierarchies(&parse_memberships("0::/outerx/me\n").unwrap(), &mounts).unwrap_err();
        assert!(err.message.contains("does not show"), "{}", err.message);
    }

    #[test]
    fn weird_inputs_are_refused() {
        for line in ["0::/a/../..", "0::/a/./b", "0::relative", "0::", "0:://a", "x::/a", "0:/a"] {
            assert!(parse_memberships(line).is_err(), "{line:?} was accepted");
        }
        let mounts = "30 1 0:26 /../x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(parse_cgroup_mounts(mounts).is_err());
        // A v1 mount with no membership for its controllers: libcontainer would use its root.
        let mounts =
            parse_cgroup_mounts("28 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n").unwrap();
        assert!(hierarchies(&parse_memberships("4:memory:/a\n").unwrap(), &mounts).is_err());
        for id in ["..", "a/b", "", "a/../.."] {
            assert!(container_dir(Path::new("/sys/fs/cgroup/me"), 1000, id).is_err(), "{id:?} was accepted");
        }
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        let mounts = parse_cgroup_mounts("30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n").unwrap();
        assert_eq!(mounts[0].point, Path::new("/mnt/my cg"));
    }
}
