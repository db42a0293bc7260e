//! The readiness probe of a service without a health check: it is starting until its port
//! accepts a TCP connection. Probed every [`QUICK`] so that a server is seen (and the proxy
//! stops holding requests for it) within a fraction of a second of binding. When the port stays
//! closed but the service's own processes listen on another one, that is where it serves.

use std::time::Duration;

use tokio::net::TcpStream;

use super::listening;

/// Between connection attempts while a service starts.
pub const QUICK: Duration = Duration::from_millis(50);
/// Between looks in `/proc` for the ports a service listens on instead.
const LOOK_EVERY: u32 = 4;

/// Returns once something of the service accepts connections: `None` when its own port does,
/// `Some(port)` when only another port its process group listens on does. `pgid` is `None` for
/// a container (its processes are the shim's, in other namespaces): only its port is tried.
pub async fn reachable(port: u16, pgid: Option<u32>) -> Option<u16> {
    let mut attempt = 0u32;
    loop {
        if accepts(port).await {
            return None;
        }
        if let Some(pgid) = pgid.filter(|_| attempt % LOOK_EVERY == LOOK_EVERY - 1) {
            let found = tokio::task::spawn_blocking(move || listening::group_ports(pgid)).await;
            for other in found.unwrap_or_default() {
                if other != port && accepts(other).await {
                    return Some(other);
                }
            }
        }
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(QUICK).await;
    }
}

async fn accepts(port: u16) -> bool {
    let connect = TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)))
}
