//! One answer (or stream of answers) per request.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use tokio::sync::broadcast;

use locald_core::ipc::{LogLine, ProjectStatus, Request, Response, ServiceState};

use super::{Daemon, Out, Shutdown};
use crate::logs;
use crate::supervisor::service::Control;
use crate::supervisor::{Project, Supervisor, control};
use locald_proxy::Proxy;

pub(super) async fn handle(
    request: Request,
    daemon: &Daemon,
    shutdown: &Shutdown,
    out: &mut Out,
) -> io::Result<()> {
    let supervisor = &*daemon.supervisor;
    let proxy = daemon.proxy.as_deref();
    match request {
        Request::Ping => {
            out.send(Response::Pong { version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() })
                .await
        }
        // `up` publishes the project itself as soon as it is added; nothing
        // changes the set of projects after that, so there is nothing to redo here.
        Request::Up { dir } => up(daemon, &dir, out).await,
        Request::Down { dir } => {
            let response = if supervisor.down(&dir).await {
                Response::Ok
            } else {
                Response::Error { message: format!("no project running in {}", dir.display()) }
            };
            reachable(daemon).await;
            out.send(response).await
        }
        Request::Status => {
            let projects = supervisor.all().iter().map(|p| project_status(proxy, p)).collect();
            out.send(Response::Status { projects, proxy: proxy.map(|p| p.status().clone()) }).await
        }
        Request::Logs { dir, services, follow, tail, since_micros } => {
            logs(supervisor, &dir, services, follow, tail, since_micros, out).await
        }
        Request::Start { dir, service } => {
            service_control(supervisor, &dir, &service, Control::Start, out).await
        }
        Request::Stop { dir, service } => {
            service_control(supervisor, &dir, &service, Control::Stop, out).await
        }
        Request::Restart { dir, service } => {
            service_control(supervisor, &dir, &service, Control::Restart, out).await
        }
        Request::ConfigShow { dir } => {
            let canonical = dir.canonicalize().unwrap_or(dir.clone());
            let response = match supervisor.get(&canonical) {
                Some(project) => Response::Config(Box::new(project.config.clone())),
                None => match supervisor.load(&dir) {
                    Ok(config) => Response::Config(Box::new(config)),
                    Err(e) => Response::Error { message: e.to_string() },
                },
            };
            out.send(response).await
        }
        Request::Dashboard => {
            let response = match daemon.dashboard.as_ref().map(|d| d.login_url()) {
                Some(Ok(url)) => Response::DashboardLogin { url },
                Some(Err(e)) => Response::Error { message: format!("dashboard login token: {e}") },
                None => Response::Error {
                    message: "the dashboard is not available: the daemon has no proxy (see its log)".into(),
                },
            };
            out.send(response).await
        }
        Request::Shutdown => {
            supervisor.shutdown().await;
            reachable(daemon).await;
            // Gone before the answer: once `server stop` returns, nobody can reach this daemon.
            let _ = std::fs::remove_file(&shutdown.socket);
            shutdown.notify.notify_one();
            out.send(Response::Ok).await?;
            Ok(())
        }
    }
}

/// A project's status with the URLs the proxy serves it at (with the port when not 443).
fn project_status(proxy: Option<&Proxy>, project: &Project) -> ProjectStatus {
    let mut status = project.status();
    if let Some(proxy) = proxy {
        for (service, handle) in status.services.iter_mut().zip(&project.services) {
            service.url = proxy.status().https_url(&handle.service.domain);
        }
    }
    status
}

/// Returns once the projects that are up now, and only those, are reachable: the supervisor
/// published them when their set changed, and the wiring has made the proxy route them and
/// `/etc/hosts` list the names it routes (none: the block goes away).
async fn reachable(daemon: &Daemon) {
    daemon.wiring.applied(daemon.supervisor.generation()).await;
}

