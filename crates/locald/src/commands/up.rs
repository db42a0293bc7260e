//! `locald up`: progress per service (one line each, redrawn in place on a terminal, appended
//! otherwise), then the URLs; on failure, the failing service's last log lines and a non-zero
//! exit.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use locald_core::config::{FILE_NAME, PROCFILE};
use std::process::ExitCode;

use locald_core::config::Serves;
use locald_core::ipc::{PullProgress, Request, Response, ServiceState};

use super::client::{Client, project_dir};
use super::status::paint;

pub fn run(
    mut args: Vec<String>,
    dir: Option<PathBuf>,
    profiles: Vec<String>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(dir) => Some(dir),
        None if args.first().is_some_and(|a| is_project_dir(a)) => Some(PathBuf::from(args.remove(0))),
        None => None,
    };
    let dir = project_dir(dir)?;
    let mut board = Board { tty: std::io::stdout().is_terminal(), rows: Vec::new(), drawn: 0 };
    let mut pulls = Pulls::new(board.tty);
    if nix::unistd::geteuid().is_root() {
        println!("note: running as root, so the services run as root too");
    }
    let mut client = Client::connect()?;
    client.send(&Request::Up { dir: dir.clone(), services: args, profiles })?;
    loop {
        match client.next()? {
            Response::Pull(progress) => pulls.update(progress),
            Response::Progress { service, state, detail } => board.update(service, state, detail),
            Response::UpDone { project, attached, proxy, notes } => {
                let name = match &project.checkout {
                    Some(checkout) => {
                        format!("{}@{} ({})", project.name, checkout.label, checkout.describe())
                    }
                    None => project.name.clone(),
                };
                if attached {
                    println!("{name} was already up");
                }
                println!("{name} is ready:");
                for s in &project.services {
                    match (&s.url, s.serves) {
                        (Some(url), Serves::Http) => {
                            println!("  {:<16} {url:<40} (direct: http://127.0.0.1:{})", s.name, s.port)
                        }
                        (Some(address), _) => println!("  {:<16} {address}", s.name),
                        // A worker, or a one-shot that has done its job: nothing to open.
                        (None, _) => println!("  {:<16} ({})", s.name, s.state.as_str()),
                    }
                }
                if let Some(proxy) = &proxy {
                    super::status::print_proxy_note(proxy);
                }
                for note in notes {
                    println!("note: {note}");
                }
                if watch {
                    start_watch(dir)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Response::UpFailed { service, message, last_lines } => {
                eprintln!("locald: service {service} failed: {message}");
                if !last_lines.is_empty() {
                    eprintln!("last lines of {service}:");
                    for line in last_lines {
                        eprintln!("  {line}");
                    }
                }
                return Ok(ExitCode::FAILURE);
            }
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
}

/// Asks the daemon to watch the project's files and says what it watches.
fn start_watch(dir: PathBuf) -> anyhow::Result<()> {
    match Client::call(&Request::Watch { dir, on: true })? {
        Response::Watching { services } => {
            for (service, globs) in services {
                println!("watching {service}: {}", globs.join(", "));
            }
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `locald watch --stop`.
pub fn unwatch(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match Client::call(&Request::Watch { dir: project_dir(dir)?, on: false })? {
        Response::Ok => Ok(ExitCode::SUCCESS),
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// `locald pull [SERVICE...]`: pulls afresh through the daemon, showing progress per image.
pub fn pull(dir: &Path, services: Vec<String>) -> anyhow::Result<ExitCode> {
    let dir = project_dir(Some(dir.to_owned()))?;
    let mut pulls = Pulls::new(std::io::stdout().is_terminal());
    let mut client = Client::connect()?;
    client.send(&Request::Pull { dir, services })?;
    loop {
        match client.next()? {
            Response::Pull(progress) => pulls.update(progress),
            Response::Ok => return Ok(ExitCode::SUCCESS),
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
}

/// One row per image being pulled: layers and bytes done, redrawn in place on a terminal, else a
/// line per report (the daemon sends a few a second) and one when the image is done.
struct Pulls {
    tty: bool,
    rows: Vec<(String, String)>,
    drawn: usize,
}

impl Pulls {
    fn new(tty: bool) -> Pulls {
        Pulls { tty, rows: Vec::new(), drawn: 0 }
    }

    fn update(&mut self, p: PullProgress) {
        let text = if p.done && p.downloaded == 0 {
            format!("up to date ({} layers, {})", p.layers_total, bytes(p.bytes_total))
        } else if p.done {
            format!("pulled ({} layers, {} downloaded)", p.layers_total, bytes(p.downloaded))
        } else {
            format!(
                "pulling: {}/{} layers, {} / {}",
                p.layers_done,
                p.layers_total,
                bytes(p.bytes_done),
                bytes(p.bytes_total)
            )
        };
        if !self.tty {
            println!("image {} {text}", p.image);
            return;
        }
        match self.rows.iter_mut().find(|(name, _)| *name == p.image) {
            Some(row) => row.1 = text,
            None => self.rows.push((p.image, text)),
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for (name, text) in &self.rows {
            let _ = writeln!(out, "\x1b[2Kimage {name} {text}");
        }
        let _ = out.flush();
        self.drawn = self.rows.len();
    }
}

/// `12.3 MB`: decimal units, as registries and `docker images` show sizes.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// A service name is a DNS label, so an argument with a `/` or a dot is a path; so is a
/// directory that holds a project (`locald up shop` from its parent).
fn is_project_dir(arg: &str) -> bool {
    let path = Path::new(arg);
    arg.contains(['/', '.']) || [FILE_NAME, PROCFILE].iter().any(|f| path.join(f).is_file())
}

/// One row per service. On a terminal the rows are redrawn in place; otherwise every change
/// is a new line, which is what logs and CI want.
struct Board {
    tty: bool,
    rows: Vec<(String, String)>,
    drawn: usize,
}

impl Board {
    fn update(&mut self, service: String, state: ServiceState, detail: Option<String>) {
        let mut text = paint(self.tty, state, state.as_str());
        if let Some(detail) = detail.filter(|_| state != ServiceState::Running) {
            text.push_str(&format!(" ({detail})"));
        }
        if !self.tty {
            println!("{service:<16} {text}");
            return;
        }
        match self.rows.iter_mut().find(|(name, _)| *name == service) {
            Some(row) => row.1 = text,
            None => self.rows.push((service, text)),
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for (name, text) in &self.rows {
            let _ = writeln!(out, "\x1b[2K{name:<16} {text}");
        }
        let _ = out.flush();
        self.drawn = self.rows.len();
    }
}
