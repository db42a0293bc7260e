//! One answer (or stream of answers) per request.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use locald_core::ipc::{LogLine, ProjectStatus, PullProgress, Request, Response, ServiceState};

use super::{Daemon, Out, Shutdown};
use crate::first::first_of;
use crate::logs;
use crate::supervisor::service::Control;
use crate::supervisor::{Applied, Project, Supervisor, Want, control};
use crate::watch::Watchers;
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
        // `up` publishes the project itself as soon as it is added or changed.
        Request::Up { dir, services, profiles } => {
            if pull_images(daemon, &dir, &[], false, out).await? {
                up(daemon, &dir, &Want { services, profiles }, out).await
            } else {
                Ok(())
            }
        }
        Request::Pull { dir, services } => {
            if pull_images(daemon, &dir, &services, true, out).await? {
                out.send(Response::Ok).await
            } else {
                Ok(())
            }
        }
        Request::Down { dir, volumes } => {
            daemon.watchers.stop(&dir);
            let mut response = if supervisor.down(&dir).await {
                Response::Ok
            } else {
                Response::Error { message: format!("no project running in {}", dir.display()) }
            };
            // Removed even when the project is no longer running: `down` then `down --volumes`.
            if volumes {
                // Like `compose down --volumes`: what the containers wrote goes too.
                let shim = supervisor.privileged();
                let project = dir.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    crate::container::prepare::remove_containers(&*shim, &project)
                })
                .await;
                let failed = match removed {
                    Ok(result) => result.err().map(|e| e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                response = match failed {
                    Some(e) => Response::Error { message: format!("containers of {}: {e}", dir.display()) },
                    None => Response::Ok,
                };
            }
            reachable(daemon).await;
            out.send(response).await
        }
        Request::Status => {
            let projects = supervisor
                .all()
                .iter()
                .map(|p| {
                    let mut status = project_status(proxy, p);
                    watch_status(&daemon.watchers, &mut status);
                    status
                })
                .collect();
            out.send(Response::Status { projects, proxy: proxy.map(|p| p.status().clone()) }).await
        }
        Request::Logs { dir, services, follow, tail, since_micros } => {
            logs(supervisor, &dir, services, follow, tail, since_micros, out).await
        }
        Request::Start { dir, services } => {
            service_control(supervisor, &dir, &services, Make::Start, out).await
        }
        Request::Stop { dir, services } => {
            service_control(supervisor, &dir, &services, Make::Stop, out).await
        }
        Request::Restart { dir, services } => {
            service_control(supervisor, &dir, &services, Make::Restart, out).await
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
        Request::Watch { dir, on } => {
            let response = if on {
                match daemon.watchers.start(&daemon.supervisor, &dir) {
                    Ok(services) => Response::Watching { services },
                    Err(e) => Response::Error { message: e.to_string() },
                }
            } else if daemon.watchers.stop(&dir) {
                Response::Ok
            } else {
                Response::Error { message: format!("{} is not watched", dir.display()) }
            };
            out.send(response).await
        }
        Request::Env { dir, service } => {
            let response = match super::env::service_env(supervisor, &dir, &service) {
                Ok(env) => Response::Env(env),
                Err(message) => Response::Error { message },
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
            daemon.watchers.stop_all();
            supervisor.shutdown().await;
            reachable(daemon).await;
            if let Some(proxy) = &daemon.proxy {
                proxy.stop().await;
            }
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
            if service.url.is_some() && handle.service.serves.is_routed() {
                service.url = Some(proxy.status().https_url(&handle.service.domain));
            }
        }
    }
    status
}

