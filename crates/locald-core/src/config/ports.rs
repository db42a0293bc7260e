//! Free-port search. A port counts as free only if it can be bound on 127.0.0.1, 0.0.0.0 and
//! [::] alike, so a port some other program listens on — on any of those — is never handed out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

pub const RANGE: std::ops::RangeInclusive<u16> = 20000..=29999;

pub fn is_free(port: u16) -> bool {
    let addrs: [SocketAddr; 3] = [
        (Ipv4Addr::LOCALHOST, port).into(),
        (Ipv4Addr::UNSPECIFIED, port).into(),
        (Ipv6Addr::UNSPECIFIED, port).into(),
    ];
    addrs.iter().all(|addr| match TcpListener::bind(addr) {
        Ok(_) => true,
        // No IPv6 on this host: nothing can be listening there either.
        Err(e) if addr.is_ipv6() && e.kind() == std::io::ErrorKind::AddrNotAvailable => true,
        Err(_) => false,
    })
}

/// A stable starting point per project and service, so a project gets the same ports across
/// runs when they are still free.
pub fn preferred(project: &str, service: &str) -> u16 {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in project.bytes().chain([0]).chain(service.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let span = u32::from(RANGE.end() - RANGE.start()) + 1;
    RANGE.start() + (hash % span) as u16
}

/// Every port of [`RANGE`] once, from `preferred(project, service)` on, wrapping around.
pub fn candidates(project: &str, service: &str) -> impl Iterator<Item = u16> {
    let start = preferred(project, service);
    let span = RANGE.end() - RANGE.start() + 1;
    (0..span).map(move |i| RANGE.start() + (start - RANGE.start() + i) % span)
}

/// The first free port from `preferred(project, service)` on, skipping `taken`.
pub fn find_free(project: &str, service: &str, taken: &dyn Fn(u16) -> bool) -> Option<u16> {
    candidates(project, service).find(|&port| !taken(port) && is_free(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_bound_on_any_address_is_not_free() {
        for addr in ["127.0.0.1:0", "0.0.0.0:0", "[::]:0"] {
            let Ok(listener) = TcpListener::bind(addr) else { continue };
            let port = listener.local_addr().unwrap().port();
            assert!(!is_free(port), "{addr} bound on {port} but reported free");
        }
    }

    #[test]
    fn find_free_skips_taken_and_bound_ports() {
        let start = preferred("p", "s");
        let listener = TcpListener::bind(("127.0.0.1", start)).ok();
        let port = find_free("p", "s", &|p| p == start.wrapping_add(1)).unwrap();
        assert_ne!(port, start.wrapping_add(1));
        if listener.is_some() {
            assert_ne!(port, start);
        }
    }
}
