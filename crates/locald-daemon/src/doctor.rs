//! Environment checks behind `locald doctor`: each returns findings with stable ids.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use std::os::unix::fs::MetadataExt;

use locald_core::diagnostics::{Finding, Report};
use locald_shim_protocol::ShimMode;

use locald_image::identity::{ADD_ALLOCATION, Subordinate};
use locald_image::mapper::{self, Cap, Tool};

use crate::shim::{self as discovery, PortOwner, Privileged, ShimClientError};

/// `privileged`: the shim as this process found it ([`discovery::discover`]).
pub fn run(privileged: &dyn Privileged) -> Report {
    let mut findings = Vec::new();
    findings.extend(shim(privileged));
    match containers_elsewhere(std::env::consts::OS) {
        Some(finding) => findings.push(finding),
        None => {
            findings.extend(cgroups());
            let sub = Subordinate::of_host_user(nix::unistd::getuid().as_raw());
            findings.push(subid_allocation(&sub));
            findings.extend(subid_tools(&sub, mapper::find));
        }
    }
    findings.push(localhost_resolution());
    findings.push(port_free("port.80", SocketAddr::from(([127, 0, 0, 1], 80)), privileged));
    findings.push(port_free("port.443", SocketAddr::from(([127, 0, 0, 1], 443)), privileged));
    findings.extend(ca_trust());
    Report { findings }
}

/// Whether the local CA exists and where it is trusted (the system store, NSS databases).
pub fn ca_trust() -> Vec<Finding> {
    use locald_ca::{ca::CA_CERT, trust};
    const TRUST: &str = "locald trust";
    let Ok(dir) = locald_ca::ca_dir() else {
        return vec![Finding::warn("ca.present", "no data directory (HOME unset)", "set HOME")];
    };
    let cert_path = dir.join(CA_CERT);
    let Ok(cert_pem) = std::fs::read_to_string(&cert_path) else {
        return vec![Finding::ok("ca.present", "no local CA yet; made on first use (`locald ca`)")];
    };
    let mut findings = vec![Finding::ok("ca.present", cert_path.display().to_string())];
    findings.push(match trust::system_store(&cert_pem) {
        Some(store) if store.contains(&cert_path, &cert_pem) => {
            Finding::ok("ca.trust.system", format!("trusted in {}", store.describe()))
        }
        Some(store) => Finding::warn("ca.trust.system", format!("not in {}", store.describe()), TRUST),
        None => Finding::warn(
            "ca.trust.system",
            "no known system certificate store on this machine",
            format!("trust {} by hand", cert_path.display()),
        ),
    });
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    let dbs = trust::nss_databases(&home, false);
    findings.push(if !trust::certutil_available() {
        Finding::warn(
            "ca.trust.nss",
            "certutil not found: cannot check or update NSS databases (Chromium, Firefox)",
            "install libnss3-tools (Debian) or nss-tools (Fedora), then locald trust",
        )
    } else if dbs.is_empty() {
        Finding::warn("ca.trust.nss", "no NSS database (Chromium, Firefox) found", TRUST)
    } else {
        let (trusted, missing): (Vec<_>, Vec<_>) =
            dbs.iter().partition(|db| trust::nss_contains(db, &cert_pem));
        let list = |dbs: &[&std::path::PathBuf]| {
            dbs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        };
        if missing.is_empty() {
            Finding::ok("ca.trust.nss", format!("trusted in {}", list(&trusted)))
        } else {
            Finding::warn("ca.trust.nss", format!("not in {}", list(&missing)), TRUST)
        }
    });
    findings
}

/// One finding per property of the shim: present, owner, mode (setuid, not writable, closed
/// directory chain), version. Without a shim locald still works, on unprivileged ports.
const SETUP: &str = "sudo locald admin setup";

