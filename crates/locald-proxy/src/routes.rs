//! The route table: which host name goes to which service of which running project. Built
//! from plain values ([`ProjectRoutes`]) that the daemon makes from what its supervisor
//! publishes, whenever a project comes up or goes down; read on every TLS handshake (only routed
//! names get a certificate) and every request. The proxy asks a service's state and its last log
//! lines through [`ServiceView`], never through the supervisor's own types.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use locald_core::ipc::ServiceState;

use super::dashboard::DASHBOARD_HOST;

/// Not a service: `localhost` itself answers with the list of running projects.
pub(crate) const INDEX_HOST: &str = "localhost";

/// What the proxy needs to know of a service now, for a request to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceNow {
    pub state: ServiceState,
    /// The exit code of its last run (128 + the signal when a signal ended it), if it ended.
    pub exit_code: Option<i32>,
    /// The port it was found listening on instead of its own (a server that ignores `$PORT`).
    pub port: Option<u16>,
}

/// A routed service as the proxy sees it, implemented by whoever runs the service.
pub trait ServiceView: Send + Sync {
    /// Its state, read on every request for it: cheap and non-blocking.
    fn now(&self) -> ServiceNow;
    /// Its last `count` log lines, for the page of a stopped service. May block (it reads
    /// files); the proxy calls it off its runtime's threads.
    fn recent_lines(&self, count: usize) -> Vec<String>;
}

/// One service of a running project: where it listens, every name it answers to
/// ([`Service::host_names`], also what `/etc/hosts` gets), and its view.
///
/// [`Service::host_names`]: locald_core::config::Service::host_names
#[derive(Clone)]
pub struct ServiceRoutes {
    pub name: String,
    pub port: u16,
    pub hosts: Vec<String>,
    pub view: Arc<dyn ServiceView>,
}

/// One running project, its services in its own order.
#[derive(Clone)]
pub struct ProjectRoutes {
    pub name: String,
    /// Plain HTTP requests get a 308 to HTTPS.
    pub https_redirect: bool,
    pub services: Vec<ServiceRoutes>,
}

/// Where one host name goes.
pub(crate) struct Route {
    pub(crate) project: String,
    pub(crate) https_redirect: bool,
    pub(crate) service: String,
    pub(crate) port: u16,
    pub(crate) view: Arc<dyn ServiceView>,
}

#[derive(Default)]
pub(crate) struct RouteTable {
    by_host: HashMap<String, Arc<Route>>,
    /// Every routed name per project, in project order, for the unknown-host page.
    pub(crate) listing: Vec<(String, Vec<(String, String)>)>,
}

impl RouteTable {
    /// Every service under each of its names; the first project to claim a name keeps it, and
    /// [`INDEX_HOST`] and [`DASHBOARD_HOST`] are never a service's.
    pub(crate) fn build(projects: &[ProjectRoutes]) -> Self {
        let mut table = RouteTable::default();
        for project in projects {
            let mut names = Vec::new();
            for service in &project.services {
                let route = Arc::new(Route {
                    project: project.name.clone(),
                    https_redirect: project.https_redirect,
                    service: service.name.clone(),
                    port: service.port,
                    view: service.view.clone(),
                });
                for host in &service.hosts {
                    if host == INDEX_HOST || host == DASHBOARD_HOST || table.by_host.contains_key(host) {
                        continue;
                    }
                    table.by_host.insert(host.clone(), route.clone());
                    names.push((host.clone(), service.name.clone()));
                }
            }
            table.listing.push((project.name.clone(), names));
        }
        table
    }

    pub(crate) fn get(&self, host: &str) -> Option<&Arc<Route>> {
        self.by_host.get(host)
    }

    /// Whether a certificate may be issued for `name`: a routed name, the index host or the
    /// dashboard's.
    pub(crate) fn is_routed(&self, name: &str) -> bool {
        name == INDEX_HOST || name == DASHBOARD_HOST || self.by_host.contains_key(name)
    }
}

/// The current table, swapped whole when projects change.
#[derive(Default)]
pub(crate) struct Routes {
    table: RwLock<Arc<RouteTable>>,
}

impl Routes {
    pub(crate) fn set(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    pub(crate) fn current(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The host a request is for, from `Host` or the HTTP/2 authority: lowercase, no port, no
/// trailing dot. `None` for an IP literal or nothing usable.
pub(crate) fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        return None;
    }
    let host = raw
        .rsplit_once(':')
        .map_or(raw, |(host, port)| if port.bytes().all(|b| b.is_ascii_digit()) { host } else { raw });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    (valid && host.parse::<std::net::Ipv4Addr>().is_err()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(normalize_host("Shop.LocalHost:8443").as_deref(), Some("shop.localhost"));
        assert_eq!(normalize_host("shop.localhost.").as_deref(), Some("shop.localhost"));
        assert_eq!(normalize_host("127.0.0.1:80"), None);
        assert_eq!(normalize_host("[::1]:443"), None);
        assert_eq!(normalize_host("bad host"), None);
        assert_eq!(normalize_host(""), None);
    }
}
