//! Each rule of the lifecycle, with plain values for times: no process, no clock, no wait.

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// A service and the time that has passed in its life.
struct Svc {
    lifecycle: Lifecycle,
    now: Instant,
}

impl Svc {
    fn with(
        policy: RestartPolicy,
        max_restarts: u32,
        health_checked: bool,
        deps: &[(&str, Condition)],
    ) -> Self {
        let restart = Restart { policy, max_restarts, backoff: SECOND, max_backoff: 8 * SECOND };
        let deps =
            deps.iter().map(|(name, condition)| Dependency { name: (*name).into(), condition: *condition });
        let mut lifecycle = Lifecycle::new(restart, health_checked, deps.collect());
        let begun = lifecycle.begin();
        assert_eq!(state(&begun), Some(ServiceState::Waiting));
        Self { lifecycle, now: Instant::now() }
    }

    /// No dependencies, no health check: spawned at once.
    fn plain(policy: RestartPolicy, max_restarts: u32) -> Self {
        Self::with(policy, max_restarts, false, &[])
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.lifecycle.step(event)
    }

    fn spawned(&mut self) -> Vec<Action> {
        let now = self.now;
        self.step(Event::Spawned { pid: 100, started: now, at: now })
    }

    fn exits_after(&mut self, run: Duration, exit: Exit) -> Vec<Action> {
        self.now += run;
        let now = self.now;
        self.step(Event::Exited { exit, at: now })
    }

    /// Runs for a second, fails, and returns the backoff it got.
    fn crash(&mut self) -> Option<Duration> {
        self.spawned();
        let ended = self.exits_after(SECOND, Exit::Code(1));
        backoff(&ended)
    }

    /// After a backoff: waits (no dependencies) and asks for the spawn.
    fn backoff_over(&mut self) {
        let waited = self.step(Event::BackoffOver);
        assert_eq!(waited.last(), Some(&Action::Spawn), "{waited:?}");
    }

    fn request(&mut self, request: Request) -> Vec<Action> {
        self.step(Event::Control(request))
    }
}

fn snapshot(actions: &[Action]) -> Option<&Snapshot> {
    actions.iter().rev().find_map(|a| match a {
        Action::Publish(snapshot) => Some(snapshot),
        _ => None,
    })
}

fn state(actions: &[Action]) -> Option<ServiceState> {
    snapshot(actions).map(|s| s.state)
}

fn backoff(actions: &[Action]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::Backoff(delay) => Some(*delay),
        _ => None,
    })
}

