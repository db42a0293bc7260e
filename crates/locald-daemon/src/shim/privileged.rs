//! The privileged boundary as one trait: everything the daemon asks of root goes through a
//! [`Privileged`], found once when the process starts ([`discover`]) and handed to whoever needs
//! it. Discovery checks a directory chain and spawns the shim for a handshake; doing that once
//! keeps it off hot paths and out of locked sections, and gives every caller the same answer.

use std::net::{IpAddr, TcpListener};
use std::os::fd::RawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use locald_shim_protocol::ShimMode;
use locald_shim_protocol::protocol::BundleRunRequest;

use super::{PortOwner, Shim, ShimClientError};

/// What root does for the daemon. [`Shim`] does it through `locald-shim`; [`Unavailable`] answers
/// every request with why there is no usable shim.
pub trait Privileged: Send + Sync + std::fmt::Debug {
    /// Why there is no usable shim: `None` when there is one.
    fn unavailable(&self) -> Option<Arc<ShimClientError>>;
    /// How the usable shim holds its privilege; `None` without one.
    fn mode(&self) -> Option<ShimMode>;
    /// Why `what`, a request beyond `bind`, cannot be served: no shim, or the `--ports-only` one.
    /// Checked before a project needing it starts, so `up` says which install it needs.
    fn unavailable_beyond_bind(&self, what: &'static str) -> Option<Arc<ShimClientError>>;
    /// The daemon is root and binds ports and writes `/etc/hosts` itself ([`super::AsRoot`]):
    /// those work whatever [`Privileged::unavailable`] says, which then concerns the rest.
    fn is_root(&self) -> bool {
        false
    }
    /// A listening socket on privileged `port`.
    fn bind(&self, port: u16, address: Option<IpAddr>) -> Result<TcpListener, ShimClientError>;
    /// Makes the caller's `/etc/hosts` block map exactly `domains` to loopback.
    fn sync_hosts(&self, domains: &[String]) -> Result<(), ShimClientError>;
    /// Removes `path` (inside a `.locald` directory) although root owns parts of it.
    fn cleanup(&self, path: &Path) -> Result<(), ShimClientError>;
    fn mount_loop(
        &self,
        image: &Path,
        target: &Path,
        fstype: &str,
        read_write: bool,
    ) -> Result<(), ShimClientError>;
    fn unmount_loop(&self, target: &Path) -> Result<(), ShimClientError>;
    /// Who listens on `port`: one entry per process.
    fn debug_port(&self, port: u16) -> Result<Vec<PortOwner>, ShimClientError>;
    /// The command that runs the bundle `run` names. `control` becomes the shim's fd 3: stop
    /// requests (signal names, one per line) go in, `started`/`exited` lines come out, and its
    /// EOF — the daemon is gone — kills the container. The caller spawns it and keeps `control`
    /// open until the spawn returned.
    fn bundle_run(&self, run: &BundleRunRequest, control: RawFd) -> Result<Command, ShimClientError>;
}

/// The daemon's (and the CLI's) one way to find the shim: `$LOCALD_SHIM`, else the standard
/// places, checked and handshaken now, once.
pub fn discover() -> Arc<dyn Privileged> {
    let shim: Arc<dyn Privileged> = match Shim::discover() {
        Ok(shim) => Arc::new(shim),
        Err(reason) => Arc::new(Unavailable::new(reason)),
    };
    let root_jobs = std::env::var_os(super::root::ROOT_JOBS_ENV).is_none_or(|v| v != "0");
    if nix::unistd::geteuid().is_root() && root_jobs { Arc::new(super::AsRoot::new(shim)) } else { shim }
}

/// No usable shim: every request fails with the reason discovery gave.
#[derive(Debug, Clone)]
pub struct Unavailable {
    reason: Arc<ShimClientError>,
}

impl Unavailable {
    pub fn new(reason: ShimClientError) -> Self {
        Self { reason: Arc::new(reason) }
    }

    fn refuse<T>(&self) -> Result<T, ShimClientError> {
        Err(ShimClientError::Unavailable(self.reason.clone()))
    }
}

impl Privileged for Unavailable {
    fn unavailable(&self) -> Option<Arc<ShimClientError>> {
        Some(self.reason.clone())
    }

    fn mode(&self) -> Option<ShimMode> {
        None
    }

    fn unavailable_beyond_bind(&self, _: &'static str) -> Option<Arc<ShimClientError>> {
        Some(self.reason.clone())
    }

    fn bind(&self, _: u16, _: Option<IpAddr>) -> Result<TcpListener, ShimClientError> {
        self.refuse()
    }

    fn sync_hosts(&self, _: &[String]) -> Result<(), ShimClientError> {
        self.refuse()
    }

    fn cleanup(&self, _: &Path) -> Result<(), ShimClientError> {
        self.refuse()
    }

    fn mount_loop(&self, _: &Path, _: &Path, _: &str, _: bool) -> Result<(), ShimClientError> {
        self.refuse()
    }

    fn unmount_loop(&self, _: &Path) -> Result<(), ShimClientError> {
        self.refuse()
    }

    fn debug_port(&self, _: u16) -> Result<Vec<PortOwner>, ShimClientError> {
        self.refuse()
    }

    fn bundle_run(&self, _: &BundleRunRequest, _: RawFd) -> Result<Command, ShimClientError> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_shim_every_request_fails_with_the_discovery_reason_in_its_words() {
        let reason = ShimClientError::NotFound { reasons: "/x/locald-shim does not exist".into() };
        let text = reason.to_string();
        let none = Unavailable::new(reason);
        assert_eq!(none.unavailable().map(|r| r.to_string()).as_deref(), Some(text.as_str()));
        let errors = [
            none.bind(443, None).unwrap_err(),
            none.sync_hosts(&["a.test".into()]).unwrap_err(),
            none.cleanup(Path::new("/p/.locald")).unwrap_err(),
            none.mount_loop(Path::new("i"), Path::new("t"), "ext4", false).unwrap_err(),
            none.unmount_loop(Path::new("t")).unwrap_err(),
            none.debug_port(80).unwrap_err(),
            none.bundle_run(
                &BundleRunRequest { bundle: "b".into(), id: "id".into(), cache: None, lowers: vec![] },
                3,
            )
            .unwrap_err(),
        ];
        for error in errors {
            assert_eq!(error.to_string(), text);
            assert!(
                matches!(&error, ShimClientError::Unavailable(r) if matches!(**r, ShimClientError::NotFound { .. }))
            );
        }
    }
}
