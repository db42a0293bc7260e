//! The life of one service: wait for dependencies, run, check health and liveness, restart
//! with backoff, obey start/stop/restart. One tokio task per service; its state is published
//! on a watch channel that `up`, `status` and dependents read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use locald_core::config::{Check, Condition, Dependency, RestartPolicy, Service};
use locald_core::ipc::ServiceState;

use super::cgroup::Cgroups;
use super::output::{Sink, pump};
use super::process::{self, Exit, Output, Running};
use crate::container::prepare::{self, Runtime};
use crate::health::{self, Tracker, Verdict};
use locald_ca::ca_bundle::CaFiles;

/// How long a SIGKILL relayed through the shim may take before the shim itself is killed.
const SHIM_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub healthy: Option<bool>,
    pub restarts: u32,
    pub since: Option<Instant>,
    pub exit: Option<Exit>,
    pub detail: Option<String>,
}

impl Snapshot {
    fn new() -> Self {
        Self {
            state: ServiceState::Waiting,
            pid: None,
            healthy: None,
            restarts: 0,
            since: None,
            exit: None,
            detail: None,
        }
    }

    fn satisfies(&self, condition: Condition) -> bool {
        match condition {
            Condition::Started => self.pid.is_some() || self.state == ServiceState::Completed,
            Condition::Healthy => self.healthy == Some(true),
            Condition::CompletedSuccessfully => self.state == ServiceState::Completed,
        }
    }
}

pub enum Control {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

/// What the daemon keeps of a running service task.
#[derive(Clone)]
pub struct Handle {
    pub service: Arc<Service>,
    pub status: watch::Receiver<Snapshot>,
    pub control: mpsc::UnboundedSender<Control>,
}

/// Where a service's cgroups are made (when the user has a delegated subtree), and its name.
pub type CgroupSlot = Option<(Arc<Cgroups>, String)>;

/// For an image service: how its container is made and run.
#[derive(Clone)]
pub struct ContainerSlot {
    pub runtime: Arc<Runtime>,
    pub project: PathBuf,
    pub id: String,
    /// The CA files to mount, when the service has `trust_local_ca`.
    pub ca: Option<CaFiles>,
}

pub fn start(
    service: Service,
    deps: Vec<(Dependency, watch::Receiver<Snapshot>)>,
    sink: Sink,
    owner: String,
    cgroup: CgroupSlot,
    container: Option<ContainerSlot>,
) -> Handle {
    let (status_tx, status) = watch::channel(Snapshot::new());
    let (control, control_rx) = mpsc::unbounded_channel();
    let service = Arc::new(service);
    tokio::spawn(
        Task {
            service: service.clone(),
            deps,
            sink,
            owner,
            cgroup,
            container,
            status: status_tx,
            control: control_rx,
        }
        .run(),
    );
    Handle { service, status, control }
}

struct Task {
    service: Arc<Service>,
    deps: Vec<(Dependency, watch::Receiver<Snapshot>)>,
    sink: Sink,
    owner: String,
    cgroup: CgroupSlot,
    container: Option<ContainerSlot>,
    status: watch::Sender<Snapshot>,
    control: mpsc::UnboundedReceiver<Control>,
}

/// Why a run ended.
enum End {
    Exited(Exit),
    /// The liveness check failed and the process was stopped.
    Liveness(Exit),
    /// Stopped on request; the acknowledgement is sent once the group is gone.
    Stopped(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

impl Task {
    fn set(&self, f: impl FnOnce(&mut Snapshot)) {
        self.status.send_modify(f);
    }

    fn set_state(&self, state: ServiceState, detail: Option<String>) {
        self.set(|s| {
            s.state = state;
            s.detail = detail;
        });
    }

    async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            if !self.wait_for_dependencies().await {
                if !self.idle().await {
                    return;
                }
                continue;
            }
            let started = Instant::now();
            let cgroup = self.cgroup.as_ref().and_then(|(cgroups, name)| match cgroups.create(name) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => {
                    self.sink.note(format!("no cgroup ({e}); process group only"));
                    None
                }
            });
            let spawned = match &self.container {
                Some(slot) => self.spawn_container(slot.clone()).await,
                None => process::spawn(&self.service, &self.owner, cgroup),
            };
            let end = match spawned {
                Ok((running, output)) => self.supervise(running, output).await,
                Err(e) => {
                    self.sink.note(format!("cannot start: {e}"));
                    End::Exited(Exit::Code(127))
                }
            };
            let (exit, liveness) = match end {
                End::Exited(exit) => (exit, false),
                End::Liveness(exit) => (exit, true),
                End::Stopped(ack) => {
                    self.set_state(ServiceState::Stopped, None);
                    let _ = ack.send(());
                    attempt = 0;
                    if !self.idle().await {
                        return;
                    }
                    continue;
                }
                End::Restart(ack) => {
                    let _ = ack.send(());
                    attempt = 0;
                    continue;
                }
            };
            if started.elapsed() > self.service.restart.max_backoff * 2 {
                attempt = 0;
            }
            let restart = &self.service.restart;
            let wanted = liveness
                || match restart.policy {
                    RestartPolicy::No => false,
                    RestartPolicy::OnFailure => !exit.success(),
                    RestartPolicy::Always => true,
                };
            if !wanted {
                let state = if exit.success() { ServiceState::Completed } else { ServiceState::Failed };
                self.set_state(state, Some(exit.describe()));
            } else if attempt >= restart.max_restarts {
                self.sink.note(format!("gave up after {attempt} restarts"));
                self.set_state(
                    ServiceState::Failed,
                    Some(format!("{}; gave up after {attempt} restarts", exit.describe())),
                );
            } else {
                let delay = restart.delay(attempt);
                attempt += 1;
                self.sink.note(format!("restarting in {}", humantime::format_duration(delay)));
                self.set(|s| {
                    s.state = ServiceState::BackingOff;
                    s.restarts += 1;
                    s.detail = Some(exit.describe());
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    control = self.control.recv() => match control {
                        None => return,
                        Some(Control::Stop(ack)) => {
                            self.set_state(ServiceState::Stopped, None);
                            let _ = ack.send(());
                        }
                        Some(Control::Start(ack) | Control::Restart(ack)) => {
                            let _ = ack.send(());
                            attempt = 0;
                            continue;
                        }
                    }
                }
            }
            if !self.idle().await {
                return;
            }
            attempt = 0;
        }
    }

