//! All projects of one user: starting them from their config, answering status, stopping
//! them in reverse dependency order, and remembering which are up so that a daemon started
//! after a crash clears the old processes and brings the same projects up again.

mod apply;
mod cgroup;
mod lifecycle;
mod listening;
pub(crate) mod output;
mod persist;
mod plan;
mod preflight;
pub(crate) mod process;
mod readiness;
mod running;
pub(crate) mod service;
#[cfg(target_os = "linux")]
mod spawn;

pub use apply::{Applied, Want};
pub use running::{Project, Running};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot, watch};

use locald_core::config::{self, Config, ConfigError, PortSource, SelectError, ports};
use locald_core::ipc::ServiceState;

use crate::container::prepare;
use crate::shim::{PortOwner, Privileged, ShimClientError};
use locald_ca::CaError;
use locald_core::paths::PathError;
use preflight::{ca_files, check_ports_free, container_runtime};
use service::{Control, Handle};

pub struct Supervisor {
    state_dir: PathBuf,
    /// Identifies this state dir in the environment of every process started from it.
    owner: String,
    projects: Mutex<BTreeMap<PathBuf, Arc<Project>>>,
    /// Sent to under the `projects` lock, so publications come in the order of the changes.
    running: watch::Sender<Running>,
    cgroups: Option<Arc<cgroup::Cgroups>>,
    /// Found once when the daemon started.
    privileged: Arc<dyn Privileged>,
    /// Held while an `up` starts or changes a project ([`Supervisor::up_with`]).
    applying: tokio::sync::Mutex<()>,
}

/// Free ports that no other project of this daemon holds.
struct DaemonPorts(Vec<u16>);

impl PortSource for DaemonPorts {
    fn assign(&mut self, project: &str, service: &str) -> Option<u16> {
        let port = ports::find_free(project, service, &|p| self.0.contains(&p))?;
        self.0.push(port);
        Some(port)
    }
}

/// Ports handed out without binding anything: each service's preferred port (the next one when
/// another service already has it). For reading what a file asks for besides ports (the images
/// `up` pulls before it starts anything) when `up` assigns the real ports right after: probing
/// costs three sockets per service, and `up` would pay it twice.
struct Unprobed(Vec<u16>);

impl PortSource for Unprobed {
    fn assign(&mut self, project: &str, service: &str) -> Option<u16> {
        let port = ports::candidates(project, service).find(|p| !self.0.contains(p))?;
        self.0.push(port);
        Some(port)
    }
}

impl Supervisor {
    pub fn new(state_dir: PathBuf, privileged: Arc<dyn Privileged>) -> Self {
        Self::with_cgroups(state_dir, privileged, cgroup::Cgroups::detect)
    }