fn notes(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Note(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn dep(state: ServiceState, exit: Option<Exit>) -> Snapshot {
    Snapshot { state, exit, ..Snapshot::new() }
}

#[test]
fn without_dependencies_it_spawns_at_once_and_runs() {
    let mut lifecycle = Lifecycle::new(
        Restart { policy: RestartPolicy::Always, max_restarts: 1, backoff: SECOND, max_backoff: SECOND },
        false,
        vec![],
    );
    let begun = lifecycle.begin();
    assert_eq!(begun, [Action::Publish(Snapshot::new()), Action::Spawn]);
    let now = Instant::now();
    let spawned = lifecycle.step(Event::Spawned { pid: 7, started: now, at: now });
    let running = snapshot(&spawned).unwrap();
    assert_eq!(
        (running.state, running.pid, running.since, running.healthy),
        (ServiceState::Running, Some(7), Some(now), None)
    );
}

#[test]
fn with_a_health_check_it_starts_unhealthy_and_verdicts_move_it() {
    let mut svc = Svc::with(RestartPolicy::OnFailure, 5, true, &[]);
    let spawned = svc.spawned();
    assert_eq!(snapshot(&spawned).map(|s| (s.state, s.healthy)), Some((ServiceState::Starting, Some(false))));
    assert!(svc.step(Event::Health(Verdict::Pending)).is_empty(), "pending decides nothing");

    let healthy = svc.step(Event::Health(Verdict::Healthy));
    assert_eq!(snapshot(&healthy).map(|s| (s.state, s.healthy)), Some((ServiceState::Healthy, Some(true))));

    // Unhealthy keeps running: no kill, no restart; said once, not at every probe.
    let failing = svc.step(Event::Health(Verdict::Failed));
    assert_eq!(
        snapshot(&failing).map(|s| (s.state, s.healthy)),
        Some((ServiceState::Unhealthy, Some(false)))
    );
    assert_eq!(notes(&failing), ["health check failing"]);
    assert!(!failing.contains(&Action::Kill));
    let still = svc.step(Event::Health(Verdict::Failed));
    assert!(notes(&still).is_empty(), "{still:?}");
    assert_eq!(snapshot(&still).unwrap().pid, Some(100));

    let recovered = svc.step(Event::Health(Verdict::Healthy));
    assert_eq!(state(&recovered), Some(ServiceState::Healthy));

    // After the exit it is not healthy any more, whatever it was.
    let ended = svc.exits_after(SECOND, Exit::Code(1));
    let backing_off = snapshot(&ended).unwrap();
    assert_eq!(
        (backing_off.state, backing_off.healthy, backing_off.pid),
        (ServiceState::BackingOff, Some(false), None)
    );
}

#[test]
fn policy_no_never_restarts_and_ends_completed_or_failed() {
    for (exit, end) in [(Exit::Code(0), ServiceState::Completed), (Exit::Code(3), ServiceState::Failed)] {
        let mut svc = Svc::plain(RestartPolicy::No, 5);
        svc.spawned();
        let ended = svc.exits_after(SECOND, exit);
        assert_eq!(backoff(&ended), None);
        let shown = snapshot(&ended).unwrap();
        assert_eq!((shown.state, shown.exit, shown.restarts), (end, Some(exit), 0));
        assert_eq!(shown.detail.as_deref(), Some(exit.describe().as_str()));
        assert_eq!(notes(&ended), [exit.describe()]);
    }
}

#[test]
fn policy_on_failure_restarts_failures_only() {
    let mut svc = Svc::plain(RestartPolicy::OnFailure, 5);
    svc.spawned();
    assert_eq!(state(&svc.exits_after(SECOND, Exit::Code(0))), Some(ServiceState::Completed));

    for failure in [Exit::Code(1), Exit::Signal(9)] {
        let mut svc = Svc::plain(RestartPolicy::OnFailure, 5);
        svc.spawned();
        let ended = svc.exits_after(SECOND, failure);
        assert_eq!(backoff(&ended), Some(SECOND));
        let shown = snapshot(&ended).unwrap();
        assert_eq!((shown.state, shown.restarts), (ServiceState::BackingOff, 1));
        assert_eq!(notes(&ended), [failure.describe().as_str(), "restarting in 1s"]);
    }
}

#[test]
fn policy_always_restarts_a_clean_exit_too() {
    let mut svc = Svc::plain(RestartPolicy::Always, 5);
    svc.spawned();
    let ended = svc.exits_after(SECOND, Exit::Code(0));
    assert_eq!((state(&ended), backoff(&ended)), (Some(ServiceState::BackingOff), Some(SECOND)));
    svc.backoff_over();
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let mut svc = Svc::plain(RestartPolicy::Always, 10);
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(svc.crash().expect("restarts"));
        svc.backoff_over();
    }
    assert_eq!(delays, [1, 2, 4, 8, 8, 8].map(|s| s * SECOND));
}

#[test]
fn a_run_longer_than_twice_the_backoff_cap_forgets_earlier_attempts() {
    let mut svc = Svc::plain(RestartPolicy::Always, 10);
    for _ in 0..3 {
        svc.crash();
        svc.backoff_over();
    }
    // Exactly twice the cap is not longer.
    svc.spawned();
    assert_eq!(backoff(&svc.exits_after(16 * SECOND, Exit::Code(1))), Some(8 * SECOND));
    svc.backoff_over();
    svc.spawned();
    assert_eq!(
        backoff(&svc.exits_after(16 * SECOND + Duration::from_millis(1), Exit::Code(1))),
        Some(SECOND)
    );
}

#[test]
fn after_max_restarts_in_a_row_it_gives_up_as_failed() {
    let mut svc = Svc::plain(RestartPolicy::OnFailure, 2);
    for _ in 0..2 {
        assert!(svc.crash().is_some());
        svc.backoff_over();
    }
    svc.spawned();
    let ended = svc.exits_after(SECOND, Exit::Code(1));
    assert_eq!(backoff(&ended), None);
    assert_eq!(notes(&ended), ["exited with status 1", "gave up after 2 restarts"]);
    let shown = snapshot(&ended).unwrap();
    assert_eq!((shown.state, shown.restarts), (ServiceState::Failed, 2));
    assert_eq!(shown.detail.as_deref(), Some("exited with status 1; gave up after 2 restarts"));

    // Given up means nothing comes later by itself; a stop keeps the reason.
    assert!(svc.step(Event::BackoffOver).is_empty());
    let stop = svc.request(Request::Stop);
    assert_eq!(stop, [Action::Ack]);
    // A start begins afresh: a full set of restarts, from the first delay.
    let started = svc.request(Request::Start);
    assert_eq!(started.last(), Some(&Action::Spawn));
    assert_eq!(svc.crash(), Some(SECOND));
}

#[test]
fn a_failed_spawn_counts_as_status_127_but_shows_no_exit_status() {
    let mut svc = Svc::plain(RestartPolicy::OnFailure, 5);
    let now = svc.now;
    let failed = svc.step(Event::SpawnFailed { error: "no such file".into(), started: now, at: now });
    assert_eq!(notes(&failed), ["cannot start: no such file", "restarting in 1s"]);
    let shown = snapshot(&failed).unwrap();
    assert_eq!((shown.state, shown.exit), (ServiceState::BackingOff, None));
    assert_eq!(shown.detail.as_deref(), Some("exited with status 127"));
}

#[test]
fn dependencies_are_awaited_in_order_and_the_last_one_met_spawns() {
    let mut svc = Svc::with(
        RestartPolicy::OnFailure,
        5,
        false,
        &[("db", Condition::Healthy), ("migrate", Condition::CompletedSuccessfully)],
    );
    assert_eq!(svc.lifecycle.awaited_dependency(), Some(0));
    assert!(svc.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Running, None) }).is_empty());
    // Not the awaited one yet: looked at when its turn comes.
    assert!(
        svc.step(Event::Dependency { index: 1, snapshot: dep(ServiceState::Completed, None) }).is_empty()
    );
    let met = svc.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Healthy, None) });
    assert_eq!(met, [Action::CheckDependency(1)]);
    let met =
        svc.step(Event::Dependency { index: 1, snapshot: dep(ServiceState::Completed, Some(Exit::Code(0))) });
    assert_eq!(met, [Action::Spawn]);
    assert_eq!(svc.lifecycle.awaited_dependency(), None);
}

