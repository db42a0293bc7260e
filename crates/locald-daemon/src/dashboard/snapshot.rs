//! What the page shows of every project at one moment, as JSON: each service's state, pid,
//! port, URL, restarts, uptime, CPU and memory, and a crashed one's last log lines.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use locald_core::config::serving::{Serves, shown_address};
use locald_core::ipc::ServiceState;

use super::stats::{ProcScan, Usage};
use crate::supervisor::Supervisor;
use crate::supervisor::process::Exit;

/// Lines of a crashed service's log on its card.
const CARD_LINES: usize = 5;

#[derive(Serialize)]
pub(super) struct Snapshot {
    projects: Vec<Project>,
}

#[derive(Serialize)]
struct Project {
    name: String,
    dir: String,
    services: Vec<Service>,
}

#[derive(Serialize)]
struct Service {
    name: String,
    state: &'static str,
    /// What the card says: `crashed` for a process that gave up with a failure.
    label: &'static str,
    detail: Option<String>,
    pid: Option<u32>,
    /// None for a service that listens nowhere (`port = false`).
    port: Option<u16>,
    /// The proxy's `https://` name for HTTP, `127.0.0.1:<port>` for another protocol, none for
    /// a service that serves nothing or a one-shot that completed (as `status` shows).
    url: Option<String>,
    healthy: Option<bool>,
    restarts: u32,
    uptime_secs: Option<u64>,
    exit_code: Option<i32>,
    /// Percent of one core since the previous snapshot.
    cpu_percent: Option<f64>,
    memory_bytes: Option<u64>,
    last_lines: Vec<String>,
}

/// What one stream remembers between its snapshots: CPU totals for the rates, and the last
/// lines of down services (read once per run that ended, not on every snapshot).
#[derive(Default)]
pub(super) struct Memory {
    cpu: HashMap<u32, (Instant, u64)>,
    lines: HashMap<(String, String, u32, &'static str), Vec<String>>,
}

fn label(state: ServiceState, exit: Option<Exit>) -> &'static str {
    let failed = exit.is_some_and(|e| e.code() != 0);
    match state {
        ServiceState::Failed if failed => "crashed",
        ServiceState::BackingOff if failed => "crashed",
        ServiceState::BackingOff => "backing off",
        other => other.as_str(),
    }
}

pub(super) fn take(
    supervisor: &Supervisor,
    https_url: &dyn Fn(&str) -> String,
    memory: &mut Memory,
) -> Snapshot {
    let scan = ProcScan::read();
    let now = Instant::now();
    let mut seen = Vec::new();
    let projects = supervisor
        .all()
        .iter()
        .map(|project| {
            let dir = project.config.project.dir.display().to_string();
            let services = project
                .services
                .iter()
                .map(|handle| {
                    let s = handle.status.borrow().clone();
                    let usage: Option<Usage> = s.pid.and_then(|pid| scan.usage(pid));
                    let cpu_percent = match (s.pid, usage) {
                        (Some(pid), Some(usage)) => {
                            seen.push(pid);
                            let rate = memory.cpu.get(&pid).map(|(at, before)| {
                                let wall = now.duration_since(*at).as_micros().max(1) as f64;
                                usage.cpu_micros.saturating_sub(*before) as f64 * 100.0 / wall
                            });
                            memory.cpu.insert(pid, (now, usage.cpu_micros));
                            rate
                        }
                        _ => None,
                    };
                    let port = s.port.unwrap_or(handle.service.port);
                    let completed = s.state == ServiceState::Completed;
                    let dashboard_url = https_url(&handle.service.domain);
                    let label = label(s.state, s.exit);
                    let down = matches!(label, "crashed" | "failed" | "stopped" | "completed");
                    let last_lines = if down && s.exit.is_some() {
                        let key = (dir.clone(), handle.service.name.clone(), s.restarts, s.state.as_str());
                        memory
                            .lines
                            .entry(key)
                            .or_insert_with(|| {
                                crate::logs::last_lines(&project.log_dir, &handle.service.name, CARD_LINES)
                            })
                            .clone()
                    } else {
                        Vec::new()
                    };
                    Service {
                        name: handle.service.name.clone(),
                        state: s.state.as_str(),
                        label,
                        detail: s.detail.clone(),
                        pid: s.pid,
                        port: (!matches!(handle.service.serves, Serves::Nothing)).then_some(port),
                        url: shown_address(handle.service.serves, completed, &dashboard_url, port),
                        healthy: s.healthy,
                        restarts: s.restarts,
                        uptime_secs: s.since.map(|t| t.elapsed().as_secs()),
                        exit_code: s.exit.map(Exit::code),
                        cpu_percent,
                        memory_bytes: usage.map(|u| u.memory_bytes),
                        last_lines,
                    }
                })
                .collect();
            Project { name: project.config.project.name.clone(), dir, services }
        })
        .collect();
    memory.cpu.retain(|pid, _| seen.contains(pid));
    if memory.lines.len() > 512 {
        memory.lines.clear();
    }
    Snapshot { projects }
}
