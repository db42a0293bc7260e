//! The daemon running as root (a devcontainer, WSL, CI): the shim's jobs that only need root
//! are done here directly — binding 80/443 and keeping `/etc/hosts` — so a machine with only a
//! root user needs no installed shim for them. Containers, loop mounts, `debug port` and cleanup
//! still go through the shim when there is one (the container runtime lives only there), so
//! those are passed to the [`Privileged`] discovery found.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::RawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use locald_shim_protocol::hosts_block;
use locald_shim_protocol::protocol::BundleRunRequest;
use locald_shim_protocol::validate::hosts_domains;

use super::{PortOwner, Privileged, ShimClientError};

/// `=0`: a daemon running as root leaves ports 80/443 and `/etc/hosts` alone, as a user's
/// daemon without a shim does; for test suites that run many root daemons on one machine.
pub const ROOT_JOBS_ENV: &str = "LOCALD_ROOT_JOBS";

/// The lock the shim takes too, so a root daemon and a shim run by another user's daemon never
/// write the file at once.
const LOCK: &str = ".hosts.locald.lock";
const TEMP: &str = ".hosts.locald.tmp";
const MAX_HOSTS_BYTES: u64 = 16 << 20;

#[derive(Debug)]
pub struct AsRoot {
    /// For what root alone does not do: the shim, or why there is none.
    shim: Arc<dyn Privileged>,
    etc: PathBuf,
}

impl AsRoot {
    pub fn new(shim: Arc<dyn Privileged>) -> Self {
        Self { shim, etc: PathBuf::from("/etc") }
    }
}

fn failed(what: &str, e: std::io::Error) -> ShimClientError {
    ShimClientError::Failed { class: None, message: format!("{what}: {e}") }
}

impl Privileged for AsRoot {
    fn unavailable(&self) -> Option<Arc<ShimClientError>> {
        self.shim.unavailable()
    }

    fn is_root(&self) -> bool {
        true
    }

    fn mode(&self) -> Option<locald_shim_protocol::ShimMode> {
        self.shim.mode()
    }

    /// Root writes `/etc/hosts` itself; everything else beyond bind is the shim's.
    fn unavailable_beyond_bind(&self, what: &'static str) -> Option<Arc<ShimClientError>> {
        if what == "writing /etc/hosts" {
            return None;
        }
        self.shim.unavailable_beyond_bind(what)
    }

    fn bind(&self, port: u16, address: Option<IpAddr>) -> Result<TcpListener, ShimClientError> {
        let address = address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        // std sets SO_REUSEADDR, as the shim's bind does.
        TcpListener::bind((address, port)).map_err(|e| failed(&format!("bind {address}:{port}"), e))
    }

    fn sync_hosts(&self, domains: &[String]) -> Result<(), ShimClientError> {
        let domains = hosts_domains(domains)
            .map_err(|e| ShimClientError::Failed { class: None, message: e.to_string() })?;
        let mount_point = std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|table| hosts_block::is_mount_point(&table, &self.etc.join("hosts")));
        sync_hosts_in(&self.etc, &domains, mount_point)
    }

    fn cleanup(&self, path: &Path) -> Result<(), ShimClientError> {
        std::fs::remove_dir_all(path).map_err(|e| failed(&format!("remove {}", path.display()), e))
    }

    fn mount_loop(
        &self,
        image: &Path,
        target: &Path,
        fstype: &str,
        read_write: bool,
    ) -> Result<(), ShimClientError> {
        self.shim.mount_loop(image, target, fstype, read_write)
    }

    fn unmount_loop(&self, target: &Path) -> Result<(), ShimClientError> {
        self.shim.unmount_loop(target)
    }

    fn debug_port(&self, port: u16) -> Result<Vec<PortOwner>, ShimClientError> {
        self.shim.debug_port(port)
    }

    fn bundle_run(&self, run: &BundleRunRequest, control: RawFd) -> Result<Command, ShimClientError> {
        self.shim.bundle_run(run, control)
    }
}

/// Root's block (`uid=0`) in `<etc>/hosts`, under the shim's lock: replaced by rename, or
/// rewritten in place when the file is a mount point (a container's bind-mounted hosts file,
/// where rename fails with `EBUSY`).
fn sync_hosts_in(etc: &Path, domains: &[String], mount_point: bool) -> Result<(), ShimClientError> {
    let hosts = etc.join("hosts");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(etc.join(LOCK))
        .map_err(|e| failed("open /etc/.hosts.locald.lock", e))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| failed("lock /etc/.hosts.locald.lock", e.into()))?;
    let meta = std::fs::symlink_metadata(&hosts).map_err(|e| failed("stat /etc/hosts", e))?;
    if meta.file_type().is_symlink() {
        // The system manages it (NixOS); as for the shim, nothing asked is nothing to do.
        return if domains.is_empty() {
            Ok(())
        } else {
            Err(ShimClientError::Failed {
                class: None,
                message: "/etc/hosts is a symlink, so the system manages it; locald leaves it alone".into(),
            })
        };
    }
    let mut current = Vec::new();
    std::fs::File::open(&hosts)
        .and_then(|f| f.take(MAX_HOSTS_BYTES).read_to_end(&mut current))
        .map_err(|e| failed("read /etc/hosts", e))?;
    let uid = nix::unistd::geteuid().as_raw();
    let updated = hosts_block::rewrite(&current, uid, domains)
        .map_err(|message| ShimClientError::Failed { class: None, message })?;
    if updated == current {
        return Ok(());
    }
    if !mount_point {
        match replace(etc, &hosts, &updated, &meta) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            result => return result.map_err(|e| failed("replace /etc/hosts", e)),
        }
    }
    in_place(&hosts, &updated).map_err(|e| failed("rewrite /etc/hosts in place", e))
}

fn replace(etc: &Path, hosts: &Path, content: &[u8], meta: &std::fs::Metadata) -> std::io::Result<()> {
    let temp = etc.join(TEMP);
    let _ = std::fs::remove_file(&temp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, hosts)?;
        std::fs::File::open(etc)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Written from the start, cut to length, synced; readers may see it half-written for that
/// moment, so this is only for a file rename cannot replace.
fn in_place(hosts: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(hosts)?;
    file.write_all(content)?;
    file.set_len(content.len() as u64)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_block_is_written_by_rename_and_in_place_alike_and_removed_again() {
        let base = "127.0.0.1 localhost\n";
        for in_place in [false, true] {
            let etc = tempfile::tempdir().unwrap();
            let hosts = etc.path().join("hosts");
            std::fs::write(&hosts, base).unwrap();
            let inode = std::fs::metadata(&hosts).unwrap().ino();
            sync_hosts_in(etc.path(), &names(&["shop.test"]), in_place).unwrap();
            let text = std::fs::read_to_string(&hosts).unwrap();
            let uid = nix::unistd::geteuid().as_raw();
            assert!(text.starts_with(base), "{text}");
            assert!(text.contains(&format!("# BEGIN locald uid={uid}\n127.0.0.1\tshop.test\n")), "{text}");
            let same_file = std::fs::metadata(&hosts).unwrap().ino() == inode;
            assert_eq!(same_file, in_place, "a mount point keeps its inode; otherwise it is replaced");
            sync_hosts_in(etc.path(), &[], in_place).unwrap();
            assert_eq!(std::fs::read_to_string(&hosts).unwrap(), base, "the block goes, the rest stays");
            assert!(!etc.path().join(TEMP).exists());
        }
    }
}
