//! OCI bundle generation: a `config.json` that the shim's bundle policy accepts — a new user
//! namespace mapped only to the caller, new mount/pid/ipc/uts namespaces, the host's network
//! (so the proxy reaches the service's port), no hooks, and no `cgroupsPath`: the shim places the
//! container below the caller's own cgroup itself.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

/// What a service asks of its container.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries; a default PATH is added when none is among them.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub volumes: Vec<Volume>,
    pub memory_bytes: Option<i64>,
    pub pids: Option<i64>,
    /// The caller's subordinate ids, mapped from container id 1 on; none: only `0 → uid`.
    pub subordinate: crate::identity::Subordinate,
    /// Who the process runs as inside; `None`: root (the caller on the host).
    pub user: Option<crate::identity::ProcessUser>,
    /// Read-write volumes mounted idmapped for a non-root `user`: that user's files in them are
    /// the caller's on the host, and the caller's files are that user's inside (the one mapping
    /// the shim allows, `container user → caller`, size 1).
    pub idmap_volumes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid container configuration: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub fn spec(config: &ContainerConfig) -> Result<Spec, BundleError> {
    let mut spec = Spec::rootless(config.uid, config.gid);
    // A PATH from the image or the service replaces the default rather than shadowing it.
    let mut env = Vec::new();
    if !config.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_owned());
    }
    env.extend(config.env.iter().cloned());
    let mut process = spec.process().clone().unwrap_or_default();
    let template = ProcessBuilder::default()
        .terminal(false)
        .user(process_user(config.user.as_ref())?)
        .args(config.args.clone())
        .env(env)
        .cwd(config.cwd.clone().unwrap_or_else(|| PathBuf::from("/")))
        .no_new_privileges(true)
        .build()?;
    process.set_terminal(template.terminal());
    process.set_user(template.user().clone());
    process.set_args(template.args().clone());
    process.set_env(template.env().clone());
    process.set_cwd(template.cwd().clone());
    process.set_no_new_privileges(Some(true));
    // The caller's rlimits apply; the shim refuses bundles that set their own.
    process.set_rlimits(None);
    process.set_capabilities(Some(capabilities(config.subordinate.gids.is_some())?));
    spec.set_process(Some(process));
    spec.set_hostname(Some(config.id.clone()));
    spec.set_root(Some(RootBuilder::default().path("rootfs").readonly(false).build()?));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(tmpfs("/tmp")?);
    let idmapped = config.user.as_ref().filter(|u| config.idmap_volumes && u.uid != 0 && u.gid != 0);
    for volume in &config.volumes {
        let mut mount = bind(volume)?;
        if let Some(user) = idmapped.filter(|_| !volume.read_only) {
            let onto = |inside: u32, caller: u32| {
                LinuxIdMappingBuilder::default().container_id(inside).host_id(caller).size(1u32).build()
            };
            mount.set_uid_mappings(Some(vec![onto(user.uid, config.uid)?]));
            mount.set_gid_mappings(Some(vec![onto(user.gid, config.gid)?]));
        }
        mounts.push(mount);
    }
    spec.set_mounts(Some(mounts));

    let base =
        spec.linux().clone().unwrap_or_else(|| LinuxBuilder::default().build().expect("empty linux section"));
    let mut linux = base;
    // Spec::rootless sets none; the shim refuses a bundle that names one.
    linux.set_cgroups_path(None);
    linux.set_uid_mappings(Some(id_map(config.uid, config.subordinate.uids)?));
    linux.set_gid_mappings(Some(id_map(config.gid, config.subordinate.gids)?));
    if config.memory_bytes.is_some() || config.pids.is_some() {
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(limit) = config.memory_bytes {
            resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
        }
        if let Some(limit) = config.pids {
            resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
        }
        linux.set_resources(Some(resources.build()?));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Writes `<dir>/config.json` for `config`; the rootfs is expected at `<dir>/rootfs`.
pub fn write(dir: &Path, config: &ContainerConfig) -> Result<(), BundleError> {
    let spec = spec(config)?;
    let path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).expect("a Spec always serializes");
    std::fs::write(&path, json).map_err(|source| BundleError::Io { path, source })
}

/// All five sets, written out: the shim refuses a bundle that leaves one to libcontainer (which
/// would keep every capability of the user namespace). Kept small, well inside the shim's
/// allowed set: signals, binding low ports inside, audit writes.
const CAPABILITIES: &[Capability] = &[Capability::AuditWrite, Capability::Kill, Capability::NetBindService];

