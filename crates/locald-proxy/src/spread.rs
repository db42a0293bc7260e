//! Which proxy thread serves a new client connection. Every thread accepts on every listener,
//! and whichever the kernel wakes first takes all that is pending: wrk's 50 connections, opened
//! together, were measured landing 50/0 on two threads about one run in three, halving the
//! throughput of that run. So the accepting thread keeps a connection only while no thread has
//! fewer open, and hands the others to the least loaded one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::limits::Admitted;

/// A connection accepted on one thread for another to serve.
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) admitted: Admitted,
    pub(crate) placed: Placed,
}

/// What a thread receives handed-off connections on.
pub(crate) type Inbox = mpsc::UnboundedReceiver<Handoff>;

pub(crate) struct Spread {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

/// A connection's count on the thread serving it, given back when the connection ends.
pub(crate) struct Placed {
    spread: Arc<Spread>,
    thread: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.spread.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Placed {
    pub(crate) fn thread(&self) -> usize {
        self.thread
    }
}

impl Spread {
    /// For `threads` threads, with the inbox each must read.
    pub(crate) fn new(threads: usize) -> (Arc<Self>, Vec<Inbox>) {
        let (inboxes, receivers) = (0..threads.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let open = (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Spread { open, inboxes }), receivers)
    }

    /// Counts a connection accepted on thread `me` on the thread that is to serve it.
    pub(crate) fn place(self: &Arc<Self>, me: usize) -> Placed {
        let loads: Vec<usize> = self.open.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        let thread = pick(&loads, me);
        self.open[thread].fetch_add(1, Ordering::Relaxed);
        Placed { spread: self.clone(), thread }
    }

    /// Sends a connection to the thread it was placed on; `Err` when that thread has ended
    /// (the proxy is stopping), and the connection is closed with the returned hand-off.
    pub(crate) fn hand_off(&self, handoff: Handoff) -> Result<(), Box<Handoff>> {
        let thread = handoff.placed.thread;
        self.inboxes[thread].send(handoff).map_err(|e| Box::new(e.0))
    }

    #[cfg(test)]
    pub(crate) fn loads(&self) -> Vec<usize> {
        self.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// The thread for a new connection accepted on `me`, given each thread's open connections: `me`
/// while it is among the least loaded, else the least loaded. No slack: h2load's (or a
/// browser's) few connections must land 2/2, not 3/1, and a hand-off (a wake-up of the other
/// thread) is cheap beside any connection's handshake.
fn pick(loads: &[usize], me: usize) -> usize {
    let (least, min) = loads.iter().copied().enumerate().min_by_key(|&(_, n)| n).unwrap_or((me, 0));
    if loads.get(me).is_some_and(|&mine| mine <= min) { me } else { least }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Spread, pick};
    use crate::routes::Routes;
    use crate::{Shared, accept, handed_off};

    #[test]
    fn the_accepting_thread_keeps_a_connection_only_while_no_thread_has_fewer() {
        assert_eq!(pick(&[0, 0], 0), 0);
        assert_eq!(pick(&[1, 1], 1), 1, "a tie stays");
        assert_eq!(pick(&[1, 0], 0), 1, "one more: to the least loaded");
        assert_eq!(pick(&[5, 3, 1, 4], 0), 2);
        assert_eq!(pick(&[3, 9], 1), 0);
        assert_eq!(pick(&[7], 0), 0, "one thread keeps everything");
    }

    /// One thread accepting a burst alone (as the kernel's wake-up often makes it) keeps half of
    /// it, however small: h2load's 4 connections land 2/2.
    #[test]
    fn a_burst_accepted_by_one_thread_is_spread_evenly() {
        for burst in [4, 5, 50] {
            let mut loads = [0usize; 2];
            for _ in 0..burst {
                loads[pick(&loads, 0)] += 1;
            }
            assert!(loads[0].abs_diff(loads[1]) <= 1, "{burst}: {loads:?}");
        }
    }

    /// Thread 0 accepts every connection (thread 1 has no listener at all, the worst the
    /// kernel's wake-ups can do): half of them are served by thread 1 all the same.
    #[test]
    fn connections_accepted_on_one_thread_are_served_by_both() {
        let (spread, inboxes) = Spread::new(2);
        let status = locald_core::ipc::ProxyStatus {
            https_port: 0,
            http_port: 0,
            via_shim: false,
            note: None,
            ipv6_note: None,
            ca: "/nonexistent/ca.pem".into(),
        };
        let limits = crate::tests::short_limits();
        let shared = Arc::new(Shared::new(Arc::new(Routes::default()), status, limits, spread.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for (n, inbox) in inboxes.into_iter().enumerate() {
            let listener = (n == 0).then(|| listener.try_clone().unwrap());
            let (shared, mut stopped) = (shared.clone(), stopped.clone());
            threads.push(std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    if let Some(listener) = listener {
                        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                        tokio::spawn(accept(listener, shared.clone(), None, 0));
                    }
                    tokio::select! {
                        () = handed_off(inbox, shared) => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }));
        }
        let mut clients = Vec::new();
        for i in 0..20 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            client.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut answer = [0u8; 64];
            let n = client.read(&mut answer).unwrap_or(0);
            assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "connection {i} got {:?}", &answer[..n]);
            clients.push(client);
        }
        let loads = spread.loads();
        assert_eq!(loads.iter().sum::<usize>(), 20);
        assert_eq!(loads, [10, 10]);
        stop.send_replace(true);
        drop(clients);
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
