//! The daemon's socket: one per user, private, and one request per connection. Requests are
//! framed by `locald_core::ipc`; `up` and `logs -f` answer with a stream of frames.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast};

use locald_core::ipc::{self, FrameError, LogLine, Request, Response, ServiceState};

use crate::logs;
use crate::supervisor::service::Control;
use crate::supervisor::{Supervisor, control};

/// Set by the CLI when it starts the daemon in the background: a pipe fd on which the daemon
/// writes one byte once its socket accepts connections.
pub const READY_FD_VAR: &str = "LOCALD_READY_FD";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("a locald daemon is already running (socket {0})")]
    AlreadyRunning(PathBuf),
    #[error("{0}: exists and is not a socket owned by you; remove it")]
    NotOurSocket(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error(transparent)]
    Paths(#[from] locald_core::paths::PathError),
}

/// Runs the daemon in the foreground until `server stop`, SIGTERM or SIGINT.
pub async fn run(socket: PathBuf, state_dir: PathBuf) -> Result<(), ServerError> {
    let dir = socket.parent().expect("socket has a parent").to_owned();
    // The lock, not the socket, decides who is the daemon: two racing starts cannot both win,
    // and the winner may then safely replace a stale socket file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("locald.lock"))
        .map_err(|e| ServerError::Io(dir.clone(), e))?;
    let lock = take_lock(lock, &socket).await?;
    let listener = bind(&socket)?;
    signal_ready();
    let supervisor = Arc::new(Supervisor::new(state_dir));
    let shutdown = Arc::new(Shutdown { notify: Notify::new(), socket: socket.clone() });
    for (dir, why) in supervisor.recover() {
        eprintln!("locald: could not bring {} back up: {why}", dir.display());
    }
    eprintln!("locald: daemon {} listening on {}", std::process::id(), socket.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Io(socket.clone(), e))?;
    let uid = nix::unistd::getuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == uid => {
                        tokio::spawn(serve(stream, supervisor.clone(), shutdown.clone()));
                    }
                    // Another user (or no credentials): close without reading a byte.
                    _ => drop(stream),
                }
            }
            () = shutdown.notify.notified() => break,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    drop(lock);
    Ok(())
}

/// The daemon lock; while a stopping daemon still holds it (its socket already gone) we wait a
/// little instead of failing a start that will succeed a moment later.
async fn take_lock(
    mut file: std::fs::File,
    socket: &Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, ServerError> {
    for _ in 0..100 {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((returned, _)) => file = returned,
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ServerError::AlreadyRunning(socket.to_owned()))
}

fn bind(socket: &Path) -> Result<UnixListener, ServerError> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) => {
            if !meta.file_type().is_socket() || meta.uid() != nix::unistd::getuid().as_raw() {
                return Err(ServerError::NotOurSocket(socket.to_owned()));
            }
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(ServerError::AlreadyRunning(socket.to_owned()));
            }
            // Stale: its daemon died without cleaning up; we hold the lock.
            std::fs::remove_file(socket).map_err(|e| ServerError::Io(socket.to_owned(), e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::Io(socket.to_owned(), e)),
    }
    let listener = UnixListener::bind(socket).map_err(|e| ServerError::Io(socket.to_owned(), e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Io(socket.to_owned(), e))?;
    Ok(listener)
}

fn signal_ready() {
    let Some(fd) = std::env::var(READY_FD_VAR).ok().and_then(|v| v.parse::<i32>().ok()) else { return };
    // Only accept what the CLI can have passed: not stdio, and an fd that is open.
    if fd < 3 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return;
    }
    // SAFETY: the fd is open (checked above) and was handed to this process for exactly this
    // use; owning it here closes it, so services started later do not inherit it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = std::fs::File::from(fd).write_all(b"1");
}

/// How `server stop` ends the accept loop.
struct Shutdown {
    notify: Notify,
    socket: PathBuf,
}

async fn serve(stream: UnixStream, supervisor: Arc<Supervisor>, shutdown: Arc<Shutdown>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let request = match read_request(&mut reader).await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            let _ = send(&mut write, &Response::Error { message: e.to_string() }).await;
            return;
        }
    };
    let mut out = Out { write, closed: Box::pin(wait_closed(reader)) };
    let _ = handle(request, &supervisor, &shutdown, &mut out).await;
}

async fn read_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Request>, FrameError> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        (&mut *reader).take(ipc::MAX_FRAME as u64 + 1).read_until(b'\n', &mut line).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request within 10s"))??;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > ipc::MAX_FRAME {
            FrameError::TooLarge
        } else {
            io::Error::from(io::ErrorKind::UnexpectedEof).into()
        });
    }
    line.pop();
    ipc::decode(&line).map(Some)
}

/// Resolves when the client hangs up (a follower that went away).
async fn wait_closed(mut reader: BufReader<tokio::net::unix::OwnedReadHalf>) {
    let mut sink = [0u8; 64];
    while let Ok(n) = reader.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

struct Out {
    write: tokio::net::unix::OwnedWriteHalf,
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    write.write_all(&ipc::encode(response)).await
}

impl Out {
    async fn send(&mut self, response: Response) -> io::Result<()> {
        send(&mut self.write, &response).await
    }
}

async fn handle(
    request: Request,
    supervisor: &Supervisor,
    shutdown: &Shutdown,
    out: &mut Out,
) -> io::Result<()> {
    match request {
        Request::Ping => {
            out.send(Response::Pong { version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() })
                .await
        }
        Request::Up { dir } => up(supervisor, &dir, out).await,
        Request::Down { dir } => {
            let response = if supervisor.down(&dir).await {
                Response::Ok
            } else {
                Response::Error { message: format!("no project running in {}", dir.display()) }
            };
            out.send(response).await
        }
        Request::Status => {
            let projects = supervisor.all().iter().map(|p| p.status()).collect();
            out.send(Response::Status { projects }).await
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
        Request::Shutdown => {
            supervisor.shutdown().await;
            // Gone before the answer: once `server stop` returns, nobody can reach this daemon.
            let _ = std::fs::remove_file(&shutdown.socket);
            shutdown.notify.notify_one();
            out.send(Response::Ok).await?;
            Ok(())
        }
    }
}

/// Streams state changes until every service is ready, or one fails.
async fn up(supervisor: &Supervisor, dir: &Path, out: &mut Out) -> io::Result<()> {
    let (project, attached) = match supervisor.up(dir) {
        Ok(up) => up,
        Err(e) => return out.send(Response::Error { message: e.to_string() }).await,
    };
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
            let ready = match snapshot.state {
                ServiceState::Completed => true,
                ServiceState::Running => handle.service.health_check.is_none(),
                ServiceState::Healthy => true,
                ServiceState::Failed | ServiceState::Unhealthy | ServiceState::Stopped => {
                    let last_lines = logs::read_service(&project.log_dir, &handle.service.name, None)
                        .map(|lines| lines.iter().rev().take(20).rev().map(|l| l.line.clone()).collect())
                        .unwrap_or_default();
                    let message = snapshot.detail.unwrap_or_else(|| snapshot.state.as_str().into());
                    return out
                        .send(Response::UpFailed {
                            service: handle.service.name.clone(),
                            message,
                            last_lines,
                        })
                        .await;
                }
                _ => false,
            };
            all_ready &= ready;
        }
        if all_ready {
            let config_changed = attached && project.config_changed();
            return out.send(Response::UpDone { project: project.status(), attached, config_changed }).await;
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
