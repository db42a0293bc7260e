//! `locald env` / `locald exec`: a service's environment as its process gets it — the running
//! copy's (its assigned ports, the CA variables), or for a project that is not up, what `up`
//! would give it now — each variable with the layer that set it.

use std::path::Path;

use locald_ca::ca_bundle;
use locald_core::config::Service;
use locald_core::ipc::{EnvVar, ServiceEnv};

use crate::supervisor::Supervisor;

pub(super) fn service_env(supervisor: &Supervisor, dir: &Path, name: &str) -> Result<ServiceEnv, String> {
    let canonical = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(project) = supervisor.get(&canonical) {
        let handle = project
            .handle(name)
            .ok_or_else(|| format!("no service {name:?} in project {}", project.config.project.name))?;
        return Ok(described(&handle.service, false));
    }
    let config = supervisor.load(&canonical).map_err(|e| e.to_string())?;
    let mut service = config
        .services
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no service {name:?} in {}", canonical.display()))?;
    if service.trust_local_ca {
        let files = ca_bundle::prepare().map_err(|e| format!("service {name:?} has trust_local_ca: {e}"))?;
        let extra = ca_bundle::service_env(&service, &files);
        service.env.extend(extra);
    }
    Ok(described(&service, true))
}

fn described(service: &Service, not_running: bool) -> ServiceEnv {
    let vars = service
        .env
        .iter()
        .enumerate()
        .map(|(i, (name, value))| EnvVar {
            name: name.clone(),
            value: value.clone(),
            layer: service.env_layer(i).to_owned(),
        })
        .collect();
    ServiceEnv { cwd: service.cwd.clone(), vars, not_running }
}
