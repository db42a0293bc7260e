//! Who a container runs as: the caller's subordinate ids (read from `/etc/subuid` and
//! `/etc/subgid` as the daemon; the shim checks them again itself) and the image's `User`,
//! resolved in the image's own `/etc/passwd` and `/etc/group`, never the host's.

use std::fs;
use std::path::Path;

pub use locald_shim_protocol::subid::Range;
use locald_shim_protocol::subid::{ranges_of, user_name};

/// The first range allocated to the caller on each side, mapped at container ids 1….
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subordinate {
    pub uids: Option<Range>,
    pub gids: Option<Range>,
}

impl Subordinate {
    /// The allocation of `uid` on this host (by name and by uid, as newuidmap looks it up).
    pub fn of_host_user(uid: u32) -> Subordinate {
        let name = fs::read_to_string("/etc/passwd").ok().and_then(|p| user_name(&p, uid));
        let first = |file: &str| {
            let contents = fs::read_to_string(file).ok()?;
            ranges_of(&contents, name.as_deref(), uid).into_iter().next()
        };
        Subordinate { uids: first("/etc/subuid"), gids: first("/etc/subgid") }
    }

    /// Whether container id `id` is mapped on the uid (`gid == false`) or gid side.
    pub fn maps(&self, id: u32, gid: bool) -> bool {
        let range = if gid { self.gids } else { self.uids };
        id == 0 || range.is_some_and(|r| id >= 1 && u64::from(id) <= u64::from(r.count))
    }
}

/// The process's identity inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The command that gives `user` an allocation, for error messages.
pub const ADD_ALLOCATION: &str = "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER";

/// Resolves an image's or a service's `user` (`name`, `uid`, `name:group`, `uid:gid`) in the
/// rootfs at `rootfs`, and checks every id is mapped by `subordinate`. Errors are one line.
pub fn resolve(rootfs: &Path, spec: &str, subordinate: &Subordinate) -> Result<ProcessUser, String> {
    resolve_in_layers(&[rootfs], spec, subordinate)
}

/// [`resolve`] in the layer directories of an overlay root (topmost first): each file is read
/// from the topmost layer that has it, and a whiteout there hides it.
pub fn resolve_in_layers(
    layers: &[&Path],
    spec: &str,
    subordinate: &Subordinate,
) -> Result<ProcessUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(format!("user {spec:?} is empty"));
    }
    let passwd = layered_file(layers, "passwd")?;
    let group = layered_file(layers, "group")?;
    // (name, uid, gid) of the user part.
    let entry = passwd.as_deref().and_then(|p| {
        p.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (uid, gid) = (f.get(2)?.parse::<u32>().ok()?, f.get(3)?.parse::<u32>().ok()?);
            (f[0] == user_part || (user_part.parse::<u32>().ok() == Some(uid)))
                .then(|| (f[0].to_owned(), uid, gid))
        })
    });
    let (name, uid, primary) = match (entry, user_part.parse::<u32>()) {
        (Some(entry), _) => (Some(entry.0), entry.1, entry.2),
        // A numeric uid needs no passwd entry; its group is then 0, as in Docker.
        (None, Ok(uid)) => (None, uid, 0),
        (None, Err(_)) => return Err(format!("user {user_part:?} is not in the image's /etc/passwd")),
    };
    let groups: Vec<(String, u32, Vec<String>)> = group
        .as_deref()
        .map(|g| {
            g.lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    let members =
                        f.get(3).map(|m| m.split(',').map(str::to_owned).collect()).unwrap_or_default();
                    Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members))
                })
                .collect()
        })
        .unwrap_or_default();
    let gid = match group_part {
        None => primary,
        Some(g) => match groups.iter().find(|(n, _, _)| n == g) {
            Some((_, gid, _)) => *gid,
            None => g.parse().map_err(|_| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    // Supplementary groups, as initgroups would give them (only with no explicit group).
    let mut additional_gids = Vec::new();
    if group_part.is_none()
        && let Some(name) = &name
    {
        for (_, id, members) in &groups {
            if members.iter().any(|m| m == name) && *id != gid && !additional_gids.contains(id) {
                additional_gids.push(*id);
            }
        }
    }
    if !subordinate.maps(uid, false) {
        return Err(unmapped("uid", uid, spec));
    }
    if let Some(g) = std::iter::once(&gid).chain(&additional_gids).find(|&&g| !subordinate.maps(g, true)) {
        return Err(unmapped("gid", *g, spec));
    }
    Ok(ProcessUser { uid, gid, additional_gids })
}

fn unmapped(what: &str, id: u32, spec: &str) -> String {
    format!(
        "user {spec:?} needs container {what} {id}, which is not mapped: only 0 is, without a subordinate range \
         of that size in /etc/sub{what} (add one: `{ADD_ALLOCATION}`)"
    )
}

fn layered_file(layers: &[&Path], name: &str) -> Result<Option<String>, String> {
    use std::os::unix::fs::FileTypeExt;
    for layer in layers {
        let path = layer.join("etc").join(name);
        match fs::symlink_metadata(&path) {
            // A whiteout (overlayfs' 0:0 character device, or a kept `.wh.` marker) hides it.
            Ok(meta) if meta.file_type().is_char_device() => return Ok(None),
            Ok(_) => return image_file(layer, name),
            Err(_) if layer.join("etc").join(format!(".wh.{name}")).exists() => return Ok(None),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// `<rootfs>/etc/<name>`, not through a symlink (it could name the host's file); `None` when
/// absent.
fn image_file(rootfs: &Path, name: &str) -> Result<Option<String>, String> {
    let etc = rootfs.join("etc");
    for path in [etc.clone(), etc.join(name)] {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{} in the image is a symlink; it is not followed", path.display()));
            }
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
    fs::read_to_string(etc.join(name)).map(Some).map_err(|e| format!("read the image's /etc/{name}: {e}"))
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
