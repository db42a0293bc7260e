//! Which OCI bundles the shim runs for a caller (DESIGN §4, RFC 0098): only those that give the
//! caller nothing they do not already have. The daemon generates bundles that pass this; the
//! shim refuses everything else before a single namespace is created.

use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Process, Spec};

use crate::ShimError;
use crate::subid::{self, Allocations};

/// `[A-Za-z0-9_.-]{1,64}`, not `.` or `..`: ids become directory names under the state root.
pub fn container_id(id: &str) -> Result<(), ShimError> {
    let ok = (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ShimError::refused(format!("container id {id:?} is not [A-Za-z0-9_.-]{{1,64}}")))
    }
}

/// The capabilities a container may hold, in every one of its five sets: the OCI default set
/// (runc's and the spec's examples) without `CAP_SETGID`. In a user namespace these are the
/// namespace's, not the host's. `CAP_SETGID` is left out because the container keeps the
/// caller's supplementary groups so that a group denying the caller denies it too (the
/// CVE-2014-8989 class), and `setgroups` inside would drop them.
pub const ALLOWED_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Mount types a container may ask for; anything else could mount a host device.
const MOUNT_TYPES: &[&str] =
    &["proc", "tmpfs", "sysfs", "mqueue", "devpts", "cgroup", "cgroup2", "bind", "none"];

/// IPC sysctls are namespaced by the container's IPC namespace; net.* would be too, but locald
/// containers share the host's network namespace.
fn namespaced_sysctl(key: &str, own_netns: bool) -> bool {
    matches!(
        key,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || key.starts_with("fs.mqueue.")
        || (own_netns && key.starts_with("net."))
}

fn refuse(why: impl Into<String>) -> Result<(), ShimError> {
    Err(ShimError::refused(format!("bundle refused: {}", why.into())))
}

/// Fields a bundle may set at all; everything else (netDevices that would move a host interface
/// into the container, `resources.unified` that would write arbitrary cgroup files such as
/// `cgroup.procs` as root, memoryPolicy, platform sections, and whatever later spec versions add)
/// is refused without needing a rule of its own.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "ociVersion",
            "process",
            "root",
            "hostname",
            "domainname",
            "mounts",
            "linux",
            "annotations",
            "hooks",
        ],
    ),
    (
        "process",
        &[
            "terminal",
            "consoleSize",
            "user",
            "args",
            "env",
            "cwd",
            "capabilities",
            "rlimits",
            "noNewPrivileges",
            "oomScoreAdj",
        ],
    ),
    (
        "linux",
        &[
            "namespaces",
            "uidMappings",
            "gidMappings",
            "cgroupsPath",
            "resources",
            "sysctl",
            "maskedPaths",
            "readonlyPaths",
            "rootfsPropagation",
            "devices",
        ],
    ),
    ("linux.resources", &["devices", "memory", "cpu", "pids", "hugepageLimits", "blockIO"]),
];

/// `uidMappings`/`gidMappings` only in the one form [`crate::volume_idmap`] checks.
const MOUNT_FIELDS: &[&str] = &["destination", "type", "source", "options", "uidMappings", "gidMappings"];

fn only_allowed_fields(spec: &Spec) -> Result<(), ShimError> {
    let json = serde_json::to_value(spec).map_err(|e| ShimError::usage(format!("config.json: {e}")))?;
    for (section, keys) in ALLOWED {
        let mut value = &json;
        for part in section.split('.').filter(|p| !p.is_empty()) {
            value = &value[part];
        }
        if let Some(object) = value.as_object()
            && let Some(key) = object.keys().find(|k| !keys.contains(&k.as_str()))
        {
            let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
            return refuse(format!("{path} is not allowed"));
        }
    }
    // Mount entries too: a later spec's mount field is refused until a rule for it exists.
    for mount in json["mounts"].as_array().into_iter().flatten() {
        if let Some(key) =
            mount.as_object().and_then(|m| m.keys().find(|k| !MOUNT_FIELDS.contains(&k.as_str())))
        {
            return refuse(format!("mounts[].{key} is not allowed"));
        }
    }
    // Shared propagation would let mounts flow between the container and the host.
    if let Some(propagation) = json["linux"]["rootfsPropagation"].as_str()
        && !matches!(propagation, "private" | "rprivate" | "slave" | "rslave")
    {
        return refuse(format!("rootfsPropagation {propagation} is not allowed"));
    }
    Ok(())
}

