//! Between the supervisor and what makes its projects reachable: one task turns every set of
//! running projects the supervisor publishes ([`Supervisor::running`]) into the proxy's route
//! table and the `/etc/hosts` sync, from the same [`ProjectRoutes`], so the two always name the
//! same hosts. `view` is how the proxy sees a service, `low_ports` how it gets 443 and 80.

mod low_ports;
#[cfg(test)]
mod tests;
mod view;

use std::sync::Arc;

use tokio::sync::watch;

use locald_proxy::{ProjectRoutes, Proxy, ServiceRoutes};

use crate::supervisor::{Project, Running, Supervisor};
pub use low_ports::{ViaShim, low_ports};

/// How `/etc/hosts` is made to list exactly these names ([`crate::hosts::sync`]).
type HostsSync = Arc<dyn Fn(&[String]) -> Result<(), crate::hosts::HostsError> + Send + Sync>;

/// What request handlers hold of the wiring: how far it has applied the publications.
#[derive(Clone)]
pub struct Wiring {
    applied: watch::Receiver<u64>,
}

impl Wiring {
    /// Routes what runs now at once (what a start recovered: `/etc/hosts` is left as the last
    /// daemon left it, as before), then follows every later publication with routes and hosts.
    pub fn start(supervisor: &Supervisor, proxy: Option<Arc<Proxy>>) -> Self {
        let privileged = supervisor.privileged();
        Self::start_with(
            supervisor,
            proxy,
            Arc::new(move |names: &[String]| crate::hosts::sync(&*privileged, names)),
        )
    }

    fn start_with(supervisor: &Supervisor, proxy: Option<Arc<Proxy>>, hosts: HostsSync) -> Self {
        let mut running = supervisor.running();
        let first = running.borrow_and_update().clone();
        if let Some(proxy) = &proxy {
            proxy.set_routes(&project_routes(&first.projects));
        }
        let (applied, watched) = watch::channel(first.generation);
        tokio::spawn(async move {
            // Ends with the supervisor: nothing is published any more.
            while running.changed().await.is_ok() {
                let published: Running = running.borrow_and_update().clone();
                apply(&published.projects, proxy.as_deref(), &hosts).await;
                applied.send_replace(published.generation);
            }
        });
        Self { applied: watched }
    }

    /// Returns once the routes and hosts of `generation` (or a later one) are live.
    pub async fn applied(&self, generation: u64) {
        let mut applied = self.applied.clone();
        // An error: the task ended with the supervisor, and nothing will be applied any more.
        let _ = applied.wait_for(|done| *done >= generation).await;
    }
}

/// The proxy routes exactly these projects and `/etc/hosts` lists the names it routes (none:
/// the block goes away).
async fn apply(projects: &[Arc<Project>], proxy: Option<&Proxy>, hosts: &HostsSync) {
    let routes = project_routes(projects);
    if let Some(proxy) = proxy {
        proxy.set_routes(&routes);
    }
    let names = host_names(&routes);
    let hosts = hosts.clone();
    let result = tokio::task::spawn_blocking(move || hosts(&names)).await;
    if let Ok(Err(message)) = result {
        tracing::warn!("{message}");
    }
}

/// The route model of the running projects, in the supervisor's order (the first project to
/// claim a name keeps it).
pub fn project_routes(projects: &[Arc<Project>]) -> Vec<ProjectRoutes> {
    projects
        .iter()
        .map(|project| {
            let config = &project.config.project;
            ProjectRoutes {
                name: config.name.clone(),
                https_redirect: config.https_redirect,
                services: project
                    .services
                    .iter()
                    // A worker or a database has no HTTP to route (and so no names in /etc/hosts).
                    .filter(|handle| handle.service.serves.is_routed())
                    .map(|handle| ServiceRoutes {
                        name: handle.service.name.clone(),
                        port: handle.service.port,
                        hosts: handle.service.host_names(&config.domain),
                        view: Arc::new(view::View::new(handle, &project.log_dir)),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Every name the routes hold, for `/etc/hosts` (which leaves out those it need not list).
fn host_names(routes: &[ProjectRoutes]) -> Vec<String> {
    routes.iter().flat_map(|p| &p.services).flat_map(|s| s.hosts.iter().cloned()).collect()
}