fn shim(privileged: &dyn Privileged) -> Vec<Finding> {
    let env_override = std::env::var_os(discovery::ENV_OVERRIDE).filter(|v| !v.is_empty());
    let candidates = discovery::candidates(env_override);
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        let places: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return vec![Finding::warn(
            "shim.present",
            format!("no locald-shim at {}; locald will serve on unprivileged ports", places.join(" or ")),
            SETUP,
        )];
    };
    let mut findings = vec![Finding::ok("shim.present", path.display().to_string())];
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let meta = std::fs::metadata(&real);
    findings.push(match &meta {
        Ok(m) if m.uid() == 0 => Finding::ok("shim.owner", "owned by root"),
        Ok(m) => Finding::error("shim.owner", format!("owned by uid {}, not root", m.uid()), SETUP),
        Err(e) => Finding::error("shim.owner", format!("cannot inspect: {e}"), SETUP),
    });
    let bits = meta.map(|m| m.mode() & 0o7777).unwrap_or(0);
    findings.push(match discovery::check_trusted(path) {
        Ok(_) => shim_mode(privileged.mode(), bits),
        Err(reason) => Finding::error("shim.mode", reason.to_string(), SETUP),
    });
    findings.push(shim_version(privileged));
    findings
}

/// Which install it is, as the handshake said (the file's setuid bit when there was none), and
/// what the capability install cannot do: a warning, since locald works with it, minus those.
fn shim_mode(handshake: Option<ShimMode>, bits: u32) -> Finding {
    let setuid = handshake.map_or(bits & 0o4000 != 0, |mode| mode == ShimMode::Setuid);
    if setuid {
        return Finding::ok("shim.mode", format!("setuid, mode {bits:o}, in a root-only directory chain"));
    }
    Finding::warn(
        "shim.mode",
        format!(
            "capabilities (cap_net_bind_service=ep, not setuid), mode {bits:o}, in a root-only \
             directory chain: binds ports 1-1023 only — no containers, loop mounts, /etc/hosts \
             entries (*.test names) or removal of root-owned files"
        ),
        format!("{SETUP} for the setuid install, if you need those"),
    )
}

/// Read from the one discovery's answer, so doctor says what the rest of locald found.
fn shim_version(privileged: &dyn Privileged) -> Finding {
    let Some(reason) = privileged.unavailable() else {
        return Finding::ok("shim.version", locald_shim_protocol::version_line());
    };
    match &*reason {
        ShimClientError::VersionMismatch { .. } => Finding::error("shim.version", reason.to_string(), SETUP),
        _ => Finding::error("shim.version", format!("no handshake: {reason}"), SETUP),
    }
}

/// Off Linux there are no cgroups to inspect: what matters is where container services go.
fn containers_elsewhere(os: &str) -> Option<Finding> {
    (os != "linux").then(|| {
        Finding::warn(
            "platform.containers",
            format!("{os}: processes run natively here, container services need Linux"),
            "run projects with image services in locald's Lima VM: `locald-lima up` (lima/locald.yaml)",
        )
    })
}

/// How the host's cgroups are mounted, and whether this user may create cgroups of its own.
/// Whether containers can hold users besides root: the user's `/etc/subuid` and `/etc/subgid`
/// allocations (the shim checks them again itself).
pub fn subid_allocation(sub: &Subordinate) -> Finding {
    match (sub.uids, sub.gids) {
        (Some(u), Some(g)) => Finding::ok(
            "subid.allocation",
            format!(
                "container ids 1-{} map to uids {}-{} and gids {}-{}",
                u.count.min(g.count),
                u.start,
                u64::from(u.start) + u64::from(u.count) - 1,
                g.start,
                u64::from(g.start) + u64::from(g.count) - 1
            ),
        ),
        _ => Finding::warn(
            "subid.allocation",
            "no /etc/subuid and /etc/subgid allocation: containers hold only root (you), so images with another User fail",
            ADD_ALLOCATION,
        ),
    }
}