/// Checks `spec` for a container `id` run by `uid:gid`, who has no subordinate ids.
pub fn check(spec: &Spec, uid: u32, gid: u32, id: &str) -> Result<(), ShimError> {
    check_with(spec, uid, gid, id, &Allocations::default())
}

/// Checks `spec` for a container `id` run by `uid:gid`, whose subordinate ids (read by the shim
/// from `/etc/subuid` and `/etc/subgid`) are `allocations`.
pub fn check_with(
    spec: &Spec,
    uid: u32,
    gid: u32,
    id: &str,
    allocations: &Allocations,
) -> Result<(), ShimError> {
    container_id(id)?;
    only_allowed_fields(spec)?;
    let Some(linux) = spec.linux() else { return refuse("no linux section") };

    // Namespaces: new user, mount, pid, ipc and uts; none joined by path.
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for ns in &namespaces {
        if ns.path().is_some() {
            return refuse(format!("namespace {:?} joins an existing one by path", ns.typ()));
        }
    }
    let kinds: HashSet<LinuxNamespaceType> = namespaces.iter().map(|ns| ns.typ()).collect();
    for needed in [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ] {
        if !kinds.contains(&needed) {
            return refuse(format!("no new {needed:?} namespace"));
        }
    }
    let own_netns = kinds.contains(&LinuxNamespaceType::Network);

    // Container 0 -> the caller, size 1, then only ids allocated to the caller.
    for (what, mappings, host, allowed) in [
        ("uid", linux.uid_mappings(), uid, &allocations.uids),
        ("gid", linux.gid_mappings(), gid, &allocations.gids),
    ] {
        if let Err(why) = subid::check_map(what, mappings.as_deref(), host, allowed) {
            return refuse(why);
        }
    }
    let subordinate_gids = subid::uses_subordinate(linux.gid_mappings().as_deref());

    if let Some(hooks) = spec.hooks() {
        let any = [
            hooks.prestart(),
            hooks.create_runtime(),
            hooks.create_container(),
            hooks.start_container(),
            hooks.poststart(),
            hooks.poststop(),
        ]
        .iter()
        .any(|h| h.as_ref().is_some_and(|v| !v.is_empty()));
        if any {
            return refuse("hooks run as root on the host and are not allowed");
        }
    }

    match spec.root() {
        Some(root) if plain_relative(root.path()) => {}
        _ => return refuse("root.path must be a relative path inside the bundle"),
    }

    // The shim places the container below the caller's own cgroup itself (cgroup_placement).
    if linux.cgroups_path().is_some() {
        return refuse("cgroupsPath is chosen by the shim (below the caller's cgroup); leave it out");
    }
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return refuse("extra devices are not allowed");
    }
    if let Some(resources) = linux.resources()
        && resources.devices().as_ref().is_some_and(|d| d.iter().any(|rule| rule.allow()))
    {
        return refuse("device cgroup rules may only deny");
    }
    if let Some(sysctl) = linux.sysctl() {
        if let Some(key) = sysctl.keys().find(|k| !namespaced_sysctl(k, own_netns)) {
            return refuse(format!("sysctl {key} is not namespaced for this container"));
        }
    }
    if linux.seccomp().is_some() {
        return refuse("seccomp profiles are not supported by this shim");
    }
    if linux.intel_rdt().is_some() || linux.personality().is_some() {
        return refuse("intelRdt and personality are not allowed");
    }

    // Without a process section (or its capabilities) libcontainer would leave the container
    // every capability of its user namespace.
    let Some(process) = spec.process() else { return refuse("no process section") };
    capabilities(process, subordinate_gids)?;
    if let Some(gids) = process.user().additional_gids().as_ref().filter(|g| !g.is_empty()) {
        // libcontainer would setgroups to them, dropping the caller's groups (see
        // ALLOWED_CAPABILITIES): allowed, as newgidmap allows setgroups, only to a caller with
        // subordinate gids, and only to gids the container maps.
        if !subordinate_gids {
            return refuse("process.user.additionalGids need subordinate gids in the gid mappings");
        }
        let mapped = |g: u32| {
            linux.gid_mappings().iter().flatten().any(|m| {
                u64::from(m.container_id()) <= u64::from(g)
                    && u64::from(g) < u64::from(m.container_id()) + u64::from(m.size())
            })
        };
        if let Some(g) = gids.iter().find(|&&g| !mapped(g)) {
            return refuse(format!("additional gid {g} is not mapped in the container"));
        }
    }
    for (what, id) in [("uid", process.user().uid()), ("gid", process.user().gid())] {
        let mappings = if what == "uid" { linux.uid_mappings() } else { linux.gid_mappings() };
        let mapped = mappings.iter().flatten().any(|m| {
            u64::from(m.container_id()) <= u64::from(id)
                && u64::from(id) < u64::from(m.container_id()) + u64::from(m.size())
        });
        if !mapped {
            return refuse(format!("process.user.{what} {id} is not mapped in the container"));
        }
    }
    if process.oom_score_adj().is_some_and(|adj| adj < 0) {
        return refuse("a negative oomScoreAdj needs privilege");
    }
    if process.scheduler().is_some() || process.io_priority().is_some() {
        return refuse("scheduler and ioPriority are not allowed");
    }
    if process.rlimits().as_ref().is_some_and(|r| !r.is_empty()) {
        return refuse("rlimits are inherited from the caller, not set by the bundle");
    }
    if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
        return refuse("LSM labels are not supported by this shim");
    }

    for mount in spec.mounts().clone().unwrap_or_default() {
        let typ = mount.typ().clone().unwrap_or_else(|| "none".to_owned());
        if !MOUNT_TYPES.contains(&typ.as_str()) {
            return refuse(format!("mount type {typ} at {}", mount.destination().display()));
        }
        let options = mount.options().clone().unwrap_or_default();
        idmap_free(&mount, &options)?;
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let maps = (
            linux.uid_mappings().as_deref().unwrap_or_default(),
            linux.gid_mappings().as_deref().unwrap_or_default(),
        );
        crate::volume_idmap::check(&mount, is_bind, (uid, gid), maps.0, maps.1)?;
        if is_bind {
            match mount.source() {
                Some(source)
                    if source.is_absolute() && !source.components().any(|c| c == Component::ParentDir) => {}
                _ => {
                    return refuse(format!(
                        "bind mount at {} needs an absolute source",
                        mount.destination().display()
                    ));
                }
            }
        } else if options.iter().any(|o| o == "suid" || o == "dev") {
            return refuse(format!("mount at {} asks for suid or dev", mount.destination().display()));
        }
    }
    Ok(())
}

