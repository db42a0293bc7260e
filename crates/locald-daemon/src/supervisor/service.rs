//! The task of one service: spawns, stops and watches its process, runs its checks and
//! timers, and carries out what [`Lifecycle`] decides from each thing that happens. One tokio
//! task per service; its state is published on a watch channel that `up`, `status` and
//! dependents read.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use locald_core::config::{Check, Dependency, Service};

use super::cgroup::Cgroups;
pub use super::lifecycle::Snapshot;
use super::lifecycle::{Action, Event, Lifecycle, Request};
use super::output::{Sink, pump};
use super::process::{self, Exit, Output, Running};
use super::readiness;
use crate::container::prepare::{self, Runtime};
use crate::health::{self, Tracker, Verdict};
use locald_ca::ca_bundle::CaFiles;

/// How long a SIGKILL relayed through the shim may take before the shim itself is killed.
const SHIM_GRACE: Duration = Duration::from_secs(10);

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
    /// Its log, for lines about it from elsewhere in the daemon (the file watcher).
    pub sink: Sink,
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
    let (deps, watches): (Vec<_>, Vec<_>) = deps.into_iter().unzip();
    let lifecycle = Lifecycle::new(service.restart.clone(), service.health_check.is_some(), deps)
        .probed(service.serves.is_probed());
    tokio::spawn(
        Task {
            service: service.clone(),
            deps: watches,
            sink: sink.clone(),
            owner,
            cgroup,
            container,
            status: status_tx,
            control: control_rx,
            lifecycle,
            run: None,
            backoff: None,
            ack: None,
        }
        .run(),
    );
    Handle { service, status, control, sink }
}

struct Task {
    service: Arc<Service>,
    deps: Vec<watch::Receiver<Snapshot>>,
    sink: Sink,
    owner: String,
    cgroup: CgroupSlot,
    container: Option<ContainerSlot>,
    status: watch::Sender<Snapshot>,
    control: mpsc::UnboundedReceiver<Control>,
    lifecycle: Lifecycle,
    run: Option<Run>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Of the request being carried out, for [`Action::Ack`].
    ack: Option<oneshot::Sender<()>>,
}

/// The process of the current run, with what reads its output and checks it.
struct Run {
    running: Running,
    readers: [JoinHandle<()>; 2],
    checkers: Vec<JoinHandle<()>>,
    verdicts: mpsc::UnboundedReceiver<(Kind, Verdict)>,
}

impl Task {
    async fn run(mut self) {
        let mut actions = self.lifecycle.begin();
        // What carrying out an action answered, handled before anything else happens.
        let mut answers = VecDeque::new();
        loop {
            for action in actions {
                match action {
                    Action::Finish => return,
                    action => answers.extend(self.carry_out(action).await),
                }
            }
            let event = match answers.pop_front() {
                Some(event) => event,
                None => self.next_event().await,
            };
            actions = self.lifecycle.step(event);
        }
    }