#[test]
fn a_dependency_that_failed_fails_the_service_until_it_is_started() {
    let mut svc = Svc::with(RestartPolicy::Always, 5, false, &[("db", Condition::Started)]);
    let failed = svc.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Failed, None) });
    assert_eq!(notes(&failed), ["dependency db failed"]);
    let shown = snapshot(&failed).unwrap();
    assert_eq!((shown.state, shown.detail.as_deref()), (ServiceState::Failed, Some("dependency db failed")));
    assert!(!failed.contains(&Action::Spawn));
    // The dependency's later changes are not awaited any more.
    assert!(svc.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Running, None) }).is_empty());
    let started = svc.request(Request::Start);
    assert_eq!(started.last(), Some(&Action::CheckDependency(0)));
}

#[test]
fn a_one_shot_dependency_that_exited_badly_fails_its_dependent_unless_it_is_retrying() {
    let badly = Some(Exit::Code(1));
    let mut retrying =
        Svc::with(RestartPolicy::No, 5, false, &[("migrate", Condition::CompletedSuccessfully)]);
    assert!(
        retrying
            .step(Event::Dependency { index: 0, snapshot: dep(ServiceState::BackingOff, badly) })
            .is_empty()
    );
    let failed = retrying.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Waiting, badly) });
    assert_eq!(state(&failed), Some(ServiceState::Failed));

    // Only "completed successfully" looks at the exit: a started dependency may come back.
    let mut started = Svc::with(RestartPolicy::No, 5, false, &[("web", Condition::Started)]);
    assert!(
        started.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Waiting, badly) }).is_empty()
    );
    // A stopped dependency holds back, it does not fail.
    assert!(
        started.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Stopped, None) }).is_empty()
    );
}

