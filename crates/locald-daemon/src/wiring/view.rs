//! The proxy's view of a supervised service: its state from the service task's watch, its last
//! lines from its log file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use locald_core::config::Service;
use locald_proxy::{ServiceNow, ServiceView};

use crate::supervisor::process::Exit;
use crate::supervisor::service::{Handle, Snapshot};

/// Holds no control sender: a route table outliving its project does not keep its tasks alive.
pub(super) struct View {
    status: watch::Receiver<Snapshot>,
    service: Arc<Service>,
    log_dir: PathBuf,
}

impl View {
    pub(super) fn new(handle: &Handle, log_dir: &Path) -> Self {
        Self { status: handle.status.clone(), service: handle.service.clone(), log_dir: log_dir.to_owned() }
    }
}

impl ServiceView for View {
    fn now(&self) -> ServiceNow {
        let snapshot = self.status.borrow();
        ServiceNow { state: snapshot.state, exit_code: snapshot.exit.map(Exit::code), port: snapshot.port }
    }

    fn recent_lines(&self, count: usize) -> Vec<String> {
        crate::logs::last_lines(&self.log_dir, &self.service.name, count)
    }
}
