//! Keeping `/etc/hosts` in step with the running projects, through the shim's `sync-hosts`,
//! only for names the system does not already send to loopback (nss-myhostname and
//! systemd-resolved answer every `*.localhost` name themselves). The names are those the proxy
//! routes ([`Service::host_names`]), less the ones the shim would refuse.

use std::net::{IpAddr, ToSocketAddrs};

use locald_core::config::{Config, Service};
use locald_shim_protocol::validate::{HOSTS_SUFFIXES, hosts_domain};

use crate::shim::{Privileged, ShimClientError};

/// Resolves a name to its addresses (the system resolver in production).
pub type Resolver<'a> = &'a dyn Fn(&str) -> Vec<IpAddr>;

pub fn system_resolver(name: &str) -> Vec<IpAddr> {
    (name, 0).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect()).unwrap_or_default()
}

fn loopback(addrs: &[IpAddr]) -> bool {
    !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback)
}

/// Every name the proxy routes for these projects.
pub fn routed_names<'a>(configs: impl IntoIterator<Item = &'a Config>) -> Vec<String> {
    configs
        .into_iter()
        .flat_map(|c| {
            c.services
                .iter()
                .filter(|s| s.serves.is_routed())
                .flat_map(|s: &Service| s.host_names(&c.project.domain))
        })
        .collect()
}

/// Routed names that cannot have an `/etc/hosts` entry (nor a certificate): the shim writes
/// only names under a reserved local suffix, and refuses a whole list that has any other.
pub fn unwritable(names: &[String]) -> Vec<String> {
    let mut refused: Vec<String> = Vec::new();
    for name in names.iter().filter(|n| hosts_domain(n).is_err()) {
        if !refused.contains(name) {
            refused.push(name.clone());
        }
    }
    refused
}

/// What `up` says about [`unwritable`] names, in one line; `None` when there are none.
pub fn unwritable_note(config: &Config) -> Option<String> {
    let refused = unwritable(&routed_names([config]));
    (!refused.is_empty()).then(|| {
        format!(
            "{} {} not under a reserved local suffix ({}): no /etc/hosts entry and no certificate, \
             only plain HTTP where your own DNS sends {} to 127.0.0.1",
            refused.join(", "),
            if refused.len() == 1 { "is" } else { "are" },
            HOSTS_SUFFIXES.join(", "),
            if refused.len() == 1 { "it" } else { "them" },
        )
    })
}

/// What `up` says when the project has names that need `/etc/hosts` and the installed shim is
/// the `--ports-only` one, which cannot write it; `None` otherwise (no shim at all: `doctor`).
pub fn ports_only_note(config: &Config, privileged: &dyn Privileged) -> Option<String> {
    ports_only_note_with(config, privileged, &system_resolver)
}

fn ports_only_note_with(config: &Config, privileged: &dyn Privileged, resolve: Resolver) -> Option<String> {
    if privileged.unavailable().is_some() {
        return None;
    }
    let reason = privileged.unavailable_beyond_bind("writing /etc/hosts")?;
    let needed = names_needing_hosts(&routed_names([config]), resolve);
    (!needed.is_empty()).then(|| format!("{} will not resolve: {reason}", needed.join(", ")))
}

