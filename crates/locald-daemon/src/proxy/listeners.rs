//! The proxy's two listening sockets. Ports 443 and 80 come from `locald-shim bind` (the daemon
//! never binds a privileged port itself); without a usable shim, or when the shim cannot have
//! one of them, the proxy takes 8443 / 8080 or the next free port above, on loopback, and says
//! why.

use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};

use crate::shim::Shim;

pub const HTTPS_PORT: u16 = 443;
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_FALLBACK: u16 = 8443;
pub const HTTP_FALLBACK: u16 = 8080;
/// How far above a fallback port to look for a free one.
const FALLBACK_RANGE: u16 = 100;

pub struct Listeners {
    pub https: TcpListener,
    pub http: TcpListener,
    /// Both came from the shim.
    pub via_shim: bool,
    /// Why not 443/80, when not.
    pub note: Option<String>,
}

/// Binds both, preferring the shim.
pub fn open() -> io::Result<Listeners> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut notes = Vec::new();
    let (mut https, mut http) = (None, None);
    match Shim::discover() {
        Ok(shim) => {
            for (port, slot) in [(HTTPS_PORT, &mut https), (HTTP_PORT, &mut http)] {
                match shim.bind(port, Some(loopback)) {
                    Ok(listener) => *slot = Some(listener),
                    Err(e) => notes.push(format!("port {port}: {e}")),
                }
            }
        }
        Err(e) => notes.push(e.to_string()),
    }
    let via_shim = https.is_some() && http.is_some();
    let https = match https {
        Some(listener) => listener,
        None => bind_free(loopback, HTTPS_FALLBACK)?,
    };
    let http = match http {
        Some(listener) => listener,
        None => bind_free(loopback, HTTP_FALLBACK)?,
    };
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(Listeners { https, http, via_shim, note })
}

/// `start` or the first free port above it (within a small range), then any free port.
pub fn bind_free(address: IpAddr, start: u16) -> io::Result<TcpListener> {
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
}
