//! What applying a changed `locald.toml` to a running project does, decided from plain values
//! (compose's rules): a service whose resolved definition changed restarts, and so does every
//! running service that depends on one that restarts; services gone from the file stop; services
//! asked for that do not run yet start; everything else is left running.

use std::collections::BTreeSet;

use locald_core::config::{Config, Service};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the old start order reversed (dependents first): removed, changed and their dependents.
    pub stop: Vec<String>,
    /// In the new start order: changed, their dependents, and added.
    pub start: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Restarted only because something they depend on restarts.
    pub dependents: Vec<String>,
    pub added: Vec<String>,
}

impl Plan {
    /// `running`: the services of the running project (started from `old`); `selected`: what
    /// this `up` asks for, in `new`.
    pub fn new(old: &Config, running: &[String], new: &Config, selected: &[String]) -> Plan {
        let in_new = |name: &str| new.services.iter().any(|s| s.name == name);
        let is_running = |name: &str| running.iter().any(|r| r == name);
        let removed: Vec<String> = running.iter().filter(|r| !in_new(r)).cloned().collect();
        let mut changed = Vec::new();
        let mut dependents = Vec::new();
        let mut added = Vec::new();
        let mut restarting: BTreeSet<&str> = BTreeSet::new();
        // Start order: every dependency is decided before its dependents.
        for service in &new.services {
            let name = service.name.as_str();
            if is_running(name) {
                let before = old.services.iter().find(|s| s.name == name);
                if before.is_none_or(|b| !same(b, service)) {
                    changed.push(name.to_owned());
                    restarting.insert(name);
                } else if service.depends_on.iter().any(|d| restarting.contains(d.name.as_str())) {
                    dependents.push(name.to_owned());
                    restarting.insert(name);
                }
            } else if selected.iter().any(|s| s == name) {
                added.push(name.to_owned());
            }
        }
        let stop = running
            .iter()
            .rev()
            .filter(|r| removed.contains(r) || restarting.contains(r.as_str()))
            .cloned()
            .collect();
        let start = new
            .services
            .iter()
            .map(|s| &s.name)
            .filter(|n| restarting.contains(n.as_str()) || added.contains(n))
            .cloned()
            .collect();
        Plan { stop, start, removed, changed, dependents, added }
    }

    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }

    /// One line saying what changed, for `up` to print; `None` when nothing did.
    pub fn describe(&self, file: &str) -> Option<String> {
        let mut parts = Vec::new();
        if !self.changed.is_empty() {
            let mut part = format!("restarted {} (changed)", self.changed.join(", "));
            if !self.dependents.is_empty() {
                part.push_str(&format!(" and {} (depending on it)", self.dependents.join(", ")));
            }
            parts.push(part);
        }
        if !self.added.is_empty() {
            parts.push(format!("started {}", self.added.join(", ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!("stopped {} (removed)", self.removed.join(", ")));
        }
        (!parts.is_empty()).then(|| format!("applied {file}: {}", parts.join("; ")))
    }
}

/// The same definition; which profiles a service is in decides only whether it is started.
fn same(old: &Service, new: &Service) -> bool {
    old.name == new.name && {
        let mut old = old.clone();
        old.profiles.clone_from(&new.profiles);
        old == *new
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        let mut ports: Vec<u16> = Vec::new();
        let mut config = locald_core::config::resolve_toml(
            &std::env::temp_dir(),
            Path::new("locald.toml"),
            text,
            &mut ports,
        )
        .expect("valid");
        // Ports as the daemon keeps them across a reload: the same per service.
        for s in &mut config.services {
            let port = 20000 + s.name.len() as u16;
            s.port = port;
            s.env.retain(|(k, _)| k != "PORT");
        }
        config
    }

    const BASE: &str = r#"
[services.db]
command = "db"
[services.api]
command = "api"
depends_on = ["db"]
[services.web]
command = "web"
depends_on = ["api"]
[services.cache]
command = "cache"
"#;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_changed_service_restarts_with_its_dependents_only() {
        let old = config(BASE);
        let new = config(&BASE.replace("command = \"api\"", "command = \"api\"\nenv = { X = \"1\" }"));
        let running = names(&["cache", "db", "api", "web"]);
        let plan = Plan::new(&old, &running, &new, &running);
        assert_eq!(plan.changed, names(&["api"]));
        assert_eq!(plan.dependents, names(&["web"]));
        assert_eq!(plan.stop, names(&["web", "api"]), "dependents stop first");
        assert_eq!(plan.start, names(&["api", "web"]), "dependencies start first");
        assert_eq!(
            plan.describe("locald.toml").unwrap(),
            "applied locald.toml: restarted api (changed) and web (depending on it)"
        );
    }

    #[test]
    fn added_and_removed_services_start_and_stop_and_nothing_else_moves() {
        let old = config(BASE);
        let new = config(&format!(
            "{}\n[services.mail]\ncommand = \"mail\"\n",
            BASE.replace("[services.cache]\ncommand = \"cache\"", "")
        ));
        let running = names(&["cache", "db", "api", "web"]);
        let selected = new.select(&[], &[]).unwrap();
        let plan = Plan::new(&old, &running, &new, &selected);
        assert_eq!(plan.removed, names(&["cache"]));
        assert_eq!(plan.added, names(&["mail"]));
        assert_eq!(plan.stop, names(&["cache"]));
        assert_eq!(plan.start, names(&["mail"]));
        assert!(plan.changed.is_empty() && plan.dependents.is_empty());
    }

    #[test]
    fn the_same_file_plans_nothing_and_a_service_not_asked_for_is_not_started() {
        let old = config(BASE);
        let plan = Plan::new(&old, &names(&["db"]), &config(BASE), &names(&["db"]));
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.describe("locald.toml"), None);
    }
}