/// Streams state changes until every service is ready, or one fails.
async fn up(daemon: &Daemon, dir: &Path, out: &mut Out) -> io::Result<()> {
    let proxy = daemon.proxy.as_deref();
    let (project, attached) = match daemon.supervisor.up(dir) {
        Ok(up) => up,
        Err(e) => return out.send(Response::Error { message: e.to_string() }).await,
    };
    // Routed and resolvable while it starts, so its URL shows the starting page rather than an
    // unknown host or a name that does not resolve.
    reachable(daemon).await;
    if attached {
        // Like a first `up`: whatever was stopped or gave up is started again, in start order.
        for handle in &project.services {
            let state = handle.status.borrow().state;
            if matches!(state, ServiceState::Stopped | ServiceState::Failed) {
                control(handle, Control::Start).await;
            }
        }
    }
    let mut watches: Vec<_> = project.services.iter().map(|h| h.status.clone()).collect();
    let mut reported: Vec<Option<ServiceState>> = vec![None; watches.len()];
    loop {
        let mut all_ready = true;
        for (i, handle) in project.services.iter().enumerate() {
            let snapshot = watches[i].borrow_and_update().clone();
            if reported[i] != Some(snapshot.state) {
                reported[i] = Some(snapshot.state);
                out.send(Response::Progress {
                    service: handle.service.name.clone(),
                    state: snapshot.state,
                    detail: snapshot.detail.clone(),
                })
                .await?;
            }
            if snapshot.state.is_failing() {
                let last_lines = logs::last_lines(&project.log_dir, &handle.service.name, 20);
                let message = snapshot.detail.unwrap_or_else(|| snapshot.state.as_str().into());
                return out
                    .send(Response::UpFailed { service: handle.service.name.clone(), message, last_lines })
                    .await;
            }
            all_ready &= snapshot.state.is_ready(handle.service.health_check.is_some());
        }
        if all_ready {
            let config_changed = attached && project.config_changed();
            let notes = crate::hosts::unwritable_note(&project.config).into_iter().collect();
            return out
                .send(Response::UpDone {
                    project: project_status(proxy, &project),
                    attached,
                    config_changed,
                    proxy: proxy.map(|p| p.status().clone()),
                    notes,
                })
                .await;
        }
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        tokio::select! {
            _ = futures_select(changes) => {}
            () = &mut out.closed => return Ok(()),
        }
    }
}

/// The first of several futures to finish.
async fn futures_select<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(&mut *f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn service_control(
    supervisor: &Supervisor,
    dir: &Path,
    service: &str,
    make: fn(tokio::sync::oneshot::Sender<()>) -> Control,
    out: &mut Out,
) -> io::Result<()> {
    let canonical = dir.canonicalize().unwrap_or(dir.to_owned());
    let Some(project) = supervisor.get(&canonical) else {
        return out
            .send(Response::Error { message: format!("no project running in {}", dir.display()) })
            .await;
    };
    let Some(handle) = project.handle(service) else {
        return out
            .send(Response::Error {
                message: format!("no service {service:?} in project {}", project.config.project.name),
            })
            .await;
    };
    let response = if control(handle, make).await {
        Response::Ok
    } else {
        Response::Error { message: "service task ended".into() }
    };
    out.send(response).await
}

async fn logs(
    supervisor: &Supervisor,
    dir: &Path,
    mut services: Vec<String>,
    follow: bool,
    tail: Option<usize>,
    since: Option<u64>,
    out: &mut Out,
) -> io::Result<()> {
    let canonical = dir.canonicalize().unwrap_or(dir.to_owned());
    let project = supervisor.get(&canonical);
    let log_dir = supervisor.log_dir(&canonical);
    let known: Vec<String> = match &project {
        Some(p) => p.services.iter().map(|h| h.service.name.clone()).collect(),
        None => logged_services(&log_dir),
    };
    if project.is_none() && known.is_empty() {
        return out
            .send(Response::Error { message: format!("no logs for a project in {}", dir.display()) })
            .await;
    }
    if let Some(unknown) = services.iter().find(|s| !known.contains(s)) {
        return out
            .send(Response::Error { message: format!("no service {unknown:?} (have: {})", known.join(", ")) })
            .await;
    }
    if services.is_empty() {
        services = known;
    }
    // Subscribe before reading the files, then skip what the files already had.
    let mut live = project.as_ref().filter(|_| follow).map(|p| p.live.subscribe());
    let lines = match logs::merged(&log_dir, &services, since, tail) {
        Ok(lines) => lines,
        Err(e) => return out.send(Response::Error { message: format!("reading logs: {e}") }).await,
    };
    let mut seen_until = lines.last().map_or(0, |l| l.micros);
    for line in lines {
        out.send(Response::Log(line)).await?;
    }
    let Some(live) = live.as_mut() else { return out.send(Response::Ok).await };
    let wanted: HashSet<String> = services.into_iter().collect();
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(line) => {
                    if wanted.contains(&line.service) && line.micros > seen_until {
                        seen_until = 0;
                        out.send(Response::Log(line)).await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = LogLine { service: "locald".into(), micros: logs::now_micros(), stream: "locald".into(), line: format!("({n} lines skipped: follower too slow; they are in the log files)") };
                    out.send(Response::Log(note)).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return out.send(Response::Ok).await,
            },
            () = &mut out.closed => return Ok(()),
        }
    }
}

fn logged_services(log_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log").map(str::to_owned))
        .collect();
    names.sort();
    names
}
