//! What bounds the proxy's use of the daemon's file descriptors and time: the timeouts of a
//! client connection, how many client connections are admitted (derived from `RLIMIT_NOFILE`,
//! leaving room for the control socket, logs and services), and a rate-limited log line for
//! accept errors. At the cap, a new connection evicts the least recently active one that has no
//! request open (an idle flood cannot lock others out), and is refused only when every admitted
//! connection is busy. The per-connection side (streams, idle timer) is [`super::activity`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::activity::Activity;

/// A client connection's bounds.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Longest a TLS handshake may take.
    pub handshake: Duration,
    /// Longest a request head may take, and a connection may stay without its first request
    /// (an HTTP/2 connection that sends no preface, or only the preface and SETTINGS).
    pub header: Duration,
    /// Longest a connection may stay with no request open after its first one.
    pub idle: Duration,
    /// Longest a request body may pause between two pieces.
    pub body: Duration,
    /// HTTP/2 PING interval, and how long the answer may take before the connection is dropped.
    pub ping: Duration,
    /// Most client connections admitted at once, across all listeners and threads.
    pub max_clients: usize,
    /// Most HTTP/2 streams open at once on one client connection.
    pub max_streams: u32,
    /// Most requests one client connection has at its services at once on hyper's path (each
    /// holds a service connection); the others wait their turn.
    pub forwards_per_client: usize,
    /// Longest a request for a starting or restarting service waits for it ([`crate::hold`]).
    pub hold: Duration,
}

/// File descriptors kept out of the proxy's reach: the control socket and its clients, logs,
/// the services' pipes, the shim's sockets.
const RESERVED_FDS: usize = 128;
/// Descriptors a client connection is counted for: its own and one service connection (what an
/// HTTP/1.1 client uses; an HTTP/2 client with several requests open uses more, bounded by
/// `forwards_per_client`, which the reserve and eviction absorb).
const FDS_PER_CLIENT: usize = 2;

impl Limits {
    /// The defaults for a descriptor limit of `nofile`.
    pub(crate) fn for_nofile(nofile: u64) -> Self {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
        let reserved = RESERVED_FDS.max(nofile / 8);
        Limits {
            handshake: Duration::from_secs(10),
            header: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            body: Duration::from_secs(60),
            ping: Duration::from_secs(20),
            hold: Duration::from_secs(5),
            max_clients: (nofile.saturating_sub(reserved) / FDS_PER_CLIENT).max(16),
            max_streams: 128,
            forwards_per_client: 32,
        }
    }
}

/// The current soft `RLIMIT_NOFILE`.
pub(crate) fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Milliseconds since the proxy's clock started: a timestamp an atomic can hold.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The admitted client connections, shared by every thread.
pub(crate) struct Admission {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next: u64,
    by_id: HashMap<u64, Arc<Activity>>,
}

/// A client connection's place; gives it up when dropped.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.lock().by_id.remove(&self.id);
    }
}

impl Admission {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Admission { max, open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection: at the cap, the least recently active connection without
    /// an open request is told to close and its place taken; `None` when all are busy.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.by_id.len() >= self.max {
            let victim = open
                .by_id
                .iter()
                .filter(|(_, activity)| activity.streams() == 0)
                .min_by_key(|(_, activity)| activity.last_active())
                .map(|(id, _)| *id)?;
            if let Some(activity) = open.by_id.remove(&victim) {
                activity.evict();
            }
        }
        let id = open.next;
        open.next += 1;
        let activity = Arc::new(Activity::new());
        open.by_id.insert(id, activity.clone());
        Some(Admitted { admission: self.clone(), id, activity })
    }

    #[cfg(test)]
    pub(crate) fn admitted(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// At most one line per `every`, saying how many were held back: an error that repeats on every
/// accept (out of descriptors) must not fill the log.
pub(crate) struct LogLimiter {
    every_ms: u64,
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogLimiter {
    pub(crate) const fn new(every: Duration) -> Self {
        LogLimiter {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(u64::MAX),
            held_back: AtomicU64::new(0),
        }
    }

    /// The line to write now, if any: `line`, with the count of those held back since the last.
    pub(crate) fn line(&self, now_ms: u64, line: impl std::fmt::Display) -> Option<String> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= self.every_ms;
        if !due || self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.held_back.swap(0, Ordering::Relaxed) {
            0 => Some(line.to_string()),
            n => Some(format!("{line} ({n} more like it not logged)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_counts_a_service_connection_per_client() {
        assert_eq!(Limits::for_nofile(1024).max_clients, (1024 - 128) / 2);
        assert_eq!(Limits::for_nofile(1 << 20).max_clients, ((1 << 20) - (1 << 17)) / 2);
        assert_eq!(Limits::for_nofile(100).max_clients, 16, "a floor, however low the limit");
    }

    #[test]
    fn at_the_cap_the_least_recently_active_idle_connection_makes_room() {
        let admission = Admission::new(3);
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        let c = admission.admit().unwrap();
        // `a` has a request open; `b` was active more recently than `c`.
        let _busy = a.activity.begin();
        b.activity.touch_at(50);
        c.activity.touch_at(10);
        let d = admission.admit().expect("room made");
        assert!(c.activity.evicted(), "the least recently active idle one goes");
        assert!(!a.activity.evicted() && !b.activity.evicted());
        assert_eq!(admission.admitted(), 3);
        drop(c);
        assert_eq!(admission.admitted(), 3, "an evicted connection no longer counts");
        // Every one busy: the new connection is refused.
        let (_b, _d) = (b.activity.begin(), d.activity.begin());
        assert!(admission.admit().is_none());
        assert_eq!(admission.admitted(), 3);
    }

    #[test]
    fn a_repeating_error_is_logged_once_per_period_with_a_count() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let mut lines = Vec::new();
        // 40 errors a second for a minute, the rate the review saw.
        for tick in 0..2400u64 {
            lines.extend(limiter.line(tick * 25, "proxy accept: Too many open files"));
        }
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0], "proxy accept: Too many open files");
        assert_eq!(lines[1], "proxy accept: Too many open files (399 more like it not logged)");
    }
}
