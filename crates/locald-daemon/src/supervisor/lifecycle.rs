//! The rules of one service's life, apart from the processes and timers they are about: when it
//! waits for its dependencies, starts, restarts and after how long, gives up, stops, and what it
//! publishes meanwhile. [`Lifecycle::step`] takes one [`Event`] and says what to do as
//! [`Action`]s; it does no I/O and reads no clock (times come in the events), so every rule can
//! be tested with plain values. The task in `service.rs` waits on the world and carries out the
//! actions.
//!
//! The rules, as they were in the task before they moved here:
//! - Waiting: dependencies are checked in order, each until it meets its condition; a later
//!   change of one already met is not looked at again. A dependency that failed (see
//!   [`Snapshot::rules_out`]) fails the service, which then waits for a start request. Start and
//!   restart requests while waiting change nothing; stop stops.
//! - Running: health verdicts move it between healthy and unhealthy (an unhealthy service keeps
//!   running); a failed liveness check stops it and counts as a failure to restart from whatever
//!   the policy. Stop stops; restart publishes starting, stops and starts again at once, counting a restart and
//!   forgetting the backoff; start is acknowledged and nothing else.
//! - After an exit: a run longer than twice `max_backoff` forgets earlier attempts. The policy
//!   says whether to restart (`no`: never, `on-failure`: unless status 0, `always`); not
//!   restarting ends in completed (status 0) or failed. After `max_restarts` restarts in a row
//!   it gives up as failed. Otherwise it backs off `restart.delay(attempt)` (doubling, capped),
//!   counting a restart, then waits for its dependencies again.
//! - Backing off: stop stops (and nothing restarts later); start or restart cut the backoff
//!   short and forget earlier attempts.
//! - Stopped, failed or completed: start or restart wait for dependencies again; stop makes it
//!   stopped, except that a failed one stays failed so that its reason is kept.
//! - The control channel closing (the project is gone) stops what runs and ends the task.

use std::time::{Duration, Instant};

use locald_core::config::{Condition, Dependency, Restart, RestartPolicy};
use locald_core::ipc::ServiceState;

use super::process::Exit;
use crate::health::Verdict;

#[cfg(test)]
mod tests;

/// What a service shows to `status`, its dependents and the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub healthy: Option<bool>,
    pub restarts: u32,
    pub since: Option<Instant>,
    pub exit: Option<Exit>,
    pub detail: Option<String>,
    /// The port its processes were found listening on, when not the one it was given.
    pub port: Option<u16>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self {
            state: ServiceState::Waiting,
            pid: None,
            healthy: None,
            restarts: 0,
            since: None,
            exit: None,
            detail: None,
            port: None,
        }
    }

    /// This dependency can no longer meet `condition` without being started again: it gave up,
    /// or (for "completed successfully") its last exit was a failure that is not being retried.
    pub fn rules_out(&self, condition: Condition) -> bool {
        self.state == ServiceState::Failed
            || (condition == Condition::CompletedSuccessfully
                && self.exit.is_some_and(|e| !e.success())
                && self.state != ServiceState::BackingOff)
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The latest snapshot of dependency `index`.
    Dependency {
        index: usize,
        snapshot: Snapshot,
    },
    /// A dependency's task is gone.
    DependencyGone,
    /// The process runs; `started` is when spawning began (preparation included), `at` when it
    /// was there.
    Spawned {
        pid: u32,
        started: Instant,
        at: Instant,
    },
    SpawnFailed {
        error: String,
        started: Instant,
        at: Instant,
    },
    /// The process exited (by itself, or after [`Action::Kill`]) and its output was drained.
    Exited {
        exit: Exit,
        at: Instant,
    },
    Health(Verdict),
    Liveness(Verdict),
    /// The readiness probe connected: to `port` when that is not the service's own port.
    Reachable {
        port: Option<u16>,
    },
    Control(Request),
    /// Nobody can send requests any more: the project is gone.
    ControlClosed,
    BackoffOver,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Publish(Snapshot),
    /// A line in the service's log.
    Note(String),
    /// Answer with [`Event::Dependency`] for this dependency now, and again when it changes.
    CheckDependency(usize),
    /// Answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn,
    /// Stop signal, `stop_timeout`, SIGKILL; answer with [`Event::Exited`] once reaped.
    Kill,
    /// Answer with [`Event::BackoffOver`] after this long, unless a request comes first.
    Backoff(Duration),
    /// The request being handled is carried out.
    Ack,
    /// The task ends.
    Finish,
}

