//! Ports 443 and 80 for the proxy, from `locald-shim bind` through the daemon's one
//! [`Privileged`] boundary.

use std::net::{IpAddr, TcpListener};

use locald_proxy::{LowPorts, LowPortsError};

use crate::shim::Privileged;

/// The proxy's view of the privileged boundary: only `bind`.
pub struct ViaShim<'a>(pub &'a dyn Privileged);

impl LowPorts for ViaShim<'_> {
    fn bind_low(&self, port: u16, address: IpAddr) -> Result<TcpListener, LowPortsError> {
        Ok(self.0.bind(port, Some(address))?)
    }
}

/// The boundary as the proxy's [`LowPorts`], or why there is no shim (the proxy's note says it).
pub fn low_ports<'a>(privileged: &'a ViaShim<'a>) -> Result<&'a dyn LowPorts, String> {
    match privileged.0.unavailable() {
        Some(why) if !privileged.0.is_root() => Err(why.to_string()),
        _ => Ok(privileged),
    }
}