#[test]
fn stop_while_waiting_holds_it_back_and_a_vanished_dependency_leaves_it_idle() {
    let mut svc = Svc::with(RestartPolicy::Always, 5, false, &[("db", Condition::Started)]);
    let start = svc.request(Request::Start);
    assert_eq!(start, [Action::Ack], "already on its way");
    let stopped = svc.request(Request::Stop);
    assert_eq!(state(&stopped), Some(ServiceState::Stopped));
    assert_eq!(stopped.last(), Some(&Action::Ack));
    assert!(svc.step(Event::Dependency { index: 0, snapshot: dep(ServiceState::Running, None) }).is_empty());

    let mut svc = Svc::with(RestartPolicy::Always, 5, false, &[("db", Condition::Started)]);
    assert!(svc.step(Event::DependencyGone).is_empty());
    assert_eq!(svc.lifecycle.awaited_dependency(), None);
    assert_eq!(state(&svc.request(Request::Start)), Some(ServiceState::Waiting));
}

#[test]
fn stop_during_backoff_stops_and_nothing_restarts_afterwards() {
    let mut svc = Svc::plain(RestartPolicy::Always, 5);
    assert!(svc.crash().is_some());
    assert!(svc.lifecycle.backing_off());
    let stopped = svc.request(Request::Stop);
    let shown = snapshot(&stopped).unwrap();
    assert_eq!((shown.state, shown.detail.as_deref()), (ServiceState::Stopped, None));
    assert_eq!(stopped.last(), Some(&Action::Ack));
    assert!(!svc.lifecycle.backing_off());
    assert!(svc.step(Event::BackoffOver).is_empty(), "the timer outlived the stop");
}

#[test]
fn start_during_backoff_restarts_now_from_the_first_delay() {
    let mut svc = Svc::plain(RestartPolicy::Always, 5);
    for _ in 0..2 {
        svc.crash();
        svc.backoff_over();
    }
    assert_eq!(svc.crash(), Some(4 * SECOND));
    let started = svc.request(Request::Start);
    assert_eq!(started.first(), Some(&Action::Ack));
    assert_eq!(started.last(), Some(&Action::Spawn));
    assert_eq!(svc.crash(), Some(SECOND));
}

#[test]
fn restart_while_running_stops_then_spawns_again_counting_one_restart() {
    let mut svc = Svc::plain(RestartPolicy::OnFailure, 5);
    svc.crash();
    svc.backoff_over();
    svc.crash();
    svc.backoff_over();
    svc.spawned();
    assert_eq!(svc.request(Request::Start), [Action::Ack], "start while running changes nothing");
    let restarting = svc.request(Request::Restart);
    assert_eq!(restarting.last(), Some(&Action::Kill));
    assert_eq!(
        state(&restarting),
        Some(ServiceState::Starting),
        "starting before the old process is signalled"
    );
    // The exit of a process we stopped is not the service's exit, and is no failure.
    let restarted = svc.exits_after(SECOND, Exit::Signal(15));
    assert!(notes(&restarted).is_empty());
    let Some(Action::Publish(gone)) = restarted.first() else { panic!("{restarted:?}") };
    assert_eq!((gone.pid, gone.restarts, gone.exit), (None, 3, None));
    assert_eq!(restarted[1], Action::Ack);
    assert_eq!(restarted.last(), Some(&Action::Spawn));
    assert_eq!(state(&restarted), Some(ServiceState::Waiting));
    assert_eq!(svc.crash(), Some(SECOND), "a restart forgets the backoff");
}

#[test]
fn stop_while_running_kills_and_never_restarts_even_with_always() {
    let mut svc = Svc::plain(RestartPolicy::Always, 5);
    svc.spawned();
    assert_eq!(svc.request(Request::Stop), [Action::Kill]);
    let stopped = svc.exits_after(SECOND, Exit::Signal(15));
    let shown = snapshot(&stopped).unwrap();
    assert_eq!((shown.state, shown.pid, shown.exit), (ServiceState::Stopped, None, None));
    assert_eq!(stopped.last(), Some(&Action::Ack));
    assert_eq!(backoff(&stopped), None);
    let started = svc.request(Request::Start);
    assert_eq!(started.last(), Some(&Action::Spawn));
}

