//! The route table: which host name goes to which service of which running project. Rebuilt from
//! the supervisor whenever a project comes up or goes down; read on every TLS handshake (only
//! routed names get a certificate) and every request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::supervisor::Project;
use crate::supervisor::service::Handle;

/// Not a service: `localhost` itself answers with the list of running projects.
pub const INDEX_HOST: &str = "localhost";

#[derive(Clone)]
pub struct Route {
    pub project: Arc<Project>,
    /// Index into `project.services`.
    pub service: usize,
}

impl Route {
    pub fn handle(&self) -> &Handle {
        &self.project.services[self.service]
    }
}

#[derive(Default)]
pub struct RouteTable {
    by_host: HashMap<String, Route>,
    /// Every routed name per project, in project order, for the unknown-host page.
    pub listing: Vec<(String, Vec<(String, String)>)>,
}

impl RouteTable {
    /// Every service under each of its names ([`Service::host_names`], also what `/etc/hosts`
    /// gets); the first project to claim a name keeps it.
    ///
    /// [`Service::host_names`]: locald_core::config::Service::host_names
    pub fn build(projects: &[Arc<Project>]) -> Self {
        let mut table = RouteTable::default();
        for project in projects {
            let mut names = Vec::new();
            for (index, handle) in project.services.iter().enumerate() {
                let service = &handle.service;
                for host in service.host_names(&project.config.project.domain) {
                    if host == INDEX_HOST || table.by_host.contains_key(&host) {
                        continue;
                    }
                    table.by_host.insert(host.clone(), Route { project: project.clone(), service: index });
                    names.push((host, service.name.clone()));
                }
            }
            table.listing.push((project.config.project.name.clone(), names));
        }
        table
    }

    pub fn get(&self, host: &str) -> Option<&Route> {
        self.by_host.get(host)
    }

    /// Whether a certificate may be issued for `name`: a routed name or the index host.
    pub fn is_routed(&self, name: &str) -> bool {
        name == INDEX_HOST || self.by_host.contains_key(name)
    }
}

/// The current table, swapped whole when projects change.
#[derive(Default)]
pub struct Routes {
    table: RwLock<Arc<RouteTable>>,
}

impl Routes {
    pub fn refresh(&self, projects: &[Arc<Project>]) {
        let table = Arc::new(RouteTable::build(projects));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The host a request is for, from `Host` or the HTTP/2 authority: lowercase, no port, no
/// trailing dot. `None` for an IP literal or nothing usable.
pub fn normalize_host(raw: &str) -> Option<String> {
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
