//! A [`Privileged`] for unit tests: records every request instead of running the shim, and
//! answers as told. Only in test builds.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use locald_shim_protocol::ShimMode;
use locald_shim_protocol::protocol::BundleRunRequest;

use super::{PortOwner, Privileged, ShimClientError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Bind { port: u16, address: Option<IpAddr> },
    SyncHosts(Vec<String>),
    Cleanup(PathBuf),
    MountLoop { image: PathBuf, target: PathBuf, fstype: String, read_write: bool },
    UnmountLoop(PathBuf),
    DebugPort(u16),
    BundleRun { bundle: PathBuf, id: String },
}

type Hook = Box<dyn Fn(&Call) + Send + Sync>;

#[derive(Default)]
pub struct Fake {
    calls: Mutex<Vec<Call>>,
    /// The message every request fails with, as the shim's own refusal would.
    failure: Option<String>,
    owners: Vec<PortOwner>,
    /// Runs at each request before it is recorded: a test's check of the caller's state.
    before_each: Option<Hook>,
    /// Answers as the `--ports-only` install: bind only.
    ports_only: bool,
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake").field("calls", &self.calls()).field("failure", &self.failure).finish()
    }
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn failing(mut self, message: &str) -> Self {
        self.failure = Some(message.to_owned());
        self
    }

    pub fn with_owners(mut self, owners: Vec<PortOwner>) -> Self {
        self.owners = owners;
        self
    }

    pub fn before_each(mut self, hook: impl Fn(&Call) + Send + Sync + 'static) -> Self {
        self.before_each = Some(Box::new(hook));
        self
    }

    pub fn ports_only(mut self) -> Self {
        self.ports_only = true;
        self
    }

    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, call: Call) -> Result<(), ShimClientError> {
        if let Some(hook) = &self.before_each {
            hook(&call);
        }
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call);
        match &self.failure {
            Some(message) => Err(ShimClientError::Failed { class: None, message: message.clone() }),
            None => Ok(()),
        }
    }
}

impl Privileged for Fake {
    fn unavailable(&self) -> Option<Arc<ShimClientError>> {
        None
    }

    fn mode(&self) -> Option<ShimMode> {
        Some(if self.ports_only { ShimMode::Capabilities } else { ShimMode::Setuid })
    }

    fn unavailable_beyond_bind(&self, what: &'static str) -> Option<Arc<ShimClientError>> {
        self.ports_only
            .then(|| Arc::new(ShimClientError::PortsOnly { path: PathBuf::from("/fake/locald-shim"), what }))
    }

    fn bind(&self, port: u16, address: Option<IpAddr>) -> Result<TcpListener, ShimClientError> {
        self.record(Call::Bind { port, address })?;
        // Any port will do: what is under test is who asked for which.
        let local = address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        TcpListener::bind((local, 0))
            .map_err(|e| ShimClientError::Failed { class: None, message: e.to_string() })
    }

    fn sync_hosts(&self, domains: &[String]) -> Result<(), ShimClientError> {
        self.record(Call::SyncHosts(domains.to_vec()))
    }

    fn cleanup(&self, path: &Path) -> Result<(), ShimClientError> {
        self.record(Call::Cleanup(path.to_owned()))
    }

    fn mount_loop(
        &self,
        image: &Path,
        target: &Path,
        fstype: &str,
        read_write: bool,
    ) -> Result<(), ShimClientError> {
        self.record(Call::MountLoop {
            image: image.to_owned(),
            target: target.to_owned(),
            fstype: fstype.to_owned(),
            read_write,
        })
    }

    fn unmount_loop(&self, target: &Path) -> Result<(), ShimClientError> {
        self.record(Call::UnmountLoop(target.to_owned()))
    }

    fn debug_port(&self, port: u16) -> Result<Vec<PortOwner>, ShimClientError> {
        self.record(Call::DebugPort(port))?;
        Ok(self.owners.clone())
    }

    fn bundle_run(&self, run: &BundleRunRequest, _control: RawFd) -> Result<Command, ShimClientError> {
        self.record(Call::BundleRun { bundle: run.bundle.clone(), id: run.id.clone() })?;
        Ok(Command::new("true"))
    }
}
