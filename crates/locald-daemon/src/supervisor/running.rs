//! A running project and the sets of them that the supervisor publishes: each change to the
//! set is one publication, which the proxy's routes and `/etc/hosts` follow.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use locald_core::config::{Config, serving};
use locald_core::ipc::{ProjectStatus, ServiceState, ServiceStatus};

use super::service::Handle;
use super::{Supervisor, process};

pub struct Project {
    pub config: Config,
    pub services: Vec<Handle>,
    pub log_dir: PathBuf,
    pub live: broadcast::Sender<locald_core::ipc::LogLine>,
}

impl Project {
    pub fn handle(&self, name: &str) -> Option<&Handle> {
        self.services.iter().find(|h| h.service.name == name)
    }

    pub fn status(&self) -> ProjectStatus {
        ProjectStatus {
            name: self.config.project.name.clone(),
            dir: self.config.project.dir.clone(),
            domain: self.config.project.domain.clone(),
            checkout: self.config.project.checkout.clone(),
            mounts: Vec::new(),
            watching: false,
            services: self
                .services
                .iter()
                .map(|h| {
                    let s = h.status.borrow();
                    let port = s.port.unwrap_or(h.service.port);
                    let completed = s.state == ServiceState::Completed;
                    ServiceStatus {
                        name: h.service.name.clone(),
                        state: s.state,
                        pid: s.pid,
                        port,
                        url: serving::shown_address(h.service.serves, completed, &h.service.url, port),
                        serves: h.service.serves,
                        healthy: s.healthy,
                        restarts: s.restarts,
                        uptime_secs: s.since.map(|t| t.elapsed().as_secs()),
                        exit_code: s.exit.map(process::Exit::code),
                        changed: None,
                    }
                })
                .collect(),
        }
    }
}

/// The running projects as one change to their set left them; what the proxy routes and
/// `/etc/hosts` lists follow these ([`Supervisor::running`]).
#[derive(Clone, Default)]
pub struct Running {
    /// Counts the changes: the one that made this set and every earlier one are in it.
    pub generation: u64,
    pub projects: Vec<Arc<Project>>,
}

impl Supervisor {
    /// Every set of running projects from now on, starting with the current one.
    pub fn running(&self) -> watch::Receiver<Running> {
        self.running.subscribe()
    }

    /// The generation of the set of running projects now ([`Running::generation`]).
    pub fn generation(&self) -> u64 {
        self.running.borrow().generation
    }

    /// Called with the `projects` lock held, after every change to them.
    pub(super) fn publish(&self, projects: &BTreeMap<PathBuf, Arc<Project>>) {
        self.running.send_modify(|running| {
            running.generation += 1;
            running.projects = projects.values().cloned().collect();
        });
    }
}
