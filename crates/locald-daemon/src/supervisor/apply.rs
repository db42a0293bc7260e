//! `up` as the user asks it: a subset of services (with what they depend on) or the profiles to
//! add, and, on a project that already runs, its `locald.toml` applied as it is now
//! ([`Plan`]): changed services and their dependents restarted, new ones started, removed ones
//! stopped, the rest left running. A file that does not resolve leaves the project untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use locald_core::config::{self, Config, PortSource, ports};
use locald_core::ipc::LogLine;

use super::output::Sink;
use super::plan::Plan;
use super::service::{self, Control, Handle};
use super::{Project, Supervisor, UpError, ca_files, check_ports_free, container_runtime, control};
use crate::container::prepare;
use crate::logs::LogFile;
use locald_ca::ca_bundle;

/// What an `up` asks for; the default is every service outside a profile.
#[derive(Debug, Clone, Default)]
pub struct Want {
    pub services: Vec<String>,
    pub profiles: Vec<String>,
}

pub struct Applied {
    pub project: Arc<Project>,
    /// The project was running before this `up`.
    pub attached: bool,
    /// The services this `up` asked for (what it waits for), in start order.
    pub selected: Vec<String>,
    /// What was done to match a changed file, in one line.
    pub change: Option<String>,
}

/// A running project keeps its ports across a reload (else every `$PORT` would change and
/// everything restart); new services get free ones that none of them holds.
pub(super) struct KeepPorts {
    pub current: HashMap<String, u16>,
    pub taken: Vec<u16>,
}

impl PortSource for KeepPorts {
    fn assign(&mut self, project: &str, service: &str) -> Option<u16> {
        if let Some(&port) = self.current.get(service).filter(|p| !self.taken.contains(p)) {
            self.taken.push(port);
            return Some(port);
        }
        let current: Vec<u16> = self.current.values().copied().collect();
        let port = ports::find_free(project, service, &|p| self.taken.contains(&p) || current.contains(&p))?;
        self.taken.push(port);
        Some(port)
    }
}

impl Supervisor {
    /// Starts the project in `dir` with what `want` selects, or applies its file to the
    /// running one and starts what `want` adds.
    pub async fn up_with(&self, dir: &Path, want: &Want) -> Result<Applied, UpError> {
        let dir = dir.canonicalize().map_err(|e| UpError::Dir(dir.to_owned(), e))?;
        // One apply at a time: two `up`s of a changed project must not both restart it.
        let _applying = self.applying.lock().await;
        let Some(old) = self.get(&dir) else {
            let (project, selected) = self.up_selected(&dir, want)?;
            return Ok(Applied { project, attached: false, selected, change: None });
        };
        let taken = self
            .all()
            .iter()
            .filter(|p| p.config.project.dir != dir)
            .flat_map(|p| p.config.services.iter().map(|s| s.port))
            .collect();
        let current = old.config.services.iter().map(|s| (s.name.clone(), s.port)).collect();
        let config = config::load(&dir, &mut KeepPorts { current, taken })?;
        let selected = config.select(&want.services, &want.profiles)?;
        let running: Vec<String> = old.services.iter().map(|h| h.service.name.clone()).collect();
        let plan = Plan::new(&old.config, &running, &config, &selected);
        if plan.is_empty() && config == old.config {
            return Ok(Applied { project: old, attached: true, selected, change: None });
        }
        let added: Vec<&config::Service> =
            config.services.iter().filter(|s| plan.added.contains(&s.name)).collect();
        check_ports_free(&Config {
            project: config.project.clone(),
            services: added.into_iter().cloned().collect(),
        })?;
        let runtime = container_runtime(&config, &self.privileged)?;
        let ca = ca_files(&config)?;
        for name in &plan.stop {
            if let Some(handle) = old.handle(name) {
                control(handle, Control::Stop).await;
            }
        }
        let reuse: HashMap<String, Handle> = old
            .services
            .iter()
            .filter(|h| {
                config.services.iter().any(|s| s.name == h.service.name)
                    && !plan.stop.contains(&h.service.name)
            })
            .map(|h| (h.service.name.clone(), h.clone()))
            .collect();
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        let spawn = Spawn {
            dir: &dir,
            log_dir: &old.log_dir,
            live: &old.live,
            runtime: runtime.as_ref(),
            ca: ca.as_ref(),
        };
        let services = self.spawn(&config, &plan.start, reuse, &spawn)?;
        // Services added by naming them are what was asked, not a change of the file.
        let change = plan.describe(config::FILE_NAME).filter(|_| config != old.config);
        let project =
            Arc::new(Project { config, services, log_dir: old.log_dir.clone(), live: old.live.clone() });
        projects.insert(dir, project.clone());
        self.publish(&projects);
        drop(projects);
        Ok(Applied { project, attached: true, selected, change })
    }

    /// Service tasks for `config`'s services, in its start order: `reuse`d ones as they are,
    /// a new task for each of `start`, none for the others. Every log file is opened before
    /// anything starts.
    pub(super) fn spawn(
        &self,
        config: &Config,
        start: &[String],
        mut reuse: HashMap<String, Handle>,
        at: &Spawn,
    ) -> Result<Vec<Handle>, UpError> {
        let mut sinks = HashMap::new();
        for name in start {
            let file =
                LogFile::open(at.log_dir, name).map_err(|e| UpError::Logs(at.log_dir.to_owned(), e))?;
            sinks.insert(
                name.clone(),
                Sink { file: Arc::new(Mutex::new(file)), live: at.live.clone(), service: name.clone() },
            );
        }
        let key = at.log_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut handles: Vec<Handle> = Vec::new();
        for service in &config.services {
            if let Some(handle) = reuse.remove(&service.name) {
                handles.push(handle);
                continue;
            }
            let Some(sink) = sinks.remove(&service.name) else { continue };
            // Start order puts dependencies first, and a selection holds what its services
            // depend on, so their handles exist.
            let deps = service
                .depends_on
                .iter()
                .filter_map(|d| {
                    Some((d.clone(), handles.iter().find(|h| h.service.name == d.name)?.status.clone()))
                })
                .collect();
            let slot = self.cgroups.clone().map(|c| (c, format!("{key}.{}", service.name)));
            let ca = at.ca.cloned().filter(|_| service.trust_local_ca);
            let container = match (at.runtime, &service.container) {
                (Some(runtime), Some(_)) => Some(service::ContainerSlot {
                    runtime: runtime.clone(),
                    project: at.dir.to_owned(),
                    id: prepare::container_id(&key, &service.name),
                    ca: ca.clone(),
                }),
                _ => None,
            };
            // A container gets its cgroup from the shim (under locald/<uid>/), not from us.
            let slot = if container.is_some() { None } else { slot };
            // Only the running copy gets the CA variables: `config show` keeps what the user wrote.
            let mut running = service.clone();
            if let Some(files) = &ca {
                running.env.extend(ca_bundle::service_env(service, files));
            }
            handles.push(service::start(running, deps, sink, self.owner.clone(), slot, container));
        }
        Ok(handles)
    }
}

/// Where new service tasks of a project log and what they run with.
pub(super) struct Spawn<'a> {
    pub dir: &'a PathBuf,
    pub log_dir: &'a Path,
    pub live: &'a broadcast::Sender<LogLine>,
    pub runtime: Option<&'a Arc<prepare::Runtime>>,
    pub ca: Option<&'a ca_bundle::CaFiles>,
}
