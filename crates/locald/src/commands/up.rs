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
    let tty = std::io::stdout().is_terminal();
    let mut board = Rows::new(tty, |service| format!("{service:<16}"));
    let mut pulls = Rows::new(tty, |image| format!("image {image}"));
    if nix::unistd::geteuid().is_root() {
        println!("note: running as root, so the services run as root too");
    }
    let mut client = Client::connect()?;
    client.send(&Request::Up { dir: dir.clone(), services: args, profiles })?;
    loop {
        match client.next()? {
            Response::Pull(progress) => pulls.set(progress.image.clone(), pull_text(&progress)),
            Response::Progress { service, state, detail } => {
                board.set(service, state_text(tty, state, detail));
            }
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
    let mut pulls = Rows::new(std::io::stdout().is_terminal(), |image| format!("image {image}"));
    let mut client = Client::connect()?;
    client.send(&Request::Pull { dir, services })?;
    loop {
        match client.next()? {
            Response::Pull(progress) => pulls.set(progress.image.clone(), pull_text(&progress)),
            Response::Ok => return Ok(ExitCode::SUCCESS),
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
}

/// A service's row: its state, and why while it is not running yet.
fn state_text(tty: bool, state: ServiceState, detail: Option<String>) -> String {
    let mut text = paint(tty, state, state.as_str());
    if let Some(detail) = detail.filter(|_| state != ServiceState::Running) {
        text.push_str(&format!(" ({detail})"));
    }
    text
}

/// An image's row: layers and bytes done, and how it ended (the daemon reports a few times a
/// second and once when the image is done).
fn pull_text(p: &PullProgress) -> String {
    if p.done && p.downloaded == 0 {
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

/// One row per service or image. On a terminal the rows are redrawn in place; otherwise every
/// change is a new line, which is what logs and CI want.
struct Rows {
    tty: bool,
    /// How a row begins, from its name.
    label: fn(&str) -> String,
    rows: Vec<(String, String)>,
    /// How many rows the last redraw wrote, to move the cursor back over them.
    drawn: usize,
}

impl Rows {
    fn new(tty: bool, label: fn(&str) -> String) -> Rows {
        Rows { tty, label, rows: Vec::new(), drawn: 0 }
    }

    fn set(&mut self, name: String, text: String) {
        let mut out = std::io::stdout().lock();
        self.write(&mut out, name, text);
        let _ = out.flush();
    }

    fn write(&mut self, out: &mut impl Write, name: String, text: String) {
        if !self.tty {
            let _ = writeln!(out, "{} {text}", (self.label)(&name));
            return;
        }
        match self.rows.iter_mut().find(|(row, _)| *row == name) {
            Some(row) => row.1 = text,
            None => self.rows.push((name, text)),
        }
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for (name, text) in &self.rows {
            let _ = writeln!(out, "\x1b[2K{} {text}", (self.label)(name));
        }
        self.drawn = self.rows.len();
    }
}

#[cfg(test)]
mod tests {
    use super::Rows;

    fn written(tty: bool, updates: &[(&str, &str)]) -> String {
        let mut rows = Rows::new(tty, |name| format!("image {name}"));
        let mut out = Vec::new();
        for (name, text) in updates {
            rows.write(&mut out, (*name).to_owned(), (*text).to_owned());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_terminal_gets_every_row_redrawn_in_place_and_a_pipe_a_line_per_change() {
        let updates = [("a", "1/2"), ("b", "0/1"), ("a", "2/2")];
        assert_eq!(
            written(true, &updates),
            "\x1b[2Kimage a 1/2\n\x1b[1A\x1b[2Kimage a 1/2\n\x1b[2Kimage b 0/1\n\
             \x1b[2A\x1b[2Kimage a 2/2\n\x1b[2Kimage b 0/1\n"
        );
        assert_eq!(written(false, &updates), "image a 1/2\nimage b 0/1\nimage a 2/2\n");
    }
}
