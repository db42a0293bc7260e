//! The daemon's socket: one per user, private, and one request per connection. Requests are
//! framed by `locald_core::ipc`; `up` and `logs -f` answer with a stream of frames. This module
//! owns the socket and the framing; [`requests`] answers them.

mod env;
mod requests;

use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use locald_core::ipc::{self, FrameError, Request, Response};

use crate::supervisor::Supervisor;
use crate::watch::Watchers;
use crate::wiring::{self, Wiring};
use locald_proxy::Proxy;

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
    // Before the proxy sizes its connection cap from it.
    crate::nofile::raise();
    let reset = crate::signals::reset_ignored();
    if !reset.is_empty() {
        let names: Vec<&str> = reset.iter().map(|s| s.as_str()).collect();
        tracing::info!(
            "started with {} ignored: back to their default, for the services too",
            names.join(", ")
        );
    }
    // The one discovery of the shim: everything in the daemon that needs root asks this.
    let supervisor = Arc::new(Supervisor::new(state_dir.clone(), crate::shim::discover()));
    let shutdown = Arc::new(Shutdown { notify: Notify::new(), socket: socket.clone() });
    for (dir, why) in supervisor.recover() {
        tracing::warn!("could not bring {} back up: {why}", dir.display());
    }
    let privileged = supervisor.privileged();
    let via_shim = wiring::ViaShim(&*privileged);
    let proxy = match Proxy::start(wiring::low_ports(&via_shim)) {
        Ok(proxy) => {
            let status = proxy.status();
            let also = if status.ipv6_note.is_none() { " (and on [::1])" } else { "" };
            tracing::info!(
                "proxy on https 127.0.0.1:{} and http 127.0.0.1:{}{also}",
                status.https_port,
                status.http_port
            );
            if let Some(note) = &status.note {
                tracing::warn!("proxy not on 443/80: {note}");
            }
            if let Some(note) = &status.ipv6_note {
                tracing::warn!("proxy not on ::1: {note}");
            }
            Some(proxy)
        }
        Err(e) => {
            tracing::warn!("no proxy: {e}");
            None
        }
    };
    let wiring = Wiring::start(&supervisor, proxy.clone());
    let watchers = Arc::new(Watchers::new(&state_dir));
    watchers.restore(&supervisor);
    let dashboard = proxy.as_ref().and_then(|proxy| {
        match crate::dashboard::Server::new(&state_dir, supervisor.clone(), proxy.status()) {
            Ok(dashboard) => {
                proxy.set_dashboard(dashboard.hook());
                Some(dashboard)
            }
            Err(e) => {
                tracing::warn!("no dashboard: {}: {e}", state_dir.display());
                None
            }
        }
    });
    tracing::info!("daemon {} listening on {}", std::process::id(), socket.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServerError::Io(socket.clone(), e))?;
    let uid = nix::unistd::getuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == uid => {
                        let daemon = Daemon {
                            supervisor: supervisor.clone(),
                            proxy: proxy.clone(),
                            wiring: wiring.clone(),
                            watchers: watchers.clone(),
                            dashboard: dashboard.clone(),
                        };
                        tokio::spawn(serve(stream, daemon, shutdown.clone()));
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
    watchers.stop_all();
    supervisor.shutdown().await;
    // Like `server stop`: the names go from `/etc/hosts` before the daemon does.
    wiring.applied(supervisor.generation()).await;
    if let Some(proxy) = &proxy {
        proxy.stop().await;
    }
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
pub(crate) struct Shutdown {
    pub(crate) notify: Notify,
    pub(crate) socket: PathBuf,
}

/// What a request is answered with.
pub(crate) struct Daemon {
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) proxy: Option<Arc<Proxy>>,
    pub(crate) wiring: Wiring,
    pub(crate) watchers: Arc<Watchers>,
    pub(crate) dashboard: Option<Arc<crate::dashboard::Server>>,
}

async fn serve(stream: UnixStream, daemon: Daemon, shutdown: Arc<Shutdown>) {
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
    let _ = requests::handle(request, &daemon, &shutdown, &mut out).await;
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

/// The answering side of a connection, and a future that resolves when the client hangs up.
pub(crate) struct Out {
    write: tokio::net::unix::OwnedWriteHalf,
    pub(crate) closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    write.write_all(&ipc::encode(response)).await
}

impl Out {
    pub(crate) async fn send(&mut self, response: Response) -> io::Result<()> {
        send(&mut self.write, &response).await
    }
}