/// Where the container has other users to be (subordinate ids), what an entrypoint needs to
/// step down to one of them (`gosu`, `su-exec`, `setpriv`) and to hand it its files. Never
/// ambient: a process that starts as another user does not keep them.
const STEP_DOWN: &[Capability] =
    &[Capability::Setuid, Capability::Setgid, Capability::Chown, Capability::DacOverride, Capability::Fowner];

fn capabilities(step_down: bool) -> Result<LinuxCapabilities, BundleError> {
    let ambient: Capabilities = CAPABILITIES.iter().copied().collect();
    let mut set = ambient.clone();
    if step_down {
        set.extend(STEP_DOWN.iter().copied());
    }
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .inheritable(set.clone())
        .permitted(set)
        .ambient(ambient)
        .build()?)
}

/// `0 → own` (size 1), then container ids 1… → the subordinate range, when there is one.
fn id_map(own: u32, subordinate: Option<crate::identity::Range>) -> Result<Vec<LinuxIdMapping>, BundleError> {
    let mut map = vec![LinuxIdMappingBuilder::default().container_id(0u32).host_id(own).size(1u32).build()?];
    if let Some(range) = subordinate {
        map.push(
            LinuxIdMappingBuilder::default()
                .container_id(1u32)
                .host_id(range.start)
                .size(range.count)
                .build()?,
        );
    }
    Ok(map)
}

fn process_user(user: Option<&crate::identity::ProcessUser>) -> Result<oci_spec::runtime::User, BundleError> {
    let Some(user) = user else { return Ok(UserBuilder::default().uid(0u32).gid(0u32).build()?) };
    let mut builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        builder = builder.additional_gids(user.additional_gids.clone());
    }
    Ok(builder.build()?)
}

fn tmpfs(destination: &str) -> Result<Mount, BundleError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into()])
        .build()?)
}

fn bind(volume: &Volume) -> Result<Mount, BundleError> {
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    if volume.read_only {
        options.push("ro".to_owned());
    }
    Ok(MountBuilder::default()
        .destination(volume.container.clone())
        .typ("bind")
        .source(volume.host.clone())
        .options(options)
        .build()?)
}