/// The names that need an `/etc/hosts` entry, leaving out those the shim would refuse.
/// `*.localhost` is judged once, by a name that is never in locald's own block, so entries locald
/// wrote earlier do not make it drop them.
pub fn names_needing_hosts(domains: &[String], resolve: Resolver) -> Vec<String> {
    let localhost_native = loopback(&resolve("locald-resolution-probe.localhost"));
    let mut needed: Vec<String> = domains
        .iter()
        .filter(|d| hosts_domain(d).is_ok())
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

/// The shim could not make the block what it should be.
#[derive(Debug, thiserror::Error)]
#[error("could not update /etc/hosts: {0}")]
pub struct HostsError(#[source] pub ShimClientError);

/// Makes the user's block list exactly the needed names of `domains` (all running projects);
/// an empty list removes the block. Without a usable shim nothing is written (`doctor` says why).
pub fn sync(privileged: &dyn Privileged, domains: &[String]) -> Result<(), HostsError> {
    sync_with(privileged, domains, &system_resolver)
}

fn sync_with(privileged: &dyn Privileged, domains: &[String], resolve: Resolver) -> Result<(), HostsError> {
    if privileged.unavailable().is_some() && !privileged.is_root() {
        return Ok(());
    }
    // The `--ports-only` install writes no /etc/hosts: nothing is written (a block left by an
    // earlier setuid install stays until the full install runs again); `up` says why
    // ([`ports_only_note`]).
    if privileged.unavailable_beyond_bind("writing /etc/hosts").is_some() {
        return Ok(());
    }
    let needed = names_needing_hosts(domains, resolve);
    privileged.sync_hosts(&needed).map_err(HostsError)
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

    /// The default project suffix (locald-core) is always one the shim writes and the CA permits,
    /// and `.internal`/`home.arpa` names, real on cloud and home networks, are neither.
    #[test]
    fn default_suffixes_are_the_shims_and_private_network_names_are_unwritable() {
        assert_eq!(locald_core::config::LOCAL_SUFFIXES, HOSTS_SUFFIXES);
        let private = names(&["metadata.google.internal", "db.corp.internal", "nas.home.arpa"]);
        assert_eq!(unwritable(&private), private);
        let nothing = |_: &str| vec![];
        assert!(names_needing_hosts(&private, &nothing).is_empty());
    }

    fn config(toml: &str) -> Config {
        let dir = std::env::temp_dir();
        locald_core::config::resolve_toml(&dir, std::path::Path::new("locald.toml"), toml, &mut vec![41_000])
            .unwrap()
    }

    const SHOP: &str = "[project]\nname = \"shop\"\n\n[services.web]\ncommand = \"x\"\nport = 41001\n\
                        domains = [\"shop.test\", \"www.shop.example\"]\n\n\
                        [services.api]\ncommand = \"y\"\nport = 41002\n";

    #[test]
    fn the_sync_gets_every_routed_name_but_native_localhost_ones() {
        let shop = config(SHOP);
        let routed = routed_names([&shop]);
        let native = |name: &str| {
            if name.ends_with(".localhost") { vec!["::1".parse().unwrap()] } else { vec![] }
        };
        assert_eq!(names_needing_hosts(&routed, &native), ["shop.test"]);
        let nothing = |_: &str| vec![];
        assert_eq!(
            names_needing_hosts(&routed, &nothing),
            ["api.shop.localhost", "shop.localhost", "shop.test", "web.shop.localhost"],
            "the web.shop.localhost alias and the extra domains, not only each service's domain"
        );
    }

    #[test]
    fn names_outside_the_local_suffixes_are_left_out_and_named_once() {
        let shop = config(SHOP);
        assert_eq!(unwritable(&routed_names([&shop])), ["www.shop.example"]);
        let note = unwritable_note(&shop).unwrap();
        assert!(
            note.starts_with("www.shop.example is not under a reserved local suffix (localhost, test"),
            "{note}"
        );
        assert!(!note.contains('\n'));
        assert_eq!(unwritable_note(&config("[services.web]\ncommand = \"x\"\nport = 41003\n")), None);
    }

    #[test]
    fn sync_asks_the_shim_for_exactly_the_needed_names_and_keeps_its_refusal_as_the_cause() {
        use crate::shim::fake::{Call, Fake};
        let routed = routed_names([&config(SHOP)]);
        let native = |name: &str| {
            if name.ends_with(".localhost") { vec!["127.0.0.1".parse().unwrap()] } else { vec![] }
        };
        let fake = Fake::new();
        sync_with(&fake, &routed, &native).unwrap();
        assert_eq!(fake.calls(), [Call::SyncHosts(names(&["shop.test"]))]);
        sync_with(&fake, &[], &native).unwrap();
        assert_eq!(fake.calls()[1], Call::SyncHosts(vec![]), "no project left: the block goes");

        let refusing = Fake::new().failing("locald-shim: refused: /etc/hosts is a symlink");
        let err = sync_with(&refusing, &routed, &native).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not update /etc/hosts: locald-shim: refused: /etc/hosts is a symlink"
        );
        assert!(matches!(err.0, ShimClientError::Failed { .. }));
    }

    #[test]
    fn without_a_shim_sync_writes_nothing_and_is_no_error() {
        let none = crate::shim::Unavailable::new(ShimClientError::NotFound { reasons: "none".into() });
        let nothing = |_: &str| vec![];
        assert!(sync_with(&none, &names(&["shop.test"]), &nothing).is_ok());
    }

    #[test]
    fn the_ports_only_shim_writes_nothing_and_up_names_what_will_not_resolve() {
        use crate::shim::fake::Fake;
        let shop = config(SHOP);
        let native = |name: &str| {
            if name.ends_with(".localhost") { vec!["127.0.0.1".parse().unwrap()] } else { vec![] }
        };
        let ports_only = Fake::new().ports_only();
        sync_with(&ports_only, &routed_names([&shop]), &native).unwrap();
        assert!(ports_only.calls().is_empty(), "{:?}", ports_only.calls());
        let note = ports_only_note_with(&shop, &ports_only, &native).unwrap();
        assert!(note.starts_with("shop.test will not resolve: writing /etc/hosts needs the full"), "{note}");
        assert!(note.contains("sudo locald admin setup") && !note.contains('\n'), "{note}");

        assert_eq!(ports_only_note_with(&shop, &Fake::new(), &native), None, "the setuid install writes it");
        let localhost_only = config("[services.web]\ncommand = \"x\"\nport = 41003\n");
        assert_eq!(ports_only_note_with(&localhost_only, &ports_only, &native), None);
    }

    #[test]
    fn a_probe_answered_off_loopback_does_not_count_as_native() {
        let odd = |_: &str| vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(names_needing_hosts(&names(&["x.localhost"]), &odd), ["x.localhost"]);
    }
}