/// With an allocation, whether `newuidmap`/`newgidmap` can map the unpack helper's user
/// namespace onto it (`lookup` finds one tool; [`mapper::find`] outside tests). Nothing to say
/// without an allocation: then no tool is used.
pub fn subid_tools(sub: &Subordinate, lookup: impl Fn(&str, Cap) -> Tool) -> Option<Finding> {
    const ID: &str = "subid.tools";
    sub.uids.zip(sub.gids)?;
    let found = mapper::TOOLS.map(|(name, cap)| (name, lookup(name, cap)));
    let problems: Vec<String> = found
        .iter()
        .filter_map(|(name, tool)| match tool {
            Tool::Usable(_) => None,
            Tool::Missing => Some(format!("{name} not found")),
            Tool::Unusable(path) => {
                Some(format!("{} is neither setuid root nor given its capability", path.display()))
            }
        })
        .collect();
    if problems.is_empty() {
        let paths: Vec<String> = found
            .iter()
            .filter_map(|(_, tool)| match tool {
                Tool::Usable(path) => Some(path.display().to_string()),
                _ => None,
            })
            .collect();
        return Some(Finding::ok(
            ID,
            format!("{} map image layers onto the allocation", paths.join(" and ")),
        ));
    }
    Some(Finding::warn(
        ID,
        format!(
            "{}: image layers are unpacked as you only (every file container root's), so images whose User owns files fail",
            problems.join(", ")
        ),
        "install Debian's `uidmap` package (shadow-utils elsewhere): sudo apt install uidmap",
    ))
}

pub fn cgroups() -> Vec<Finding> {
    let mode = cgroup_mode(Path::new("/sys/fs/cgroup"));
    let mut findings = vec![match mode {
        CgroupMode::Unified => Finding::ok("cgroup.mode", "cgroup v2 (unified hierarchy)"),
        CgroupMode::Hybrid => Finding::warn(
            "cgroup.mode",
            "hybrid cgroup hierarchy: v2 exists but its controllers are bound to v1",
            "boot with systemd.unified_cgroup_hierarchy=1 for memory/pids limits on containers",
        ),
        CgroupMode::Legacy => Finding::warn(
            "cgroup.mode",
            "cgroup v1 only",
            "boot with systemd.unified_cgroup_hierarchy=1 for memory/pids limits on containers",
        ),
        CgroupMode::None => {
            Finding::warn("cgroup.mode", "no cgroup filesystem at /sys/fs/cgroup", "mount cgroup2")
        }
    }];
    if mode == CgroupMode::Unified {
        findings.push(match delegated_cgroup() {
            Some(path) => Finding::ok("cgroup.delegated", format!("this user may manage {path}")),
            None => Finding::warn(
                "cgroup.delegated",
                "no delegated cgroup for this user: services are stopped by process group only",
                "run locald under a systemd user session (user@.service delegates a subtree)",
            ),
        });
    }
    findings
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    Unified,
    Hybrid,
    Legacy,
    None,
}

#[cfg(not(target_os = "linux"))]
pub fn cgroup_mode(_root: &Path) -> CgroupMode {
    CgroupMode::None
}

#[cfg(target_os = "linux")]
pub fn cgroup_mode(root: &Path) -> CgroupMode {
    const CGROUP2_MAGIC: i64 = 0x6367_7270;
    const CGROUP1_MAGIC: i64 = 0x0027_e0eb;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // The magic's integer type differs between libcs (i64 on glibc, u64 or i32 elsewhere).
    #[allow(clippy::unnecessary_cast)]
    let magic = |p: &Path| nix::sys::statfs::statfs(p).ok().map(|s| s.filesystem_type().0 as i64);
    match magic(root) {
        Some(CGROUP2_MAGIC) => CgroupMode::Unified,
        Some(TMPFS_MAGIC) | Some(CGROUP1_MAGIC) => {
            if magic(&root.join("unified")) == Some(CGROUP2_MAGIC) {
                CgroupMode::Hybrid
            } else {
                CgroupMode::Legacy
            }
        }
        _ => CgroupMode::None,
    }
}

/// The user's own cgroup when it is a directory they own (systemd delegation) with controllers.
fn delegated_cgroup() -> Option<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let meta = std::fs::metadata(&dir).ok()?;
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    (meta.uid() == nix::unistd::getuid().as_raw() && !controllers.trim().is_empty()).then(|| path.to_owned())
}

