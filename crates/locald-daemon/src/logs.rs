//! Persistent per-service logs: one line per record, `<micros> <stream> <text>`, appended to
//! `<dir>/<service>.log` and rotated by size into `.log.1` … `.log.<KEEP>`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use locald_core::ipc::LogLine;

/// Per file; with [`KEEP`] rotated files a service keeps up to ~100 MB of history.
pub const MAX_FILE: u64 = 20 << 20;
pub const KEEP: usize = 4;
/// Enough to batch a burst into few writes; small enough for 100 idle services.
const WRITE_BUFFER: usize = 16 << 10;

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max: u64,
}

impl LogFile {
    pub fn open(dir: &Path, service: &str) -> io::Result<Self> {
        Self::with_max(dir, service, MAX_FILE)
    }

    pub fn with_max(dir: &Path, service: &str, max: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, out: BufWriter::with_capacity(WRITE_BUFFER, file), size, max })
    }

    /// Buffers one record; call [`flush`](Self::flush) when the producer has nothing pending.
    pub fn append(&mut self, record: &LogLine) -> io::Result<()> {
        let len = 24 + record.stream.len() + record.line.len();
        if self.size > 0 && self.size + len as u64 > self.max {
            self.rotate()?;
        }
        writeln!(self.out, "{} {} {}", record.micros, record.stream, record.line)?;
        self.size += len as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        for n in (1..KEEP).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.out = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Every persisted record of `service`, oldest first, optionally only those at or after
/// `since` (micros).
pub fn read_service(dir: &Path, service: &str, since: Option<u64>) -> io::Result<Vec<LogLine>> {
    let current = dir.join(format!("{service}.log"));
    let mut files: Vec<PathBuf> = (1..=KEEP).rev().map(|n| rotated(&current, n)).collect();
    files.push(current);
    let mut out = Vec::new();
    for path in files {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            if let Some(record) = parse(service, &String::from_utf8_lossy(&line))
                && since.is_none_or(|s| record.micros >= s)
            {
                out.push(record);
            }
        }
    }
    Ok(out)
}

fn parse(service: &str, text: &str) -> Option<LogLine> {
    let (micros, rest) = text.split_once(' ')?;
    let (stream, line) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(LogLine {
        service: service.to_owned(),
        micros: micros.parse().ok()?,
        stream: stream.to_owned(),
        line: line.to_owned(),
    })
}

/// The text of a service's last `count` log lines, oldest first; none when the log cannot be
/// read (what `up` shows of a failed service, and the proxy's page of a stopped one).
pub fn last_lines(dir: &Path, service: &str, count: usize) -> Vec<String> {
    let mut lines = read_service(dir, service, None).unwrap_or_default();
    let skip = lines.len().saturating_sub(count);
    lines.drain(..skip);
    lines.into_iter().map(|l| l.line).collect()
}

/// Records of several services interleaved by time (stable: a service's own order is kept),
/// then the last `tail` of them.
pub fn merged(
    dir: &Path,
    services: &[String],
    since: Option<u64>,
    tail: Option<usize>,
) -> io::Result<Vec<LogLine>> {
    let mut all = Vec::new();
    for service in services {
        all.extend(read_service(dir, service, since)?);
    }
    all.sort_by_key(|r| r.micros);
    if let Some(tail) = tail {
        let skip = all.len().saturating_sub(tail);
        all.drain(..skip);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: &str, micros: u64, line: &str) -> LogLine {
        LogLine { service: service.into(), micros, stream: "out".into(), line: line.into() }
    }

    /// `web`'s log of "line 0" to "line 99", rotated on the way (1000-byte files).
    fn rotated_log() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::with_max(dir.path(), "web", 1000).unwrap();
        for n in 0..100 {
            log.append(&record("web", n, &format!("line {n}"))).unwrap();
        }
        log.flush().unwrap();
        dir
    }

    #[test]
    fn rotation_keeps_every_line_within_the_kept_files() {
        let dir = rotated_log();
        assert!(dir.path().join("web.log.1").exists());
        let lines = read_service(dir.path(), "web", None).unwrap();
        assert_eq!(lines.len(), 100);
        assert!(lines.iter().enumerate().all(|(n, r)| r.line == format!("line {n}")));
    }

    #[test]
    fn last_lines_are_the_end_of_the_rotated_log_and_nothing_without_one() {
        let dir = rotated_log();
        let expected: Vec<String> = (80..100).map(|n| format!("line {n}")).collect();
        assert_eq!(last_lines(dir.path(), "web", 20), expected);
        assert!(last_lines(dir.path(), "missing", 20).is_empty());
    }

    #[test]
    fn merged_interleaves_by_time_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = LogFile::open(dir.path(), "a").unwrap();
        let mut b = LogFile::open(dir.path(), "b").unwrap();
        a.append(&record("a", 1, "a1")).unwrap();
        b.append(&record("b", 2, "b2")).unwrap();
        a.append(&record("a", 3, "a3 with  spaces")).unwrap();
        a.flush().unwrap();
        b.flush().unwrap();
        let all = merged(dir.path(), &["a".into(), "b".into()], None, None).unwrap();
        let lines: Vec<&str> = all.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(lines, ["a1", "b2", "a3 with  spaces"]);
        let tail = merged(dir.path(), &["a".into(), "b".into()], Some(2), Some(1)).unwrap();
        assert_eq!(tail[0].line, "a3 with  spaces");
    }
}