    fn with_cgroups(
        state_dir: PathBuf,
        privileged: Arc<dyn Privileged>,
        detect: fn(&str) -> Option<cgroup::Cgroups>,
    ) -> Self {
        let owner = format!("{:016x}", fnv(state_dir.as_os_str().as_encoded_bytes()));
        let cgroups = detect(&owner).map(Arc::new);
        let (running, _) = watch::channel(Running::default());
        Self {
            state_dir,
            owner,
            projects: Mutex::new(BTreeMap::new()),
            running,
            cgroups,
            privileged,
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// What root does for this daemon, for everyone else in it that needs that.
    pub fn privileged(&self) -> Arc<dyn Privileged> {
        self.privileged.clone()
    }
    pub fn log_dir(&self, project_dir: &Path) -> PathBuf {
        self.state_dir.join("logs").join(format!("{:016x}", fnv(project_dir.as_os_str().as_encoded_bytes())))
    }

    pub fn get(&self, dir: &Path) -> Option<Arc<Project>> {
        self.projects.lock().unwrap_or_else(|e| e.into_inner()).get(dir).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Project>> {
        self.projects.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// The resolved config of `dir` without starting anything (ports as they would be now).
    pub fn load(&self, dir: &Path) -> Result<Config, ConfigError> {
        config::load(dir, &mut DaemonPorts(self.ports_in_use()))
    }

    /// The resolved config of `dir` for what does not depend on its ports (which images to
    /// pull): their ports are not probed, so they may be taken.
    pub fn load_unprobed(&self, dir: &Path) -> Result<Config, ConfigError> {
        config::load(dir, &mut Unprobed(Vec::new()))
    }

    fn ports_in_use(&self) -> Vec<u16> {
        self.all().iter().flat_map(|p| p.config.services.iter().map(|s| s.port)).collect()
    }

    /// Starts the project in `dir` with its default services, or returns the running one
    /// (`true` = it was running) as it is.
    pub fn up(&self, dir: &Path) -> Result<(Arc<Project>, bool), UpError> {
        let dir = dir.canonicalize().map_err(|e| UpError::Dir(dir.to_owned(), e))?;
        if let Some(project) = self.get(&dir) {
            return Ok((project, true));
        }
        self.up_selected(&dir, &Want::default()).map(|(project, _)| (project, false))
    }

    /// Starts the project in the canonical `dir` with the services `want` selects; returns
    /// them with it.
    fn up_selected(&self, dir: &Path, want: &Want) -> Result<(Arc<Project>, Vec<String>), UpError> {
        match self.up_locked(dir.to_owned(), want) {
            // Naming the holder spawns the shim, so it waits until the projects lock is free:
            // a slow shim must not stall every other request of the daemon.
            Err(UpError::PortInUse { file, service, port, owner: None }) => {
                let owner = crate::doctor::port_owner(&*self.privileged, port);
                Err(UpError::PortInUse { file, service, port, owner })
            }
            other => other,
        }
    }

    /// The part of [`Supervisor::up_selected`] under the projects lock; it never runs the shim
    /// (a container's shim is started later, by its service's task).
    fn up_locked(&self, dir: PathBuf, want: &Want) -> Result<(Arc<Project>, Vec<String>), UpError> {
        // One lock from lookup to insert, and nothing in between awaits: two `up`s of the same
        // project can never both start it.
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(project) = projects.get(&dir) {
            let selected = project.services.iter().map(|h| h.service.name.clone()).collect();
            return Ok((project.clone(), selected));
        }
        let taken = projects.values().flat_map(|p| p.config.services.iter().map(|s| s.port)).collect();
        let config = config::load(&dir, &mut DaemonPorts(taken))?;
        let selected = config.select(&want.services, &want.profiles)?;
        let chosen = Config {
            project: config.project.clone(),
            services: config.services.iter().filter(|s| selected.contains(&s.name)).cloned().collect(),
        };
        check_ports_free(&chosen)?;
        let runtime = container_runtime(&chosen, &self.privileged)?;
        let ca_files = ca_files(&chosen)?;
        let log_dir = self.log_dir(&dir);
        let (live, _) = broadcast::channel(4096);
        let at = apply::Spawn {
            dir: &dir,
            log_dir: &log_dir,
            live: &live,
            runtime: runtime.as_ref(),
            ca: ca_files.as_ref(),
        };
        let handles = self.spawn(&config, &selected, HashMap::new(), &at)?;
        let project = Arc::new(Project { config, services: handles, log_dir, live });
        projects.insert(dir, project.clone());
        self.publish(&projects);
        drop(projects);
        self.persist();
        Ok((project, selected))
    }

    /// Stops and forgets the project; false when it was not running.
    pub async fn down(&self, dir: &Path) -> bool {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let project = {
            let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
            let project = projects.remove(&dir);
            if project.is_some() {
                self.publish(&projects);
            }
            project
        };
        self.persist();
        match project {
            Some(project) => {
                stop_all(project).await;
                true
            }
            None => false,
        }
    }

    pub async fn shutdown(&self) {
        let projects: Vec<Arc<Project>> = {
            let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
            let taken = std::mem::take(&mut *projects);
            self.publish(&projects);
            taken.into_values().collect()
        };
        self.persist();
        let stops: Vec<_> = projects.into_iter().map(|p| tokio::spawn(stop_all(p))).collect();
        for stop in stops {
            let _ = stop.await;
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove();
        }
    }
}

/// Sends a control message and waits for it to be carried out.
pub async fn control(handle: &Handle, make: fn(oneshot::Sender<()>) -> Control) -> bool {
    let (ack, done) = oneshot::channel();
    handle.control.send(make(ack)).is_ok() && done.await.is_ok()
}

/// Dependents first, so nothing loses a dependency while it still runs.
async fn stop_all(project: Arc<Project>) {
    for handle in project.services.iter().rev() {
        let state = handle.status.borrow().state;
        if !matches!(state, ServiceState::Stopped) {
            control(handle, Control::Stop).await;
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

/// Why `up` started nothing. `file` is the project's `locald.toml`, `service` the one at fault.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(
        "{}: service {service:?} runs in a container, which needs Linux; on {} run this project in locald's \
         Lima VM, which shares your home: `locald-lima up` (the flake's packages.lima), or \
         `limactl start --name=locald lima/locald.yaml` once and then `limactl shell locald locald up` here",
        .file.display(),
        platform_name(.os)
    )]
    Unsupported { file: PathBuf, service: String, os: String },
    #[error("cannot open logs in {0}: {1}")]
    Logs(PathBuf, std::io::Error),
    /// `owner`: who holds it, when the shim could say.
    #[error(
        "{}: service {service:?} wants port {port}, which is already in use by {} — stop it or choose another port",
        .file.display(),
        crate::doctor::describe_owner(.owner.as_ref())
    )]
    PortInUse { file: PathBuf, service: String, port: u16, owner: Option<PortOwner> },
    #[error("{}: service {service:?}: {source}", .file.display())]
    Image { file: PathBuf, service: String, source: Box<prepare::PrepareError> },
    #[error(
        "{}: service {service:?} runs in a container, which needs the setuid locald-shim: {source}",
        .file.display()
    )]
    NoShim { file: PathBuf, service: String, source: Arc<ShimClientError> },
    #[error("no cache directory for images: {0}")]
    ImageCache(#[source] PathError),
    #[error("{}: service {service:?} has trust_local_ca: {source}", .file.display())]
    Ca { file: PathBuf, service: String, source: CaError },
}

fn platform_name(os: &str) -> &str {
    if os == "macos" { "macOS" } else { os }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A supervisor without cgroups (tests must not leave cgroups behind) asking `privileged`.
    fn supervisor(state: &Path, privileged: Arc<dyn Privileged>) -> Arc<Supervisor> {
        Arc::new(Supervisor::with_cgroups(state.to_owned(), privileged, |_| None))
    }

    fn project(toml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("locald.toml"), toml).unwrap();
        dir
    }