fn localhost_resolution() -> Finding {
    const ID: &str = "dns.localhost";
    let name = "locald-doctor-probe.localhost";
    match (name, 0).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback) {
                Finding::ok(ID, format!("*.localhost resolves to loopback ({})", display_ips(&addrs)))
            } else {
                Finding::warn(
                    ID,
                    format!("{name} resolves to {}, not loopback", display_ips(&addrs)),
                    "locald keeps /etc/hosts entries for its names through the shim",
                )
            }
        }
        Err(_) => Finding::warn(
            ID,
            "*.localhost does not resolve on this system",
            "install nss-myhostname (libnss-myhostname) or let locald keep /etc/hosts entries through the shim",
        ),
    }
}

fn display_ips(addrs: &[IpAddr]) -> String {
    addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

fn port_free(id: &'static str, addr: SocketAddr, privileged: &dyn Privileged) -> Finding {
    let port = addr.port();
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(_) => Finding::warn(
            id,
            format!(
                "port {port} on 127.0.0.1 is already in use by {}",
                describe_owner(port_owner(privileged, port).as_ref())
            ),
            format!("stop whatever listens on {port}, or locald falls back to an unprivileged port"),
        ),
        Err(_) => Finding::ok(id, format!("port {port} on 127.0.0.1 is free")),
    }
}

/// The first process listening on `port`, through the shim's `debug port`: `None` without a
/// shim, or when it cannot say. Runs the shim.
pub fn port_owner(privileged: &dyn Privileged, port: u16) -> Option<PortOwner> {
    privileged.debug_port(port).ok()?.into_iter().next()
}