#[cfg(test)]
mod tests {
    use locald_shim_protocol::bundle_policy::check;
    use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};

    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            id: "web-1".into(),
            uid: 1000,
            gid: 1000,
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PORT=8080".into()],
            volumes: vec![Volume {
                host: "/home/u/p/data".into(),
                container: "/data".into(),
                read_only: true,
            }],
            memory_bytes: Some(64 << 20),
            pids: Some(64),
            ..Default::default()
        }
    }

    fn refused(spec: &Spec) -> String {
        check(spec, 1000, 1000, "web-1").expect_err("must be refused").message
    }

    #[test]
    fn bundles_with_a_subordinate_range_and_an_image_user_pass_the_policy_with_that_allocation() {
        use crate::identity::{ProcessUser, Range, Subordinate};
        let range = Range { start: 100_000, count: 65_536 };
        let mut config = config();
        config.subordinate = Subordinate { uids: Some(range), gids: Some(range) };
        config.user = Some(ProcessUser { uid: 101, gid: 102, additional_gids: vec![103] });
        let spec = spec(&config).unwrap();
        let allocations = locald_shim_protocol::subid::Allocations { uids: vec![range], gids: vec![range] };
        locald_shim_protocol::bundle_policy::check_with(&spec, 1000, 1000, "web-1", &allocations).unwrap();
        // Without the allocation the shim refuses the same bundle.
        assert!(refused(&spec).contains("not inside the caller's allocation"));
        let caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
        assert!(caps.bounding().as_ref().unwrap().contains(&Capability::Setgid));
        assert!(!caps.ambient().as_ref().unwrap().contains(&Capability::Setgid), "never ambient");
    }

    #[test]
    fn generated_bundles_pass_the_shims_policy() {
        let spec = spec(&config()).unwrap();
        check(&spec, 1000, 1000, "web-1").unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), None, "the shim chooses the cgroup");
        assert!(spec.process().as_ref().unwrap().env().as_ref().unwrap().contains(&"PORT=8080".to_owned()));
        // All five capability sets, so libcontainer leaves the container nothing beyond them.
        let caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.inheritable(), caps.permitted(), caps.ambient()] {
            assert_eq!(set.as_ref().map(|s| s.len()), Some(CAPABILITIES.len()));
        }
        // Host network: the proxy reaches the service's port.
        assert!(
            !linux.namespaces().as_ref().unwrap().iter().any(|ns| ns.typ() == LinuxNamespaceType::Network)
        );
    }

    #[test]
    fn the_policy_refuses_each_escalation() {
        let good = spec(&config()).unwrap();
        // For another user, the same bundle maps to the wrong uid.
        assert!(check(&good, 1001, 1001, "web-1").is_err());

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_uid_mappings(Some(vec![
            LinuxIdMappingBuilder::default().container_id(0u32).host_id(0u32).size(1u32).build().unwrap(),
        ]));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("uid mappings"));

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap();
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(namespaces));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("path"));

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_namespaces(Some(
            linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::User)
                .collect(),
        ));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("User"));

        let mut s = good.clone();
        let hook = oci_spec::runtime::HookBuilder::default()
            .path("/usr/bin/touch")
            .args(vec!["touch".into(), "/root/pwned".into()])
            .build()
            .unwrap();
        s.set_hooks(Some(oci_spec::runtime::HooksBuilder::default().prestart(vec![hook]).build().unwrap()));
        assert!(refused(&s).contains("hooks"));

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some("/locald/1000/web-1".into()));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("cgroupsPath"));
        for escape in ["/", "/../../..", "/init.scope", "relative"] {
            let mut s = good.clone();
            let mut linux = s.linux().clone().unwrap();
            linux.set_cgroups_path(Some(escape.into()));
            s.set_linux(Some(linux));
            assert!(refused(&s).contains("cgroupsPath"), "{escape}");
        }

        let mut s = good.clone();
        let mut process = s.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        let mut bounding = caps.bounding().clone().unwrap_or_default();
        bounding.insert(Capability::SysAdmin);
        caps.set_bounding(Some(bounding));
        process.set_capabilities(Some(caps));
        s.set_process(Some(process));
        assert!(refused(&s).contains("SysAdmin"));

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_sysctl(Some([("kernel.core_pattern".to_owned(), "|/tmp/x".to_owned())].into()));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("kernel.core_pattern"));

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_sysctl(Some([("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into()));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("net.ipv4.ip_forward"), "host network: net.* is the host's");

        let mut s = good.clone();
        let mut linux = s.linux().clone().unwrap();
        let device = oci_spec::runtime::LinuxDeviceBuilder::default()
            .path("/dev/sda")
            .typ(oci_spec::runtime::LinuxDeviceType::B)
            .major(8)
            .minor(0)
            .build()
            .unwrap();
        linux.set_devices(Some(vec![device]));
        s.set_linux(Some(linux));
        assert!(refused(&s).contains("devices"));

        let mut s = good.clone();
        let mut mounts = s.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default().destination("/host").typ("ext4").source("/dev/sda1").build().unwrap(),
        );
        s.set_mounts(Some(mounts));
        assert!(refused(&s).contains("ext4"));

        let mut s = good.clone();
        s.set_root(Some(RootBuilder::default().path("/").build().unwrap()));
        assert!(refused(&s).contains("root.path"));

        // Fields with no rule of their own are refused by the allow-list.
        let json = serde_json::to_value(&good).unwrap();
        for (path, value) in [
            ("/linux/netDevices", serde_json::json!({"eth0": {"name": "eth0"}})),
            ("/linux/resources/unified", serde_json::json!({"cgroup.procs": "1"})),
            ("/linux/rootfsPropagation", serde_json::json!("shared")),
            (
                "/vm",
                serde_json::json!({"hypervisor": {"path": "/bin/sh"}, "kernel": {"path": "/boot/vmlinuz"}}),
            ),
            ("/process/ioPriority", serde_json::json!({"class": "IOPRIO_CLASS_RT", "priority": 0})),
        ] {
            let mut edited = json.clone();
            let (parent, key) = path.rsplit_once('/').unwrap();
            edited.pointer_mut(if parent.is_empty() { "" } else { parent }).unwrap()[key] = value;
            let spec: Spec = serde_json::from_value(edited).unwrap_or_else(|e| panic!("{path}: {e}"));
            let message = check(&spec, 1000, 1000, "web-1").expect_err(path).message;
            assert!(message.contains(key) || message.contains("not allowed"), "{path}: {message}");
        }

        assert!(check(&good, 1000, 1000, "../x").is_err());
        assert!(check(&good, 1000, 1000, "a/b").is_err());
        assert!(check(&good, 1000, 1000, &"x".repeat(65)).is_err());
    }
}
