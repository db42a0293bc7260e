//! Ports 443 and 80 for the proxy, from `locald-shim bind`.

use std::net::{IpAddr, TcpListener};

use locald_proxy::{LowPorts, LowPortsError};

use crate::shim::Shim;

impl LowPorts for Shim {
    fn bind_low(&self, port: u16, address: IpAddr) -> Result<TcpListener, LowPortsError> {
        Ok(self.bind(port, Some(address))?)
    }
}

/// The shim as the proxy's [`LowPorts`], or why there is none (the proxy's note says it).
pub fn low_ports(shim: &Result<Shim, String>) -> Result<&dyn LowPorts, String> {
    match shim {
        Ok(shim) => Ok(shim),
        Err(why) => Err(why.clone()),
    }
}