#[test]
fn a_failed_liveness_check_restarts_whatever_the_policy() {
    let mut svc = Svc::plain(RestartPolicy::No, 5);
    svc.spawned();
    assert!(svc.step(Event::Liveness(Verdict::Healthy)).is_empty());
    assert!(svc.step(Event::Liveness(Verdict::Pending)).is_empty());
    let failed = svc.step(Event::Liveness(Verdict::Failed));
    assert_eq!(failed, [Action::Note("liveness check failed; restarting".into()), Action::Kill]);
    let ended = svc.exits_after(SECOND, Exit::Signal(15));
    assert_eq!(notes(&ended), ["killed by signal 15", "restarting in 1s"]);
    let shown = snapshot(&ended).unwrap();
    assert_eq!((shown.state, shown.exit), (ServiceState::BackingOff, Some(Exit::Signal(15))));
}

#[test]
fn a_stop_keeps_failed_but_turns_completed_into_stopped() {
    let mut failed = Svc::plain(RestartPolicy::No, 5);
    failed.spawned();
    failed.exits_after(SECOND, Exit::Code(1));
    assert_eq!(failed.request(Request::Stop), [Action::Ack]);

    let mut completed = Svc::plain(RestartPolicy::No, 5);
    completed.spawned();
    completed.exits_after(SECOND, Exit::Code(0));
    let stopped = completed.request(Request::Stop);
    assert_eq!(state(&stopped), Some(ServiceState::Stopped));
}

#[test]
fn a_start_after_a_stop_while_waiting_keeps_counting_restarts() {
    // Only the stops of a run or a backoff forget earlier attempts.
    let mut svc = Svc::with(RestartPolicy::Always, 5, false, &[("db", Condition::Started)]);
    let running = dep(ServiceState::Running, None);
    svc.step(Event::Dependency { index: 0, snapshot: running.clone() });
    assert_eq!(svc.crash(), Some(SECOND));
    svc.step(Event::BackoffOver);
    svc.request(Request::Stop);
    svc.request(Request::Start);
    svc.step(Event::Dependency { index: 0, snapshot: running });
    assert_eq!(svc.crash(), Some(2 * SECOND));
}

#[test]
fn when_the_project_goes_away_a_running_service_is_stopped_and_the_task_ends() {
    let mut svc = Svc::plain(RestartPolicy::Always, 5);
    svc.spawned();
    assert_eq!(svc.step(Event::ControlClosed), [Action::Kill]);
    let ended = svc.exits_after(SECOND, Exit::Signal(15));
    assert_eq!(state(&ended), Some(ServiceState::Stopped));
    assert_eq!(ended.last(), Some(&Action::Finish));
    assert!(svc.request(Request::Start).is_empty());

    let mut backing_off = Svc::plain(RestartPolicy::Always, 5);
    backing_off.crash();
    assert_eq!(backing_off.step(Event::ControlClosed), [Action::Finish]);
}

#[test]
fn a_probed_service_starts_until_reachable_and_then_runs_on_the_port_it_was_found_on() {
    let restart =
        Restart { policy: RestartPolicy::OnFailure, max_restarts: 3, backoff: SECOND, max_backoff: SECOND };
    let mut lifecycle = Lifecycle::new(restart, false, Vec::new()).probed(true);
    lifecycle.begin();
    let now = Instant::now();
    let spawned = lifecycle.step(Event::Spawned { pid: 100, started: now, at: now });
    assert_eq!(state(&spawned), Some(ServiceState::Starting), "not running before its port answers");
    let reached = lifecycle.step(Event::Reachable { port: Some(3000) });
    assert_eq!(state(&reached), Some(ServiceState::Running));
    assert_eq!(snapshot(&reached).and_then(|s| s.port), Some(3000));
    assert_eq!(notes(&reached), ["listens on port 3000, not on $PORT; the proxy routes to 3000"]);
    assert!(
        lifecycle.step(Event::Reachable { port: None }).is_empty(),
        "once running, a late probe changes nothing"
    );
    let exited = lifecycle.step(Event::Exited { exit: Exit::Code(1), at: now + SECOND });
    assert_eq!(snapshot(&exited).and_then(|s| s.port), None, "the found port goes with the process");
}

#[test]
fn a_health_check_decides_over_the_readiness_probe() {
    let restart =
        Restart { policy: RestartPolicy::OnFailure, max_restarts: 3, backoff: SECOND, max_backoff: SECOND };
    let mut lifecycle = Lifecycle::new(restart, true, Vec::new()).probed(true);
    lifecycle.begin();
    let now = Instant::now();
    lifecycle.step(Event::Spawned { pid: 100, started: now, at: now });
    assert!(lifecycle.step(Event::Reachable { port: None }).is_empty());
}
