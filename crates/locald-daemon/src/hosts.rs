//! Keeping `/etc/hosts` in step with the running projects, through the shim's `sync-hosts`,
//! only for names the system does not already send to loopback (nss-myhostname and
//! systemd-resolved answer every `*.localhost` name themselves).

use std::net::{IpAddr, ToSocketAddrs};

use crate::shim::Shim;

/// Resolves a name to its addresses (the system resolver in production).
pub type Resolver<'a> = &'a dyn Fn(&str) -> Vec<IpAddr>;

pub fn system_resolver(name: &str) -> Vec<IpAddr> {
    (name, 0).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).unwrap_or_default()
}

fn loopback(addrs: &[IpAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback)
}

/// The names that need an `/etc/hosts` entry. `*.localhost` is judged once, by a name that is
/// never in locald's own block, so entries locald wrote earlier do not make it drop them.
pub fn names_needing_hosts(domains: &[String], resolve: Resolver) -> Vec<String> {
    let localhost_native = loopback(&resolve("locald-resolution-probe.localhost"));
    let mut needed: Vec<String> = domains
        .iter()
        .filter(|d| {
            let under_localhost = d.as_str() == "localhost" || d.ends_with(".localhost");
            !(under_localhost && localhost_native)
        })
        .cloned()
        .collect();
    needed.sort();
    needed.dedup();
    needed
}

/// Makes the user's block list exactly the needed names of `domains` (all running projects);
/// an empty list removes the block. Without a usable shim nothing is written (`doctor` says why).
pub fn sync(domains: &[String]) -> Result<(), String> {
    let needed = names_needing_hosts(domains, &system_resolver);
    let Ok(shim) = Shim::discover() else { return Ok(()) };
    shim.sync_hosts(&needed).map_err(|e| format!("could not update /etc/hosts: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn localhost_names_are_left_out_where_the_system_resolves_them() {
        let native = |name: &str| {
            if name.ends_with(".localhost") { vec!["127.0.0.1".parse().unwrap()] } else { vec![] }
        };
        let domains = names(&["shop.localhost", "api.shop.localhost", "shop.test"]);
        assert_eq!(names_needing_hosts(&domains, &native), ["shop.test"]);
    }

    #[test]
    fn every_name_is_needed_where_nothing_resolves_localhost() {
        let nothing = |_: &str| vec![];
        let domains = names(&["b.localhost", "a.localhost", "a.localhost"]);
        assert_eq!(names_needing_hosts(&domains, &nothing), ["a.localhost", "b.localhost"]);
    }

    #[test]
    fn a_probe_answered_off_loopback_does_not_count_as_native() {
        let odd = |_: &str| vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(names_needing_hosts(&names(&["x.localhost"]), &odd), ["x.localhost"]);
    }
}