    async fn carry_out(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Publish(snapshot) => {
                self.status.send_replace(snapshot);
            }
            Action::Note(text) => self.sink.note(text),
            Action::CheckDependency(index) => {
                let snapshot = self.deps[index].borrow_and_update().clone();
                return Some(Event::Dependency { index, snapshot });
            }
            Action::Spawn => return Some(self.spawn().await),
            Action::Kill => {
                // Asked for only while a process runs.
                let run = self.run.take()?;
                let exit = self.stop(&run.running).await;
                run.end().await;
                return Some(Event::Exited { exit, at: Instant::now() });
            }
            Action::Backoff(delay) => self.backoff = Some(Box::pin(tokio::time::sleep(delay))),
            Action::Ack => {
                if let Some(ack) = self.ack.take() {
                    let _ = ack.send(());
                }
            }
            // Ends the loop in `run`.
            Action::Finish => {}
        }
        None
    }

    /// Waits for whatever can happen in the current phase: the process exiting or a check's
    /// verdict, a control request, the awaited dependency changing, the backoff ending.
    async fn next_event(&mut self) -> Event {
        let Task { deps, control, lifecycle, run, backoff, .. } = self;
        let dependency = lifecycle.awaited_dependency().map(|i| (i, &mut deps[i]));
        let timer = backoff.as_mut().filter(|_| lifecycle.backing_off());
        let woke = tokio::select! {
            woke = from_run(run.as_mut()) => woke,
            request = control.recv() => Woke::Control(request),
            event = changed(dependency) => Woke::Event(event),
            () = expired(timer) => Woke::Backoff,
        };
        match woke {
            Woke::Event(event) => event,
            Woke::Exit(exit) => {
                if let Some(run) = self.run.take() {
                    run.end().await;
                }
                Event::Exited { exit, at: Instant::now() }
            }
            Woke::Backoff => {
                self.backoff = None;
                Event::BackoffOver
            }
            Woke::Control(None) => Event::ControlClosed,
            Woke::Control(Some(request)) => {
                let (request, ack) = match request {
                    Control::Start(ack) => (Request::Start, ack),
                    Control::Stop(ack) => (Request::Stop, ack),
                    Control::Restart(ack) => (Request::Restart, ack),
                };
                self.ack = Some(ack);
                Event::Control(request)
            }
        }
    }

    async fn spawn(&mut self) -> Event {
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
        match spawned {
            Ok((running, output)) => {
                let pid = running.pid;
                self.run = Some(self.watch(running, output));
                Event::Spawned { pid, started, at: Instant::now() }
            }
            Err(e) => Event::SpawnFailed { error: e.to_string(), started, at: Instant::now() },
        }
    }

    /// Prepares the bundle (unpacking the image if the cache does not have it) off the async
    /// threads, then starts the shim on it.
    async fn spawn_container(&self, slot: ContainerSlot) -> std::io::Result<(Running, Output)> {
        loop {
            let service = self.service.clone();
            let ContainerSlot { runtime, project, id, ca } = slot.clone();
            let shared = runtime.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                prepare::prepare(&shared, &project, &service, &id, ca.as_ref())
            })
            .await;
            let bundle = match prepared {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                Err(e) => return Err(std::io::Error::other(format!("bundle preparation failed: {e}"))),
            };
            for note in &bundle.notes {
                self.sink.note(note.clone());
            }
            let (running, output) = process::spawn_container(&runtime.shim, &bundle.run)?;
            if !bundle.is_overlay() {
                return Ok((running, output));
            }
            // The shim says first whether the kernel took the overlay; where it did not, this
            // daemon copies rootfs from now on, and this service starts again from a copy.
            let control = running.control_clone();
            let line = tokio::task::spawn_blocking(move || process::first_line(control?, FIRST_LINE_WAIT))
                .await
                .ok()
                .flatten();
            match line {
                Some(line) if line.starts_with(locald_shim_protocol::overlay::UNAVAILABLE) => {
                    running.wait().await;
                    prepare::overlay_unavailable(&line);
                    self.sink.note(format!("{line}: copying the image's rootfs instead"));
                }
                _ => return Ok((running, output)),
            }
        }
    }

    /// Starts reading the output of a new process and checking it.
    fn watch(&self, running: Running, output: Output) -> Run {
        let confined = match &running.container {
            Some(id) => format!(" (locald-shim running container {id})"),
            None if running.has_cgroup() => " in its own cgroup".into(),
            None => String::new(),
        };
        self.sink.note(format!("started pid {}{confined}", running.pid));
        let readers = [
            tokio::spawn(pump(output.stdout, self.sink.clone(), "out")),
            tokio::spawn(pump(output.stderr, self.sink.clone(), "err")),
        ];
        // Each check runs in its own task: a probe that hangs (the case liveness exists for)
        // must not be cancelled by the other check's verdicts or a control message.
        let (verdict_tx, verdicts) = mpsc::unbounded_channel();
        let checkers = [(Kind::Health, &self.service.health_check), (Kind::Liveness, &self.service.liveness)]
            .into_iter()
            .filter_map(|(kind, check)| Some((kind, check.clone()?)))
            .map(|(kind, check)| tokio::spawn(checker(kind, check, self.service.clone(), verdict_tx.clone())))
            .chain(self.readiness(&running, verdict_tx.clone()))
            .collect();
        Run { running, readers, checkers, verdicts }
    }

    /// Without a health check, a serving service is starting until its port (or another port
    /// its processes listen on) accepts connections.
    fn readiness(
        &self,
        running: &Running,
        verdicts: mpsc::UnboundedSender<(Kind, Verdict)>,
    ) -> Option<JoinHandle<()>> {
        if self.service.health_check.is_some() || !self.service.serves.is_probed() {
            return None;
        }
        let port = self.service.port;
        // The leader is its group's id; a container's processes are not in the shim's group.
        let pgid = running.container.is_none().then_some(running.pid);
        Some(tokio::spawn(async move {
            let found = readiness::reachable(port, pgid).await;
            let _ = verdicts.send((Kind::Ready(found), Verdict::Healthy));
        }))
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

/// How long a container's shim may take to say it started (or why it could not mount the root).
const FIRST_LINE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Health,
    Liveness,
    /// The readiness probe connected (to this port, when not the service's own).
    Ready(Option<u16>),
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
    // Until the first pass, probe quickly (compose's `start_interval`), so that a service is
    // healthy, and served, within moments of answering; failures still count only once per
    // interval, so the quick probes do not use up `retries` sooner.
    let quick = check.interval.min(readiness::QUICK * 2);
    let mut passed = false;
    let mut counted: Option<Instant> = None;
    loop {
        let began = Instant::now();
        let ok = health::probe(&check, &service).await;
        if ok || passed || counted.is_none_or(|at| at.elapsed() >= check.interval) {
            if !ok {
                counted = Some(Instant::now());
            }
            passed |= ok;
            if verdicts.send((kind, tracker.record(ok))).is_err() {
                return;
            }
        }
        let pause = if passed { check.interval } else { quick };
        tokio::time::sleep(pause.saturating_sub(began.elapsed())).await;
    }
}

impl Run {
    /// The process is gone: checks end, and its output is read to the end so that what it wrote
    /// just before exiting comes before the exit note. A process that left the group may still
    /// hold the pipe: its output keeps flowing, but we go on.
    async fn end(self) {
        for checker in self.checkers {
            checker.abort();
        }
        for reader in self.readers {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
    }
}

enum Woke {
    Event(Event),
    Exit(Exit),
    Control(Option<Control>),
    Backoff,
}

async fn from_run(run: Option<&mut Run>) -> Woke {
    let Some(Run { running, verdicts, .. }) = run else { return std::future::pending().await };
    tokio::select! {
        exit = running.wait() => Woke::Exit(exit),
        // The senders live in the checkers, which are only aborted with the run.
        Some((kind, verdict)) = verdicts.recv() => Woke::Event(match kind {
            Kind::Health => Event::Health(verdict),
            Kind::Liveness => Event::Liveness(verdict),
            Kind::Ready(port) => Event::Reachable { port },
        }),
    }
}

async fn changed(dependency: Option<(usize, &mut watch::Receiver<Snapshot>)>) -> Event {
    match dependency {
        Some((index, status)) => match status.changed().await {
            Ok(()) => Event::Dependency { index, snapshot: status.borrow_and_update().clone() },
            Err(_) => Event::DependencyGone,
        },
        None => std::future::pending().await,
    }
}

async fn expired(backoff: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match backoff {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