/// Bind-mount sources, which the shim checks the caller can reach before anything runs.
pub fn bind_sources(spec: &Spec) -> Vec<std::path::PathBuf> {
    spec.mounts()
        .clone()
        .unwrap_or_default()
        .iter()
        .filter(|m| {
            m.typ().as_deref() == Some("bind")
                || m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
        })
        .filter_map(|m| m.source().clone())
        .collect()
}

/// All five sets must be given, each within [`ALLOWED_CAPABILITIES`] (plus `CAP_SETGID` where
/// the container maps subordinate gids, as newgidmap then allows setgroups, so that `gosu` and
/// `su-exec` can step down): libcontainer leaves a missing set as it is (full in a new user
/// namespace) and a missing bounding set empty.
fn capabilities(process: &Process, subordinate_gids: bool) -> Result<(), ShimError> {
    let Some(caps) = process.capabilities() else { return refuse("process.capabilities is missing") };
    let mut allowed: HashSet<&Capability> = ALLOWED_CAPABILITIES.iter().collect();
    if subordinate_gids {
        allowed.insert(&Capability::Setgid);
    }
    for (name, set) in [
        ("bounding", caps.bounding()),
        ("effective", caps.effective()),
        ("inheritable", caps.inheritable()),
        ("permitted", caps.permitted()),
        ("ambient", caps.ambient()),
    ] {
        let Some(set) = set else { return refuse(format!("process.capabilities.{name} is missing")) };
        if let Some(extra) = set.iter().find(|c| !allowed.contains(c)) {
            return refuse(format!("capability {extra:?} in {name} is beyond the allowed set"));
        }
    }
    Ok(())
}

/// Idmapped mounts would map files to ids the caller chose; the shim builds the one form it
/// allows itself ([`crate::volume_idmap`]: the container's user onto the caller), from the
/// mount's `uidMappings`/`gidMappings`. The options that ask the runtime for an idmap are refused.
fn idmap_free(mount: &Mount, options: &[String]) -> Result<(), ShimError> {
    let at = mount.destination().display();
    if let Some(option) = options.iter().find(|o| {
        let name = o.split('=').next().unwrap_or_default();
        matches!(name, "idmap" | "ridmap" | "X-mount.idmap")
    }) {
        return refuse(format!("mount at {at} has option {option} (idmapped mounts are not allowed)"));
    }
    Ok(())
}

fn plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
#[path = "bundle_policy_tests.rs"]
mod tests;
