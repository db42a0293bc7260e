//! Which services an `up` starts: the ones named and what they depend on, or else every
//! service outside a profile plus those of the active profiles (compose's rules: a service named
//! on the command line starts even when its profile is not active, and so do the dependencies
//! of whatever starts).

use std::collections::BTreeSet;

use super::Config;

/// A name on the command line that is not a service of the project, or a profile no service has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no service {name:?} in project {project} (have: {known})")]
    UnknownService { name: String, project: String, known: String },
    #[error("no service of project {project} has profile {name:?} (profiles: {known})")]
    UnknownProfile { name: String, project: String, known: String },
}

impl Config {
    /// The services to start, in start order (dependencies first).
    pub fn select(&self, names: &[String], profiles: &[String]) -> Result<Vec<String>, SelectError> {
        self.check_names(names)?;
        let known: BTreeSet<&str> =
            self.services.iter().flat_map(|s| s.profiles.iter().map(String::as_str)).collect();
        if let Some(unknown) = profiles.iter().find(|p| !known.contains(p.as_str())) {
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.into_iter().collect::<Vec<_>>().join(", ")
            };
            return Err(SelectError::UnknownProfile {
                name: unknown.clone(),
                project: self.project.name.clone(),
                known,
            });
        }
        let mut wanted: BTreeSet<&str> = if names.is_empty() {
            self.services
                .iter()
                .filter(|s| s.profiles.is_empty() || s.profiles.iter().any(|p| profiles.contains(p)))
                .map(|s| s.name.as_str())
                .collect()
        } else {
            names.iter().map(String::as_str).collect()
        };
        // Start order puts dependencies first, so walking it backwards sees every dependent
        // before what it depends on.
        for service in self.services.iter().rev() {
            if wanted.contains(service.name.as_str()) {
                wanted.extend(service.depends_on.iter().map(|d| d.name.as_str()));
            }
        }
        Ok(self
            .services
            .iter()
            .filter(|s| wanted.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect())
    }

    /// Every name is a service of this project; the error lists the ones it has.
    pub fn check_names(&self, names: &[String]) -> Result<(), SelectError> {
        match names.iter().find(|n| !self.services.iter().any(|s| &s.name == *n)) {
            Some(unknown) => Err(SelectError::UnknownService {
                name: unknown.clone(),
                project: self.project.name.clone(),
                known: self.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::resolve_toml;

    fn config() -> Config {
        let text = r#"
[services.db]
command = "db"
[services.api]
command = "api"
depends_on = ["db"]
[services.web]
command = "web"
depends_on = ["api"]
[services.worker]
command = "worker"
[services.debugger]
command = "debug"
depends_on = ["api"]
profiles = ["debug"]
"#;
        resolve_toml(&std::env::temp_dir(), Path::new("locald.toml"), text, &mut vec![]).expect("valid")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_named_service_brings_its_dependencies_and_nothing_else() {
        assert_eq!(config().select(&names(&["web"]), &[]).unwrap(), names(&["db", "api", "web"]));
        assert_eq!(config().select(&names(&["worker", "db"]), &[]).unwrap(), names(&["db", "worker"]));
    }

    #[test]
    fn a_profile_keeps_a_service_out_unless_active_or_named() {
        assert_eq!(config().select(&[], &[]).unwrap(), names(&["db", "api", "web", "worker"]));
        assert_eq!(
            config().select(&[], &names(&["debug"])).unwrap(),
            names(&["db", "api", "debugger", "web", "worker"])
        );
        assert_eq!(config().select(&names(&["debugger"]), &[]).unwrap(), names(&["db", "api", "debugger"]));
    }

    #[test]
    fn unknown_names_and_profiles_are_one_line_listing_what_exists() {
        let e = config().select(&names(&["wbe"]), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "no service \"wbe\" in project tmp (have: db, api, debugger, web, worker)"
                .replace("tmp", &config().project.name)
        );
        let e = config().select(&[], &names(&["dbg"])).unwrap_err().to_string();
        assert!(e.ends_with("has profile \"dbg\" (profiles: debug)"), "{e}");
    }

    #[test]
    fn a_profile_name_must_be_a_label() {
        let text = "[services.x]\ncommand = \"x\"\nprofiles = [\"Debug Mode\"]\n";
        let e = resolve_toml(&std::env::temp_dir(), Path::new("locald.toml"), text, &mut vec![]).unwrap_err();
        assert_eq!((e.line, e.col), (3, 13), "{e}");
    }
}
