//! The proxy's listening sockets: HTTPS and HTTP on 127.0.0.1, and on ::1 as well where the
//! host has IPv6 loopback (a browser may try `localhost` names on ::1 first). Ports 443 and 80
//! come from [`LowPorts`] (the daemon's `locald-shim bind`: it never binds a privileged port
//! itself); without a usable shim, or when the shim cannot have one of them, the proxy takes
//! 8443 / 8080 or the next free port above, and says why. ::1 always gets the port number
//! 127.0.0.1 got, since a URL carries one port for both; when ::1 cannot have it the proxy stays
//! on IPv4 and says why, never fails.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

use locald_core::ipc::ProxyStatus;

const HTTPS_PORT: u16 = ProxyStatus::HTTPS_PORT;
const HTTP_PORT: u16 = ProxyStatus::HTTP_PORT;
const HTTPS_FALLBACK: u16 = 8443;
const HTTP_FALLBACK: u16 = 8080;
/// How far above a fallback port to look for a free one.
const FALLBACK_RANGE: u16 = 100;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Why [`LowPorts::bind_low`] could not bind a port, as the note in the proxy's status says it.
pub type LowPortsError = Box<dyn std::error::Error + Send + Sync>;

/// Who binds ports below 1024 for the proxy (the daemon: through `locald-shim bind`).
pub trait LowPorts: Send + Sync {
    /// A listening socket on `address`:`port`.
    fn bind_low(&self, port: u16, address: IpAddr) -> Result<TcpListener, LowPortsError>;
}

pub(crate) struct Listeners {
    pub(crate) https: TcpListener,
    pub(crate) http: TcpListener,
    /// The same ports on ::1, when it could have them.
    pub(crate) https6: Option<TcpListener>,
    pub(crate) http6: Option<TcpListener>,
    /// Both IPv4 ones came from the shim.
    pub(crate) via_shim: bool,
    /// Why not 443/80, when not.
    pub(crate) note: Option<String>,
    /// Why not on ::1, when not.
    pub(crate) ipv6_note: Option<String>,
}

/// One port's pair of sockets.
struct Pair {
    v4: TcpListener,
    v6: Option<TcpListener>,
    via_shim: bool,
}

/// Binds all, preferring `low_ports` (`Err`: why there are none, e.g. no usable shim).
pub(crate) fn open(low_ports: Result<&dyn LowPorts, String>) -> io::Result<Listeners> {
    match low_ports {
        Ok(shim) => open_with(Some(shim), Vec::new()),
        Err(why) => open_with(None, vec![why]),
    }
}

/// `notes`: why there is no shim, when there is none.
fn open_with(shim: Option<&dyn LowPorts>, mut notes: Vec<String>) -> io::Result<Listeners> {
    let mut v6_notes = Vec::new();
    // One unprivileged probe tells a host without ::1 apart from a port ::1 cannot have, and
    // spares the shim calls that could only fail.
    let has_v6 = match TcpListener::bind((V6, 0)) {
        Ok(_) => true,
        Err(e) => {
            v6_notes.push(format!("no IPv6 loopback (::1) here: {e}"));
            false
        }
    };
    let bind = |port: u16, address: IpAddr| -> Result<TcpListener, String> {
        match shim {
            Some(shim) => shim.bind_low(port, address).map_err(|e| e.to_string()),
            None => Err(String::new()),
        }
    };
    let mut pair = |port: u16, fallback: u16| -> io::Result<Pair> {
        let (v4, via_shim) = match bind(port, V4) {
            Ok(listener) => (listener, true),
            Err(e) => {
                if shim.is_some() {
                    notes.push(format!("port {port}: {e}"));
                }
                (bind_free(V4, fallback)?, false)
            }
        };
        let port = v4.local_addr()?.port();
        let v6 = if !has_v6 {
            None
        } else if via_shim {
            bind(port, V6).map_err(|e| v6_notes.push(format!("port {port}: {e}"))).ok()
        } else {
            TcpListener::bind((V6, port)).map_err(|e| v6_notes.push(format!("[::1]:{port}: {e}"))).ok()
        };
        Ok(Pair { v4, v6, via_shim })
    };
    let https = pair(HTTPS_PORT, HTTPS_FALLBACK)?;
    let http = pair(HTTP_PORT, HTTP_FALLBACK)?;
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    let ipv6_note = (!v6_notes.is_empty()).then(|| v6_notes.join("; "));
    Ok(Listeners {
        via_shim: https.via_shim && http.via_shim,
        https: https.v4,
        http: http.v4,
        https6: https.v6,
        http6: http.v6,
        note,
        ipv6_note,
    })
}

