//! A service's `on_change` step: run in its directory with its environment, its output into the
//! service's log, bounded in time; a failure is reported and the running copy stays.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use locald_core::config::{Command, Service};

use crate::supervisor::output::Sink;

/// A build that takes longer is stopped and counts as failed.
const LIMIT: Duration = Duration::from_secs(600);

pub(super) async fn run(command: &Command, service: &Service, sink: &Sink) -> Result<(), String> {
    let mut cmd = match command {
        Command::Shell(line) => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            cmd
        }
        Command::Argv(argv) => {
            let (program, args) = argv.split_first().ok_or("on_change is empty")?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            cmd
        }
    };
    cmd.current_dir(&service.cwd)
        .envs(service.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    let pumps = [
        child.stdout.take().map(|o| tokio::spawn(pump(BufReader::new(o), sink.clone()))),
        child.stderr.take().map(|e| tokio::spawn(pump(BufReader::new(e), sink.clone()))),
    ];
    let status = match tokio::time::timeout(LIMIT, child.wait()).await {
        Ok(status) => status.map_err(|e| e.to_string())?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!("still running after {}s", LIMIT.as_secs()));
        }
    };
    for pump in pumps.into_iter().flatten() {
        let _ = pump.await;
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(format!("exit code {code}")),
        None => Err("killed by a signal".into()),
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(reader: BufReader<R>, sink: Sink) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sink.note(format!("on_change: {line}"));
    }
}