/// "pid 123 (uid 1000, nginx)" (or "a process of uid 0" for another user's), or a generic
/// phrase when the shim could not say.
pub fn describe_owner(owner: Option<&PortOwner>) -> String {
    match owner {
        Some(o) => o.to_string(),
        None => "another program".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::Unavailable;
    use crate::shim::fake::{Call, Fake};

    #[test]
    fn shim_mode_names_the_install_and_what_the_capability_one_cannot_do() {
        use locald_core::diagnostics::Severity;
        let setuid = shim_mode(Some(ShimMode::Setuid), 0o4755);
        assert_eq!(
            (setuid.severity, setuid.message.as_str()),
            (Severity::Ok, "setuid, mode 4755, in a root-only directory chain")
        );
        let caps = shim_mode(Some(ShimMode::Capabilities), 0o755);
        assert_eq!(caps.severity, Severity::Warn);
        assert!(
            caps.message.starts_with("capabilities (cap_net_bind_service=ep, not setuid), mode 755"),
            "{}",
            caps.message
        );
        assert!(caps.message.contains("no containers, loop mounts, /etc/hosts"), "{}", caps.message);
        assert_eq!(shim_mode(None, 0o755).severity, Severity::Warn, "no handshake: judged by the file");
        assert_eq!(shim_mode(None, 0o4755).severity, Severity::Ok);
    }

    #[test]
    fn off_linux_doctor_points_container_services_at_the_lima_vm() {
        let finding = containers_elsewhere("macos").expect("a finding on macOS");
        let text = format!("{finding:?}");
        assert!(text.contains("platform.containers") && text.contains("locald-lima up"), "{text}");
        assert!(containers_elsewhere("linux").is_none(), "Linux reports its cgroups instead");
    }

    #[test]
    fn the_allocation_finding_says_what_maps_or_how_to_add_one() {
        use locald_image::identity::Range;
        let range = Some(Range { start: 100_000, count: 65_536 });
        let ok = subid_allocation(&Subordinate { uids: range, gids: range });
        assert_eq!((ok.id, ok.severity), ("subid.allocation", locald_core::diagnostics::Severity::Ok));
        assert!(ok.message.contains("uids 100000-165535"), "{}", ok.message);
        let missing = subid_allocation(&Subordinate { uids: range, gids: None });
        assert_eq!(missing.severity, locald_core::diagnostics::Severity::Warn);
        assert!(missing.hint.unwrap().contains("usermod --add-subuids"));
    }

    #[test]
    fn the_tools_finding_names_what_is_missing_and_the_package() {
        use locald_core::diagnostics::Severity;
        use locald_image::identity::Range;
        let range = Some(Range { start: 100_000, count: 65_536 });
        let allocated = Subordinate { uids: range, gids: range };
        let usable = |name: &str, _: Cap| Tool::Usable(format!("/usr/bin/{name}").into());
        let ok = subid_tools(&allocated, usable).expect("a finding with an allocation");
        assert_eq!((ok.id, ok.severity), ("subid.tools", Severity::Ok));
        assert_eq!(
            ok.message,
            "/usr/bin/newuidmap and /usr/bin/newgidmap map image layers onto the allocation"
        );

        let no_gid =
            |name: &str, cap: Cap| if cap == Cap::SETGID { Tool::Missing } else { usable(name, cap) };
        let missing = subid_tools(&allocated, no_gid).unwrap();
        assert_eq!(missing.severity, Severity::Warn);
        assert!(
            missing.message.starts_with("newgidmap not found: image layers are unpacked as you only"),
            "{}",
            missing.message
        );
        assert!(!missing.message.contains('\n'), "one line");
        assert!(missing.hint.unwrap().contains("`uidmap` package"));

        let plain = |name: &str, _: Cap| Tool::Unusable(format!("/opt/{name}").into());
        let unusable = subid_tools(&allocated, plain).unwrap();
        assert!(
            unusable.message.starts_with("/opt/newuidmap is neither setuid root"),
            "{}",
            unusable.message
        );
        assert!(unusable.message.contains("/opt/newgidmap"), "{}", unusable.message);

        let called = std::cell::Cell::new(false);
        let none = Subordinate { uids: range, gids: None };
        assert!(
            subid_tools(&none, |_: &str, _: Cap| {
                called.set(true);
                Tool::Missing
            })
            .is_none()
        );
        assert!(!called.get(), "no allocation: no tool is looked up");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        // A tempdir on ext4/overlay is neither cgroup v1 nor v2.
        assert!(matches!(cgroup_mode(dir.path()), CgroupMode::None | CgroupMode::Legacy));
        assert_eq!(cgroup_mode(&dir.path().join("missing")), CgroupMode::None);
    }

    #[test]
    fn a_listening_port_is_reported_in_use_and_a_closed_one_free() {
        use locald_core::diagnostics::Severity;
        // 80/443 may be taken on a developer machine, so the probe is exercised on a port we own.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let owner = PortOwner { process: Some((42, "nginx".into())), uid: 1000 };
        let fake = Fake::new().with_owners(vec![owner]);
        let busy = port_free("port.test", addr, &fake);
        assert_eq!(busy.severity, Severity::Warn);
        assert!(busy.message.ends_with("already in use by pid 42 (uid 1000, nginx)"), "{}", busy.message);
        assert_eq!(fake.calls(), [Call::DebugPort(addr.port())]);
        drop(listener);
        assert_eq!(port_free("port.test", addr, &fake).severity, Severity::Ok);
        assert_eq!(fake.calls().len(), 1, "a free port needs no shim");
    }

    #[test]
    fn the_version_finding_reports_the_reason_discovery_gave() {
        use locald_core::diagnostics::Severity;
        assert_eq!(shim_version(&Fake::new()).severity, Severity::Ok);

        let mismatch = ShimClientError::VersionMismatch {
            path: "/usr/local/libexec/locald/locald-shim".into(),
            found: "0.0.1 (protocol 999)".into(),
            needed: "1 (protocol 1)".into(),
        };
        let text = mismatch.to_string();
        let finding = shim_version(&Unavailable::new(mismatch));
        assert_eq!(finding.severity, Severity::Error);
        assert_eq!(finding.message, text, "the reason as it is");

        let missing = ShimClientError::NotFound { reasons: "/x/locald-shim does not exist".into() };
        let finding = shim_version(&Unavailable::new(missing));
        assert!(
            finding.message.starts_with("no handshake: no usable locald-shim: /x/locald-shim does not exist"),
            "{}",
            finding.message
        );
    }
}
