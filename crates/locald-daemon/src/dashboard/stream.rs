//! The page's live feeds, as server-sent events, each a task on the daemon's runtime writing to
//! the proxy through a channel (the task ends when the browser goes away and the channel
//! closes). `/events` sends a snapshot whenever a service's state or the set of projects
//! changes, and every few seconds for CPU and memory; `/logs` sends a project's persisted lines
//! (what `locald logs` shows), then every new one as it is read.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use locald_core::ipc::LogLine;
use locald_proxy::{DashboardBody, DashboardResponse};

use super::snapshot::{self, Memory};
use super::{Server, common_headers, param, text};
use crate::first::first_of;
use crate::logs;

/// Between two snapshots when nothing changes (CPU and memory move anyway).
const TICK: Duration = Duration::from_secs(2);
/// Persisted lines a log view starts with.
const BACKLOG: usize = 500;

fn sse(receiver: mpsc::Receiver<Bytes>) -> DashboardResponse {
    let headers = common_headers(vec![("content-type", "text/event-stream".into())]);
    DashboardResponse { status: 200, headers, body: DashboardBody::Stream(receiver) }
}

fn event(name: &str, data: &str) -> Bytes {
    // JSON has no raw newlines, so the data is one `data:` line.
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(super) fn events(server: &Arc<Server>) -> DashboardResponse {
    let (sender, receiver) = mpsc::channel(4);
    let server = server.clone();
    server.runtime.clone().spawn(async move {
        let proxy = server.proxy.clone();
        let url = move |host: &str| proxy.https_url(host);
        let mut running = server.supervisor.running();
        let mut memory = Memory::default();
        loop {
            let snapshot = snapshot::take(&server.supervisor, &url, &mut memory);
            let Ok(json) = serde_json::to_string(&snapshot) else { return };
            if sender.send(event("state", &json)).await.is_err() {
                return;
            }
            let mut watches: Vec<_> = server
                .supervisor
                .all()
                .iter()
                .flat_map(|p| p.services.iter().map(|h| h.status.clone()))
                .collect();
            for watch in &mut watches {
                watch.borrow_and_update();
            }
            let changes = first_of(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = running.changed() => {}
                () = changes => {}
                () = tokio::time::sleep(TICK) => {}
                () = sender.closed() => return,
            }
        }
    });
    sse(receiver)
}

pub(super) fn logs(server: &Arc<Server>, query: &str) -> DashboardResponse {
    let dir = PathBuf::from(param(query, "dir").unwrap_or_default());
    let Some(project) = server.supervisor.get(&dir) else {
        return text(404, "No such project running.\n");
    };
    let service = param(query, "service").filter(|s| !s.is_empty());
    let names: Vec<String> = match &service {
        Some(name) if project.handle(name).is_none() => return text(404, "No such service.\n"),
        Some(name) => vec![name.clone()],
        None => project.services.iter().map(|h| h.service.name.clone()).collect(),
    };
    let (sender, receiver) = mpsc::channel(64);
    server.runtime.spawn(async move {
        // Subscribed before the files are read; what both have is sent once.
        let mut live = project.live.subscribe();
        let log_dir = project.log_dir.clone();
        let wanted = names.clone();
        let backlog =
            tokio::task::spawn_blocking(move || logs::merged(&log_dir, &wanted, None, Some(BACKLOG)))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
        let mut seen_until = backlog.last().map_or(0, |l| l.micros);
        for line in &backlog {
            if sender.send(log_event(line)).await.is_err() {
                return;
            }
        }
        let wanted: HashSet<String> = names.into_iter().collect();
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(line) if wanted.contains(&line.service) && line.micros > seen_until => {
                        seen_until = 0;
                        if sender.send(log_event(&line)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = LogLine {
                            service: "locald".into(),
                            micros: logs::now_micros(),
                            stream: "locald".into(),
                            line: format!("({n} lines skipped; they are in the log files)"),
                        };
                        if sender.send(log_event(&note)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = sender.closed() => return,
            }
        }
    });
    sse(receiver)
}

fn log_event(line: &LogLine) -> Bytes {
    event("log", &serde_json::to_string(line).unwrap_or_default())
}