    #[test]
    fn loading_for_the_images_binds_no_port() {
        let (project, service) = ("shop", "web");
        let preferred = ports::preferred(project, service);
        // Held here, so a probing load could not hand it out.
        let _held = std::net::TcpListener::bind(("127.0.0.1", preferred));
        let mut unprobed = Unprobed(Vec::new());
        assert_eq!(unprobed.assign(project, service), Some(preferred), "no probe: the preferred port");
        let again = unprobed.assign(project, service).unwrap();
        assert_ne!(again, preferred, "two services never get the same port");
        assert!(ports::RANGE.contains(&again));
    }

    #[test]
    fn naming_a_ports_holder_runs_the_shim_only_once_the_projects_lock_is_free() {
        use crate::shim::fake::{Call, Fake};
        use std::sync::{OnceLock, Weak};
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let dir = project(&format!("[services.web]\ncommand = \"sleep 60\"\nport = {port}\n"));
        let state = tempfile::tempdir().unwrap();

        let watched: Arc<OnceLock<Weak<Supervisor>>> = Arc::default();
        let seen = watched.clone();
        let owner = PortOwner { process: Some((7, "nginx".into())), uid: 1000 };
        let fake = Fake::new()
            .with_owners(vec![owner])
            .before_each(move |call| {
                let supervisor = seen.get().and_then(Weak::upgrade).expect("the supervisor is alive");
                assert!(supervisor.projects.try_lock().is_ok(), "{call:?} ran under the projects lock");
            })
            .shared();
        let supervisor = supervisor(state.path(), fake.clone());
        watched.set(Arc::downgrade(&supervisor)).unwrap();

        let refused = supervisor.up(dir.path()).err().expect("the port is taken");
        assert!(
            refused.to_string().contains(&format!(
                "wants port {port}, which is already in use by pid 7 (uid 1000, nginx) — "
            )),
            "{refused}"
        );
        assert_eq!(fake.calls(), [Call::DebugPort(port)]);
        assert!(supervisor.all().is_empty(), "nothing started");
    }

    #[test]
    fn a_container_project_without_a_shim_is_refused_with_the_discovery_reason() {
        let dir = project("[services.db]\nimage = \"./rootfs\"\ncommand = \"true\"\n");
        std::fs::create_dir_all(dir.path().join("rootfs/bin")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let reason = ShimClientError::NotFound { reasons: "/x/locald-shim does not exist".into() };
        let supervisor = supervisor(state.path(), Arc::new(crate::shim::Unavailable::new(reason)));

        let refused = supervisor.up(dir.path()).err().expect("no shim, no container");
        let text = refused.to_string();
        assert!(
            text.ends_with(
                "service \"db\" runs in a container, which needs the setuid locald-shim: \
                 no usable locald-shim: /x/locald-shim does not exist — run `sudo locald admin setup`"
            ),
            "{text}"
        );
        let cause = std::error::Error::source(&refused).expect("the reason is kept as the cause");
        assert!(cause.to_string().starts_with("no usable locald-shim"), "{cause}");
        assert!(supervisor.all().is_empty(), "nothing started");
    }

    #[test]
    fn a_container_project_with_the_ports_only_shim_is_refused_naming_the_full_install() {
        use crate::shim::fake::Fake;
        let dir = project("[services.db]\nimage = \"./rootfs\"\ncommand = \"true\"\n");
        std::fs::create_dir_all(dir.path().join("rootfs/bin")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let fake = Fake::new().ports_only().shared();
        let supervisor = supervisor(state.path(), fake.clone());

        let text = supervisor.up(dir.path()).err().expect("ports-only, no container").to_string();
        assert!(
            text.ends_with(
                "service \"db\" runs in a container, which needs the setuid locald-shim: running a \
                 container needs the full locald-shim install: /fake/locald-shim holds only \
                 cap_net_bind_service (capabilities mode, binds ports 1-1023 and nothing else) — run \
                 `sudo locald admin setup` for the setuid install"
            ),
            "{text}"
        );
        assert!(fake.calls().is_empty(), "the shim was not asked: {:?}", fake.calls());
        assert!(supervisor.all().is_empty(), "nothing started");
    }
}