/// Why we are stopping the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Requested,
    Restart,
    Liveness,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Dependencies before `next` met their condition.
    Waiting {
        next: usize,
    },
    Spawning,
    Running {
        started: Instant,
    },
    Stopping {
        started: Instant,
        why: Stop,
    },
    BackingOff,
    /// Stopped, failed or completed (or a dependency's task went away). `fresh`: a start
    /// forgets earlier attempts (not so when it came from waiting).
    Idle {
        fresh: bool,
    },
    Done,
}

pub struct Lifecycle {
    restart: Restart,
    health_checked: bool,
    /// Without a health check, a readiness probe decides when it stops starting.
    probed: bool,
    deps: Vec<Dependency>,
    phase: Phase,
    /// Restarts in a row, for the backoff and `max_restarts`.
    attempt: u32,
    snapshot: Snapshot,
}

impl Lifecycle {
    pub fn new(restart: Restart, health_checked: bool, deps: Vec<Dependency>) -> Self {
        Self {
            restart,
            health_checked,
            probed: false,
            deps,
            phase: Phase::Waiting { next: 0 },
            attempt: 0,
            snapshot: Snapshot::new(),
        }
    }

    /// Without a health check, the service starts until [`Event::Reachable`] (its port accepts
    /// connections) instead of running from its spawn on.
    pub fn probed(mut self, probed: bool) -> Self {
        self.probed = probed && !self.health_checked;
        self
    }

    /// The first actions of a new service: wait for its dependencies.
    pub fn begin(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.wait(&mut out);
        out
    }

    /// The dependency whose changes matter now.
    pub fn awaited_dependency(&self) -> Option<usize> {
        match self.phase {
            Phase::Waiting { next } => Some(next),
            _ => None,
        }
    }

