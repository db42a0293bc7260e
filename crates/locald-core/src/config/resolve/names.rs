//! The names a project gets: DNS labels for projects and services, their default domains, and
//! the local suffix those domains end in.

use std::path::Path;

/// `web` and the service named after the project get the project's domain.
pub fn default_domain(project: &str, project_domain: &str, service: &str) -> String {
    if service == "web" || service == project {
        project_domain.to_owned()
    } else {
        format!("{}.{project_domain}", service.replace('_', "-"))
    }
}

/// Project and service names become DNS labels.
pub(super) fn check_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with(['-', '_'])
        && !name.ends_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} must be 1-63 lowercase letters, digits, '-' or '_', not at either end"))
    }
}

pub(super) fn check_domain(domain: &str) -> Result<(), String> {
    if domain.len() <= 253 && domain.split('.').all(|l| check_label(l).is_ok() && !l.contains('_')) {
        Ok(())
    } else {
        Err(format!("domain {domain:?} is not a valid lowercase host name"))
    }
}

/// Set by the NixOS module (`services.locald.domainSuffix`): the suffix of default project names.
pub const DOMAIN_SUFFIX_VAR: &str = "LOCALD_DOMAIN_SUFFIX";
/// The RFC 6761 suffixes no name outside this machine can have: the shim's `HOSTS_SUFFIXES`
/// (the daemon's tests hold the two lists equal).
pub const LOCAL_SUFFIXES: &[&str] = &["localhost", "test"];

/// `<project>.<suffix>` unless `locald.toml` names a domain: `$LOCALD_DOMAIN_SUFFIX` when it is one
/// of the local suffixes, else `localhost`.
pub(super) fn default_suffix() -> &'static str {
    suffix_from(std::env::var(DOMAIN_SUFFIX_VAR).ok().as_deref())
}

pub(super) fn suffix_from(value: Option<&str>) -> &'static str {
    LOCAL_SUFFIXES.iter().copied().find(|s| Some(*s) == value).unwrap_or("localhost")
}

/// A project name from its directory: lowercase, anything else becomes '-'.
pub(super) fn name_from_dir(dir: &Path) -> String {
    let base = dir.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut name: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    name = name.trim_matches('-').chars().take(63).collect();
    if name.is_empty() { "project".into() } else { name }
}
