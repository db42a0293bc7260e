//! `locald logs`: persisted lines of the project's services interleaved by time, optionally
//! followed; a coloured service prefix only on a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use locald_core::ipc::{LogLine, Request, Response};

use super::client::{Client, project_dir};

pub fn run(
    dir: &Path,
    services: Vec<String>,
    follow: bool,
    tail: Option<usize>,
    since: Option<&str>,
    timestamps: bool,
) -> anyhow::Result<ExitCode> {
    let dir = project_dir(Some(dir.to_owned()))?;
    let since_micros = since.map(parse_since).transpose()?;
    let mut client = Client::connect()?;
    let width = services.iter().map(String::len).max().unwrap_or(0);
    client.send(&Request::Logs { dir, services, follow, tail, since_micros })?;
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut printer = Printer { tty, timestamps, width, colours: Vec::new() };
    loop {
        match client.next()? {
            Response::Log(line) => {
                if printer.print(&mut out, &line).is_err() {
                    // The reader went away (`| head`): that is a normal end.
                    return Ok(ExitCode::SUCCESS);
                }
                if follow {
                    let _ = out.flush();
                }
            }
            Response::Ok => break,
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

struct Printer {
    tty: bool,
    timestamps: bool,
    width: usize,
    colours: Vec<String>,
}

impl Printer {
    fn print(&mut self, out: &mut impl Write, line: &LogLine) -> std::io::Result<()> {
        self.width = self.width.max(line.service.len());
        let time = if self.timestamps {
            let at = UNIX_EPOCH + Duration::from_micros(line.micros);
            format!("{} ", humantime::format_rfc3339_micros(at))
        } else {
            String::new()
        };
        let marker = if line.stream == "locald" { "[locald] " } else { "" };
        if self.tty {
            let index = match self.colours.iter().position(|s| *s == line.service) {
                Some(i) => i,
                None => {
                    self.colours.push(line.service.clone());
                    self.colours.len() - 1
                }
            };
            let colour = [36, 35, 33, 32, 34, 31][index % 6];
            writeln!(
                out,
                "{time}\x1b[{colour}m{:<w$} |\x1b[0m {marker}{}",
                line.service,
                line.line,
                w = self.width
            )
        } else {
            writeln!(out, "{time}{:<w$} | {marker}{}", line.service, line.line, w = self.width)
        }
    }
}

/// RFC 3339 time, or a duration back from now.
fn parse_since(text: &str) -> anyhow::Result<u64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let back = humantime::parse_duration(text).with_context(|| {
                format!("--since {text:?}: expected a time (RFC 3339) or a duration such as 10m")
            })?;
            SystemTime::now().checked_sub(back).unwrap_or(UNIX_EPOCH)
        }
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}