/// `start` or the first free port above it (within a small range), then any free port.
fn bind_free(address: IpAddr, start: u16) -> io::Result<TcpListener> {
    for port in start..start.saturating_add(FALLBACK_RANGE) {
        match TcpListener::bind((address, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    TcpListener::bind((address, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_fallback_port_moves_to_the_next_free_one() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let first = bind_free(loopback, 20_080).unwrap();
        let taken = first.local_addr().unwrap().port();
        let second = bind_free(loopback, taken).unwrap();
        assert_ne!(second.local_addr().unwrap().port(), taken);
        assert!(second.local_addr().unwrap().ip().is_loopback());
    }

    #[test]
    fn without_a_shim_ipv6_loopback_gets_the_ipv4_port_or_a_reason() {
        let listeners = open_with(None, vec!["no shim".into()]).unwrap();
        assert_eq!(listeners.note.as_deref(), Some("no shim"));
        let https = listeners.https.local_addr().unwrap().port();
        let http = listeners.http.local_addr().unwrap().port();
        assert!(!listeners.via_shim);
        match (&listeners.https6, &listeners.http6) {
            (Some(https6), Some(http6)) => {
                assert_eq!(https6.local_addr().unwrap(), (V6, https).into());
                assert_eq!(http6.local_addr().unwrap(), (V6, http).into());
                assert_eq!(listeners.ipv6_note, None);
            }
            _ => {
                let note = listeners.ipv6_note.as_deref().expect("a reason for IPv4 only");
                assert!(note.starts_with("no IPv6 loopback") || note.starts_with("[::1]:"), "{note}");
            }
        }
    }

    /// Binds what it is asked for on an ephemeral port instead (tests cannot have 443), or
    /// refuses, and records every call.
    struct FakeLowPorts {
        refuse: Option<&'static str>,
        calls: std::sync::Mutex<Vec<(u16, IpAddr)>>,
    }

    impl LowPorts for FakeLowPorts {
        fn bind_low(&self, port: u16, address: IpAddr) -> Result<TcpListener, LowPortsError> {
            self.calls.lock().unwrap().push((port, address));
            if let Some(why) = self.refuse {
                return Err(why.into());
            }
            // For ::1 the port 127.0.0.1 got, as the shim would be asked for it.
            let port = if address.is_ipv6() { port } else { 0 };
            Ok(TcpListener::bind((address, port))?)
        }
    }

    #[test]
    fn ports_refused_by_low_ports_are_noted_and_fall_back_to_free_ones() {
        let low = FakeLowPorts { refuse: Some("not for you"), calls: Default::default() };
        let listeners = open(Ok(&low)).unwrap();
        assert_eq!(listeners.note.as_deref(), Some("port 443: not for you; port 80: not for you"));
        assert!(!listeners.via_shim);
        assert_eq!(*low.calls.lock().unwrap(), [(443, V4), (80, V4)], "::1 is not asked of it then");
        assert!(listeners.https.local_addr().unwrap().port() >= HTTPS_FALLBACK);
        assert!(listeners.http.local_addr().unwrap().port() >= HTTP_FALLBACK);
    }

    #[test]
    fn ports_from_low_ports_are_taken_and_asked_again_for_ipv6_loopback() {
        let low = FakeLowPorts { refuse: None, calls: Default::default() };
        let listeners = open(Ok(&low)).unwrap();
        assert!(listeners.via_shim);
        assert_eq!(listeners.note, None);
        let https = listeners.https.local_addr().unwrap().port();
        let http = listeners.http.local_addr().unwrap().port();
        let calls = low.calls.lock().unwrap().clone();
        if listeners.https6.is_some() {
            assert_eq!(calls, [(443, V4), (https, V6), (80, V4), (http, V6)]);
            assert_eq!(listeners.http6.unwrap().local_addr().unwrap(), (V6, http).into());
        } else {
            assert_eq!(calls, [(443, V4), (80, V4)], "no ::1 here: {:?}", listeners.ipv6_note);
        }
    }

    #[test]
    fn without_low_ports_the_reason_is_the_note() {
        let listeners = open(Err("no usable locald-shim: none found".into())).unwrap();
        assert_eq!(listeners.note.as_deref(), Some("no usable locald-shim: none found"));
        assert!(!listeners.via_shim);
    }
}
