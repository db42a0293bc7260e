//! What `up` checks before anything of a project starts: the platform, local images and the
//! shim for containers, written ports that are free, and the CA bundle for services that trust
//! the local CA.

use std::sync::Arc;

use locald_ca::ca_bundle::{self, CaFiles};
use locald_core::config::{Config, ports};

use super::UpError;
use crate::container::prepare;
use crate::shim::Privileged;

/// The CA bundle, written afresh (the system's roots may have changed since the last `up`) when
/// a service of the project opts in to `trust_local_ca`.
pub(super) fn ca_files(config: &Config) -> Result<Option<CaFiles>, UpError> {
    let Some(first) = config.services.iter().find(|s| s.trust_local_ca) else { return Ok(None) };
    ca_bundle::prepare().map(Some).map_err(|source| UpError::Ca {
        file: config.project.source.clone(),
        service: first.name.clone(),
        source,
    })
}

/// What containers of this project need, checked before anything starts: local images that
/// exist, a platform that runs them, and a trustworthy shim. `None` when there are no image
/// services.
pub(super) fn container_runtime(
    config: &Config,
    privileged: &Arc<dyn Privileged>,
) -> Result<Option<Arc<prepare::Runtime>>, UpError> {
    refuse_containers_off_linux(config, std::env::consts::OS)?;
    let file = || config.project.source.clone();
    let mut first = None;
    for service in &config.services {
        let Some(container) = &service.container else { continue };
        prepare::check(&config.project.dir, service, container).map_err(|source| UpError::Image {
            file: file(),
            service: service.name.clone(),
            source: Box::new(source),
        })?;
        first.get_or_insert(service.name.as_str());
    }
    let Some(name) = first else { return Ok(None) };
    if let Some(source) = privileged.unavailable_beyond_bind("running a container") {
        return Err(UpError::NoShim { file: file(), service: name.to_owned(), source });
    }
    let cache = locald_core::paths::cache_dir().map_err(UpError::ImageCache)?.join("images");
    Ok(Some(Arc::new(prepare::Runtime {
        shim: privileged.clone(),
        cache,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    })))
}

/// Containers need Linux (namespaces, cgroups, the shim); on macOS a project with an image
/// service is refused before anything of it starts or any image is opened, pointing at the
/// Lima profile that runs locald in a Linux VM with the same project directory.
fn refuse_containers_off_linux(config: &Config, os: &str) -> Result<(), UpError> {
    let Some(service) = config.services.iter().find(|s| s.container.is_some()) else { return Ok(()) };
    if os == "linux" {
        return Ok(());
    }
    Err(UpError::Unsupported {
        file: config.project.source.clone(),
        service: service.name.clone(),
        os: os.to_owned(),
    })
}

/// A port written in `locald.toml` that something else already holds fails `up` before anything
/// starts; [`Supervisor::up`] then names the holder (through the shim's `debug port`). Assigned
/// ports are left alone: they were found free a moment ago, and probing again would only catch
/// another daemon's probe of the same port (projects of the same name get the same preferred
/// port) and refuse a project for a port nobody holds.
pub(super) fn check_ports_free(config: &Config) -> Result<(), UpError> {
    for service in config.services.iter().filter(|s| s.port_written) {
        if !ports::is_free(service.port) {
            return Err(UpError::PortInUse {
                file: config.project.source.clone(),
                service: service.name.clone(),
                port: service.port,
                owner: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use locald_core::config;

    use super::*;

    /// A project whose `web` holds `port`, written in the file or assigned.
    fn config(port: u16, written: bool) -> Config {
        let text = if written {
            format!("[services.web]\ncommand = \"x\"\nport = {port}\n")
        } else {
            "[services.web]\ncommand = \"x\"\n".to_owned()
        };
        let dir = std::env::temp_dir();
        let mut config =
            config::resolve_toml(&dir, Path::new("locald.toml"), &text, &mut vec![]).expect("valid config");
        // An assigned port someone else took between assignment and the check.
        config.services[0].port = port;
        config
    }

    #[test]
    fn only_a_written_port_that_is_taken_refuses_up() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let refused = check_ports_free(&config(port, true)).unwrap_err().to_string();
        assert!(refused.contains(&format!("wants port {port}, which is already in use")), "{refused}");
        assert!(check_ports_free(&config(port, false)).is_ok(), "an assigned port is not probed again");
    }

    #[test]
    fn an_image_service_off_linux_is_refused_with_the_lima_way() {
        let dir = std::env::temp_dir();
        let text = "[services.api]\ncommand = \"x\"\n\n[services.db]\nimage = \"./db-image\"\n";
        let config = config::resolve_toml(&dir, Path::new("locald.toml"), text, &mut vec![]).expect("valid");
        let refused = refuse_containers_off_linux(&config, "macos").unwrap_err().to_string();
        assert!(refused.contains("service \"db\" runs in a container, which needs Linux"), "{refused}");
        assert!(refused.contains("`locald-lima up`"), "{refused}");
        assert!(refused.contains("limactl start --name=locald lima/locald.yaml"), "{refused}");
        assert!(refused.contains("limactl shell locald locald up"), "{refused}");
        assert!(!refused.contains('\n'), "one line: {refused}");
        assert!(refuse_containers_off_linux(&config, "linux").is_ok());

        let processes_only = config::resolve_toml(
            &dir,
            Path::new("locald.toml"),
            "[services.api]\ncommand = \"x\"\n",
            &mut vec![],
        )
        .expect("valid");
        assert!(refuse_containers_off_linux(&processes_only, "macos").is_ok(), "processes run natively");
    }
}
