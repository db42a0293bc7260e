//! A service's output: every line of stdout and stderr, timestamped, into its log file and to
//! live followers, read as fast as it comes so the service never blocks on a full pipe.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::broadcast;

use locald_core::ipc::LogLine;

use crate::logs::{LogFile, now_micros};

/// Longer lines are split, so one endless line cannot grow the daemon's memory.
const MAX_LINE: usize = 64 << 10;
/// Per stream; small because an idle daemon holds two per service.
const READ_BUFFER: usize = 8 << 10;

/// Where a service's output goes: its log file and live followers.
#[derive(Clone)]
pub struct Sink {
    pub file: Arc<Mutex<LogFile>>,
    pub live: broadcast::Sender<LogLine>,
    pub service: String,
}

impl Sink {
    pub(super) fn emit(&self, stream: &str, line: String, flush: bool) {
        let record =
            LogLine { service: self.service.clone(), micros: now_micros(), stream: stream.into(), line };
        {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.append(&record);
            if flush {
                let _ = file.flush();
            }
        }
        let _ = self.live.send(record);
    }

    /// A line from the daemon itself about this service.
    pub fn note(&self, text: String) {
        self.emit("locald", text, true);
    }
}

/// Copies one output stream into the sink line by line, as fast as it comes: the service never
/// waits on a full pipe for longer than a file append.
pub(super) async fn pump(rx: pipe::Receiver, sink: Sink, stream: &'static str) {
    let mut reader = BufReader::with_capacity(READ_BUFFER, rx);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let (taken, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                (i + 1, true)
            }
            None => {
                line.extend_from_slice(buf);
                (buf.len(), line.len() >= MAX_LINE)
            }
        };
        reader.consume(taken);
        if complete {
            let idle = reader.buffer().is_empty();
            sink.emit(stream, String::from_utf8_lossy(&line).into_owned(), idle);
            line.clear();
        }
    }
    if !line.is_empty() {
        sink.emit(stream, String::from_utf8_lossy(&line).into_owned(), true);
    }
    let _ = sink.file.lock().map(|mut f| f.flush());
}
