//! Idmapped volumes (issue 20): a bind mount may carry `uidMappings`/`gidMappings` of exactly one
//! form, `[{containerID: C, hostID: <caller's uid>, size: 1}]` (and the same with the caller's
//! gid), where C is a container id from 1 on that the container's own map sends into the caller's
//! allocation. The shim then mounts the volume so that the container's id C sees the caller's
//! files as its own and writes new files as the caller: whatever the image's user writes stays
//! the caller's on the host. Nothing else is accepted: another host id would make the caller's
//! writes land as someone else (root, another user), a size above one or several entries would
//! show more of the host's ids than the caller's own, and container id 0 is the caller already.

use oci_spec::runtime::{LinuxIdMapping, Mount};

use crate::ShimError;

/// One volume to mount idmapped: on the host, `kernel_uid` (the host id of container uid C, one
/// of the caller's subordinate ids) is shown as the caller's files, and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idmap {
    /// The id the container's processes write with, as the kernel knows it (in the initial
    /// namespace): the `inside` of the mount's user namespace map.
    pub kernel_uid: u32,
    pub kernel_gid: u32,
    /// The caller's ids, which files on the host have: the `outside`.
    pub host_uid: u32,
    pub host_gid: u32,
}

fn refuse<T>(why: String) -> Result<T, ShimError> {
    Err(ShimError::refused(format!("bundle refused: {why}")))
}

/// The idmap `mount` asks for, checked against the caller's `uid`/`gid` and the container's
/// (already checked) maps; `None` for a mount without mapping fields.
pub fn check(
    mount: &Mount,
    is_bind: bool,
    (uid, gid): (u32, u32),
    uid_map: &[LinuxIdMapping],
    gid_map: &[LinuxIdMapping],
) -> Result<Option<Idmap>, ShimError> {
    let at = mount.destination().display();
    let (uids, gids) = (mount.uid_mappings().as_deref(), mount.gid_mappings().as_deref());
    if uids.is_none() && gids.is_none() {
        return Ok(None);
    }
    if !is_bind {
        return refuse(format!("mount at {at}: id mappings are only for bind mounts"));
    }
    let (Some(uids), Some(gids)) = (uids, gids) else {
        return refuse(format!("mount at {at}: uidMappings and gidMappings come together"));
    };
    let kernel_uid = one("uid", &at.to_string(), uids, uid, uid_map)?;
    let kernel_gid = one("gid", &at.to_string(), gids, gid, gid_map)?;
    Ok(Some(Idmap { kernel_uid, kernel_gid, host_uid: uid, host_gid: gid }))
}

/// The single entry `C → own, size 1`, C ≥ 1 mapped by `map`; the host id of C.
fn one(
    what: &str,
    at: &str,
    entries: &[LinuxIdMapping],
    own: u32,
    map: &[LinuxIdMapping],
) -> Result<u32, ShimError> {
    let [entry] = entries else {
        return refuse(format!(
            "mount at {at}: {what} mappings must be one entry (the container's user onto you)"
        ));
    };
    if entry.size() != 1 {
        return refuse(format!("mount at {at}: {what} mapping of size {} (only size 1)", entry.size()));
    }
    if entry.host_id() != own {
        return refuse(format!(
            "mount at {at}: {what} mapping onto host id {} (only onto your own, {own})",
            entry.host_id()
        ));
    }
    let inside = entry.container_id();
    if inside == 0 {
        return refuse(format!("mount at {at}: {what} mapping of container id 0 (that is you already)"));
    }
    translate(inside, map).filter(|&host| host != own).map_or_else(
        || {
            refuse(format!(
                "mount at {at}: container {what} {inside} is not one of your subordinate ids in the container"
            ))
        },
        Ok,
    )
}

/// Container id → host id through `map`.
pub fn translate(id: u32, map: &[LinuxIdMapping]) -> Option<u32> {
    map.iter().find_map(|m| {
        let offset = id.checked_sub(m.container_id())?;
        (offset < m.size()).then(|| m.host_id().checked_add(offset)).flatten()
    })
}