    /// Not running: wait for start or restart. False when the project is gone.
    async fn idle(&mut self) -> bool {
        loop {
            match self.control.recv().await {
                None => return false,
                Some(Control::Stop(ack)) => {
                    if self.status.borrow().state != ServiceState::Failed {
                        self.set_state(ServiceState::Stopped, None);
                    }
                    let _ = ack.send(());
                }
                Some(Control::Start(ack) | Control::Restart(ack)) => {
                    // Before the ack: whoever asked must not still see "stopped".
                    self.set_state(ServiceState::Waiting, None);
                    let _ = ack.send(());
                    return true;
                }
            }
        }
    }

    /// True once every dependency meets its condition; false if one failed (or on stop).
    async fn wait_for_dependencies(&mut self) -> bool {
        self.set(|s| {
            s.state = ServiceState::Waiting;
            s.pid = None;
            s.healthy = None;
        });
        for (dep, status) in &mut self.deps {
            loop {
                let snapshot = status.borrow_and_update().clone();
                if snapshot.satisfies(dep.condition) {
                    break;
                }
                if matches!(snapshot.state, ServiceState::Failed)
                    || (dep.condition == Condition::CompletedSuccessfully
                        && snapshot.exit.is_some_and(|e| !e.success())
                        && snapshot.state != ServiceState::BackingOff)
                {
                    let detail = format!("dependency {} failed", dep.name);
                    self.sink.note(detail.clone());
                    self.status.send_modify(|s| {
                        s.state = ServiceState::Failed;
                        s.detail = Some(detail);
                    });
                    return false;
                }
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return false },
                    control = self.control.recv() => match control {
                        None => return false,
                        Some(Control::Stop(ack)) => {
                            self.status.send_modify(|s| s.state = ServiceState::Stopped);
                            let _ = ack.send(());
                            return false;
                        }
                        Some(Control::Start(ack) | Control::Restart(ack)) => { let _ = ack.send(()); }
                    }
                }
            }
        }
        true
    }

    /// Prepares the bundle (unpacking the image if the cache does not have it) off the async
    /// threads, then starts the shim on it.
    async fn spawn_container(&self, slot: ContainerSlot) -> std::io::Result<(Running, Output)> {
        let service = self.service.clone();
        let ContainerSlot { runtime, project, id, ca } = slot;
        let (shared, name) = (runtime.clone(), id.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            prepare::prepare(&shared, &project, &service, &name, ca.as_ref())
        })
        .await;
        let (bundle, notes) = match prepared {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            Err(e) => return Err(std::io::Error::other(format!("bundle preparation failed: {e}"))),
        };
        for note in notes {
            self.sink.note(note);
        }
        process::spawn_container(&runtime.shim, &bundle, &id)
    }

    async fn supervise(&mut self, running: Running, output: Output) -> End {
        let pid = running.pid;
        let confined = match &running.container {
            Some(id) => format!(" (locald-shim running container {id})"),
            None if running.has_cgroup() => " in its own cgroup".into(),
            None => String::new(),
        };
        self.sink.note(format!("started pid {pid}{confined}"));
        let readers = [
            tokio::spawn(pump(output.stdout, self.sink.clone(), "out")),
            tokio::spawn(pump(output.stderr, self.sink.clone(), "err")),
        ];
        let has_check = self.service.health_check.is_some();
        self.set(|s| {
            s.state = if has_check { ServiceState::Starting } else { ServiceState::Running };
            s.pid = Some(pid);
            s.since = Some(Instant::now());
            s.healthy = has_check.then_some(false);
            s.exit = None;
            s.detail = None;
        });
        // Each check runs in its own task: a probe that hangs (the case liveness exists for)
        // must not be cancelled by the other check's verdicts or a control message.
        let (verdict_tx, mut verdicts) = mpsc::unbounded_channel();
        let checkers: Vec<_> =
            [(Kind::Health, &self.service.health_check), (Kind::Liveness, &self.service.liveness)]
                .into_iter()
                .filter_map(|(kind, check)| Some((kind, check.clone()?)))
                .map(|(kind, check)| {
                    tokio::spawn(checker(kind, check, self.service.clone(), verdict_tx.clone()))
                })
                .collect();
        let end = loop {
            tokio::select! {
                exit = running.wait() => break End::Exited(exit),
                Some((kind, verdict)) = verdicts.recv() => match (kind, verdict) {
                    (Kind::Health, Verdict::Healthy) => self.set(|s| { s.healthy = Some(true); s.state = ServiceState::Healthy; }),
                    (Kind::Health, Verdict::Failed) => {
                        if self.status.borrow().state != ServiceState::Unhealthy {
                            self.sink.note("health check failing".into());
                        }
                        self.set(|s| { s.healthy = Some(false); s.state = ServiceState::Unhealthy; });
                    }
                    (Kind::Liveness, Verdict::Failed) => {
                        self.sink.note("liveness check failed; restarting".into());
                        break End::Liveness(self.stop(&running).await);
                    }
                    _ => {}
                },
                control = self.control.recv() => match control {
                    None => { self.stop(&running).await; break End::Stopped(oneshot::channel().0) }
                    Some(Control::Stop(ack)) => { self.stop(&running).await; break End::Stopped(ack) }
                    Some(Control::Restart(ack)) => {
                        self.stop(&running).await;
                        self.set(|s| s.restarts += 1);
                        break End::Restart(ack)
                    }
                    Some(Control::Start(ack)) => { let _ = ack.send(()); }
                },
            }
        };
        for checker in checkers {
            checker.abort();
        }
        // Output written just before the exit belongs before the exit note. A process that
        // left the group may still hold the pipe: its output keeps flowing, but we go on.
        for reader in readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        if let End::Exited(exit) | End::Liveness(exit) = &end {
            self.sink.note(exit.describe());
            self.set(|s| s.exit = Some(*exit));
        }
        self.set(|s| {
            s.pid = None;
            s.since = None;
            if has_check {
                s.healthy = Some(false);
            }
        });
        end
    }

    /// Stop signal to the group, `stop_timeout`, then SIGKILL; returns once reaped.
    async fn stop(&self, running: &Running) -> Exit {
        running.signal_group(self.service.stop_signal);
        match tokio::time::timeout(self.service.stop_timeout, running.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.sink.note(format!(
                    "still running after {}; sending SIGKILL",
                    humantime::format_duration(self.service.stop_timeout)
                ));
                running.signal_group(libc::SIGKILL);
                match tokio::time::timeout(SHIM_GRACE, running.wait()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        self.sink.note("the shim did not stop its container; killing the shim".into());
                        running.kill_shim();
                        running.wait().await
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Health,
    Liveness,
}

/// Probes every `interval` (never overlapping: a slow probe delays the next) and reports each
/// verdict until the receiver is gone.
async fn checker(
    kind: Kind,
    check: Check,
    service: Arc<Service>,
    verdicts: mpsc::UnboundedSender<(Kind, Verdict)>,
) {
    let mut tracker = Tracker::new(&check);
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ok = health::probe(&check, &service).await;
        if verdicts.send((kind, tracker.record(ok))).is_err() {
            return;
        }
    }
}