/// Whether the project is watched, and what the last change a service restarted for was.
fn watch_status(watchers: &Watchers, status: &mut ProjectStatus) {
    let Some(changes) = watchers.of(&status.dir) else { return };
    status.watching = true;
    for service in &mut status.services {
        if let Some(change) = changes.get(&service.name) {
            let more = match change.more {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            let ago =
                humantime::format_duration(std::time::Duration::from_secs(change.at.elapsed().as_secs()));
            service.changed = Some(format!("{}{more} changed {ago} ago", change.path));
        }
    }
}

/// Returns once the projects that are up now, and only those, are reachable: the supervisor
/// published them when their set changed, and the wiring has made the proxy route them and
/// `/etc/hosts` list the names it routes (none: the block goes away).
async fn reachable(daemon: &Daemon) {
    daemon.wiring.applied(daemon.supervisor.generation()).await;
}

/// Pulls what the project's registry images need, streaming progress (at most every 100 ms per
/// image, plus each image's last report). Runs before the supervisor takes its projects lock:
/// a long download must not stall every other request. `false`: failed, and said so.
async fn pull_images(
    daemon: &Daemon,
    dir: &Path,
    services: &[String],
    force: bool,
    out: &mut Out,
) -> io::Result<bool> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let config = match daemon.supervisor.load_unprobed(&dir) {
        Ok(config) => config,
        // `up` reports a broken file itself, with its position; `pull` has nothing else to do.
        Err(_) if !force => return Ok(true),
        Err(e) => {
            out.send(Response::Error { message: e.to_string() }).await?;
            return Ok(false);
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pulling = crate::container::pulls::ensure(&config, services.to_vec(), force, move |p| {
        let _ = tx.send(p);
    });
    tokio::pin!(pulling);
    let mut last_sent: HashMap<String, Instant> = HashMap::new();
    let mut send = async |p: PullProgress, out: &mut Out| -> io::Result<()> {
        let due = last_sent.get(&p.image).is_none_or(|at| at.elapsed() >= Duration::from_millis(100));
        if p.done || due {
            last_sent.insert(p.image.clone(), Instant::now());
            out.send(Response::Pull(p)).await?;
        }
        Ok(())
    };
    let result = loop {
        tokio::select! {
            result = &mut pulling => break result,
            Some(p) = rx.recv() => send(p, out).await?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        send(p, out).await?;
    }
    match result {
        Ok(()) => Ok(true),
        Err(message) => {
            out.send(Response::Error { message }).await?;
            Ok(false)
        }
    }
}

/// Streams state changes until every service is ready, or one fails.
async fn up(daemon: &Daemon, dir: &Path, want: &Want, out: &mut Out) -> io::Result<()> {
    let proxy = daemon.proxy.as_deref();
    let Applied { project, attached, selected, change } = match daemon.supervisor.up_with(dir, want).await {
        Ok(up) => up,
        Err(e) => return out.send(Response::Error { message: e.to_string() }).await,
    };
    // What this `up` waits for: the services asked for, not others left running.
    let waited: Vec<_> = project.services.iter().filter(|h| selected.contains(&h.service.name)).collect();
    // Routed and resolvable while it starts, so its URL shows the starting page rather than an
    // unknown host or a name that does not resolve.
    reachable(daemon).await;
    if attached {
        // Like a first `up`: whatever was stopped or gave up is started again, in start order.
        for handle in &waited {
            let state = handle.status.borrow().state;
            if matches!(state, ServiceState::Stopped | ServiceState::Failed) {
                control(handle, Control::Start).await;
            }
        }
    }
    let mut watches: Vec<_> = waited.iter().map(|h| h.status.clone()).collect();
    let mut reported: Vec<Option<ServiceState>> = vec![None; watches.len()];
    loop {
        let mut all_ready = true;
        // The earliest start timeout of a service not ready yet.
        let mut next_due = None;
        for (i, handle) in waited.iter().enumerate() {
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
            let ready = snapshot.state.is_ready(handle.service.health_check.is_some());
            all_ready &= ready;
            if let Some(since) = snapshot.since.filter(|_| !ready) {
                let due = since + handle.service.start_timeout;
                if due <= tokio::time::Instant::now().into_std() {
                    let last_lines = logs::last_lines(&project.log_dir, &handle.service.name, 20);
                    let message = start_timeout_message(&handle.service);
                    return out
                        .send(Response::UpFailed {
                            service: handle.service.name.clone(),
                            message,
                            last_lines,
                        })
                        .await;
                }
                next_due = Some(next_due.map_or(due, |d: std::time::Instant| d.min(due)));
            }
        }
        if all_ready {
            let privileged = daemon.supervisor.privileged();
            let mut notes: Vec<String> = change
                .clone()
                .into_iter()
                .chain(crate::hosts::unwritable_note(&project.config))
                .chain(crate::hosts::ports_only_note(&project.config, &*privileged))
                .collect();
            notes.extend(elsewhere_notes(&project));
            notes.extend(crate::container::prepare::overlay_note());
            return out
                .send(Response::UpDone {
                    project: Box::new(project_status(proxy, &project)),
                    attached,
                    proxy: proxy.map(|p| p.status().clone()),
                    notes,
                })
                .await;
        }
        let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
        let timeout = async {
            match next_due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = first_of(changes) => {}
            () = timeout => {}
            () = &mut out.closed => return Ok(()),
        }
    }
}

/// One line per service found listening on another port than its `$PORT`.
fn elsewhere_notes(project: &Project) -> impl Iterator<Item = String> + '_ {
    project.services.iter().filter_map(|handle| {
        let found = handle.status.borrow().port?;
        Some(format!(
            "{} listens on port {found}, not on its $PORT {}; locald routes to {found}",
            handle.service.name, handle.service.port
        ))
    })
}

/// Why `up` gave up on a service that did not get ready in time, with what to change.
fn start_timeout_message(service: &locald_core::config::Service) -> String {
    let within = humantime::format_duration(service.start_timeout);
    if service.health_check.is_some() {
        format!("did not pass its health check within {within} (start_timeout)")
    } else {
        format!(
            "did not accept connections on port {} ($PORT) within {within}; raise start_timeout, \
             or set `port = false` if it does not serve",
            service.port
        )
    }
}

#[derive(Clone, Copy)]
enum Make {
    Start,
    Stop,
    Restart,
}

impl Make {
    fn control(self) -> fn(tokio::sync::oneshot::Sender<()>) -> Control {
        match self {
            Make::Start => Control::Start,
            Make::Stop => Control::Stop,
            Make::Restart => Control::Restart,
        }
    }
}

/// `start`/`restart` in start order, `stop` dependents first; every name is checked before
/// anything is done.
async fn service_control(
    supervisor: &Supervisor,
    dir: &Path,
    services: &[String],
    make: Make,
    out: &mut Out,
) -> io::Result<()> {
    let canonical = dir.canonicalize().unwrap_or(dir.to_owned());
    let Some(project) = supervisor.get(&canonical) else {
        return out
            .send(Response::Error { message: format!("no project running in {}", dir.display()) })
            .await;
    };
    if let Err(e) = project.config.check_names(services) {
        return out.send(Response::Error { message: e.to_string() }).await;
    }
    let stopping = matches!(make, Make::Stop);
    let mut handles: Vec<_> =
        project.services.iter().filter(|h| services.contains(&h.service.name)).collect();
    if let Some(missing) = services.iter().find(|s| !handles.iter().any(|h| &h.service.name == *s)) {
        if !stopping {
            return out
                .send(Response::Error {
                    message: format!(
                        "service {missing:?} is not part of the running project (a subset or a profile); \
                         `locald up {missing}` starts it"
                    ),
                })
                .await;
        }
    }
    if stopping {
        handles.reverse();
    }
    for handle in handles {
        if !control(handle, make.control()).await {
            return out.send(Response::Error { message: "service task ended".into() }).await;
        }
    }
    out.send(Response::Ok).await
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