    pub fn backing_off(&self) -> bool {
        self.phase == Phase::BackingOff
    }

    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.phase, event) {
            (Phase::Done, _) => {}
            (Phase::Waiting { .. } | Phase::BackingOff | Phase::Idle { .. }, Event::ControlClosed) => {
                self.phase = Phase::Done;
                out.push(Action::Finish);
            }
            (Phase::Running { started }, Event::ControlClosed) => self.kill(started, Stop::Closed, &mut out),

            (Phase::Waiting { next }, Event::Dependency { index, snapshot }) if index == next => {
                self.dependency(next, &snapshot, &mut out);
            }
            (Phase::Waiting { .. }, Event::DependencyGone) => self.phase = Phase::Idle { fresh: false },
            (Phase::Waiting { .. }, Event::Control(Request::Stop)) => {
                // Unlike the other stops this keeps the detail (the last exit, after a backoff).
                self.snapshot.state = ServiceState::Stopped;
                self.publish(&mut out);
                out.push(Action::Ack);
                self.phase = Phase::Idle { fresh: false };
            }

            (Phase::Spawning, Event::Spawned { pid, started, at }) => {
                let s = &mut self.snapshot;
                s.state = if self.health_checked || self.probed {
                    ServiceState::Starting
                } else {
                    ServiceState::Running
                };
                s.pid = Some(pid);
                s.since = Some(at);
                s.healthy = self.health_checked.then_some(false);
                s.exit = None;
                s.detail = None;
                self.publish(&mut out);
                self.phase = Phase::Running { started };
            }
            (Phase::Spawning, Event::SpawnFailed { error, started, at }) => {
                out.push(Action::Note(format!("cannot start: {error}")));
                // Like an exit with 127, except that nothing ran to have an exit status.
                self.decide(Exit::Code(127), false, started, at, &mut out);
            }

            (Phase::Running { started }, Event::Exited { exit, at }) => {
                self.ended(exit, &mut out);
                self.decide(exit, false, started, at, &mut out);
            }
            (Phase::Running { .. }, Event::Health(Verdict::Healthy)) => {
                self.snapshot.healthy = Some(true);
                self.snapshot.state = ServiceState::Healthy;
                self.publish(&mut out);
            }
            (Phase::Running { .. }, Event::Reachable { port })
                if self.probed && self.snapshot.state == ServiceState::Starting =>
            {
                if let Some(port) = port {
                    out.push(Action::Note(format!(
                        "listens on port {port}, not on $PORT; the proxy routes to {port}"
                    )));
                }
                self.snapshot.state = ServiceState::Running;
                self.snapshot.port = port;
                self.publish(&mut out);
            }
            (Phase::Running { .. }, Event::Health(Verdict::Failed)) => {
                if self.snapshot.state != ServiceState::Unhealthy {
                    out.push(Action::Note("health check failing".into()));
                }
                self.snapshot.healthy = Some(false);
                self.snapshot.state = ServiceState::Unhealthy;
                self.publish(&mut out);
            }
            (Phase::Running { started }, Event::Liveness(Verdict::Failed)) => {
                out.push(Action::Note("liveness check failed; restarting".into()));
                self.kill(started, Stop::Liveness, &mut out);
            }
            (Phase::Running { started }, Event::Control(Request::Stop)) => {
                self.kill(started, Stop::Requested, &mut out);
            }
            (Phase::Running { started }, Event::Control(Request::Restart)) => {
                // Starting from now, not once the old process is gone: the proxy holds requests
                // for a starting service instead of sending them to one that is being stopped.
                self.snapshot.state = ServiceState::Starting;
                self.snapshot.detail = Some("restarting".into());
                self.publish(&mut out);
                self.kill(started, Stop::Restart, &mut out);
            }

            (Phase::Stopping { started, why }, Event::Exited { exit, at }) => {
                self.stopped(started, why, exit, at, &mut out)
            }

            (Phase::BackingOff, Event::BackoffOver) => self.wait(&mut out),
            (Phase::BackingOff, Event::Control(Request::Stop)) => {
                self.snapshot.state = ServiceState::Stopped;
                self.snapshot.detail = None;
                self.publish(&mut out);
                out.push(Action::Ack);
                self.phase = Phase::Idle { fresh: true };
            }
            (Phase::BackingOff, Event::Control(Request::Start | Request::Restart)) => {
                out.push(Action::Ack);
                self.attempt = 0;
                self.wait(&mut out);
            }

            (Phase::Idle { .. }, Event::Control(Request::Stop)) => {
                if self.snapshot.state != ServiceState::Failed {
                    self.snapshot.state = ServiceState::Stopped;
                    self.snapshot.detail = None;
                    self.publish(&mut out);
                }
                out.push(Action::Ack);
            }
            (Phase::Idle { fresh }, Event::Control(Request::Start | Request::Restart)) => {
                // Before the ack: whoever asked must not still see "stopped".
                self.snapshot.state = ServiceState::Waiting;
                self.snapshot.detail = None;
                self.publish(&mut out);
                out.push(Action::Ack);
                if fresh {
                    self.attempt = 0;
                }
                self.wait(&mut out);
            }

            // Nothing to do but say it was seen: start while waiting or running, restart while
            // waiting.
            (Phase::Waiting { .. }, Event::Control(Request::Start | Request::Restart))
            | (Phase::Running { .. }, Event::Control(Request::Start)) => out.push(Action::Ack),
            // Stale (an old dependency, a verdict of no consequence, a timer outlived by a
            // request) or not expected in this phase.
            _ => {}
        }
        out
    }

    fn publish(&self, out: &mut Vec<Action>) {
        out.push(Action::Publish(self.snapshot.clone()));
    }

    /// Waits for dependencies from the first; spawns when there are none.
    fn wait(&mut self, out: &mut Vec<Action>) {
        let s = &mut self.snapshot;
        s.state = ServiceState::Waiting;
        s.pid = None;
        s.healthy = None;
        self.publish(out);
        self.next_dependency(0, out);
    }

    fn next_dependency(&mut self, next: usize, out: &mut Vec<Action>) {
        if next < self.deps.len() {
            self.phase = Phase::Waiting { next };
            out.push(Action::CheckDependency(next));
        } else {
            self.phase = Phase::Spawning;
            out.push(Action::Spawn);
        }
    }

    fn dependency(&mut self, index: usize, snapshot: &Snapshot, out: &mut Vec<Action>) {
        let dep = &self.deps[index];
        if snapshot.state.satisfies(dep.condition) {
            self.next_dependency(index + 1, out);
        } else if snapshot.rules_out(dep.condition) {
            let detail = format!("dependency {} failed", dep.name);
            out.push(Action::Note(detail.clone()));
            self.snapshot.state = ServiceState::Failed;
            self.snapshot.detail = Some(detail);
            self.publish(out);
            self.phase = Phase::Idle { fresh: false };
        }
    }

    fn kill(&mut self, started: Instant, why: Stop, out: &mut Vec<Action>) {
        self.phase = Phase::Stopping { started, why };
        out.push(Action::Kill);
    }

    /// The process is gone: no pid, no uptime, not healthy.
    fn clear_run(&mut self) {
        let s = &mut self.snapshot;
        s.pid = None;
        s.since = None;
        s.port = None;
        if self.health_checked {
            s.healthy = Some(false);
        }
    }

    /// An exit the policy decides about: it is logged and shown.
    fn ended(&mut self, exit: Exit, out: &mut Vec<Action>) {
        out.push(Action::Note(exit.describe()));
        self.snapshot.exit = Some(exit);
        self.clear_run();
    }

    fn stopped(&mut self, started: Instant, why: Stop, exit: Exit, at: Instant, out: &mut Vec<Action>) {
        match why {
            Stop::Liveness => {
                self.ended(exit, out);
                self.decide(exit, true, started, at, out);
            }
            Stop::Requested | Stop::Closed => {
                self.clear_run();
                self.snapshot.state = ServiceState::Stopped;
                self.snapshot.detail = None;
                self.publish(out);
                if why == Stop::Closed {
                    self.phase = Phase::Done;
                    out.push(Action::Finish);
                } else {
                    out.push(Action::Ack);
                    self.attempt = 0;
                    self.phase = Phase::Idle { fresh: true };
                }
            }
            Stop::Restart => {
                self.clear_run();
                self.snapshot.restarts += 1;
                self.publish(out);
                out.push(Action::Ack);
                self.attempt = 0;
                self.wait(out);
            }
        }
    }

    /// After a run that ended by itself (or failed liveness): restart, give up or rest.
    fn decide(&mut self, exit: Exit, liveness: bool, started: Instant, at: Instant, out: &mut Vec<Action>) {
        if at.saturating_duration_since(started) > self.restart.max_backoff * 2 {
            self.attempt = 0;
        }
        let wanted = liveness
            || match self.restart.policy {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Always => true,
            };
        let attempt = self.attempt;
        if !wanted {
            self.snapshot.state = if exit.success() { ServiceState::Completed } else { ServiceState::Failed };
            self.snapshot.detail = Some(exit.describe());
        } else if attempt >= self.restart.max_restarts {
            out.push(Action::Note(format!("gave up after {attempt} restarts")));
            self.snapshot.state = ServiceState::Failed;
            self.snapshot.detail = Some(format!("{}; gave up after {attempt} restarts", exit.describe()));
        } else {
            let delay = self.restart.delay(attempt);
            self.attempt += 1;
            out.push(Action::Note(format!("restarting in {}", humantime::format_duration(delay))));
            self.snapshot.state = ServiceState::BackingOff;
            self.snapshot.restarts += 1;
            self.snapshot.detail = Some(exit.describe());
            self.publish(out);
            out.push(Action::Backoff(delay));
            self.phase = Phase::BackingOff;
            return;
        }
        self.publish(out);
        self.phase = Phase::Idle { fresh: true };
    }
}
