//! From the written file to a [`Config`]: names, dependencies and cycles checked, ports
//! assigned, environments built, `${services.<name>.port|url|domain}` substituted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

mod container;
mod interpolate;
mod names;
mod order;
mod watch;

use container::{container, refuse_container_keys};
use interpolate::{Lookup, interpolate, interpolate_command};
use order::start_order;

#[cfg(test)]
use names::suffix_from;
pub use names::{LOCAL_SUFFIXES, default_domain};
use names::{check_domain, check_label, default_suffix, name_from_dir};

use super::raw::{RawCheck, RawFile, RawService, RestartPolicy};
use super::serving::{self, RawPort};
use super::{
    Check, Command, Condition, Config, ConfigError, Dependency, Probe, Project, Restart, Service, checkout,
    dotenv, ports,
};

/// Where unassigned ports come from; the daemon also avoids ports of its other projects.
pub trait PortSource {
    fn assign(&mut self, project: &str, service: &str) -> Option<u16>;
}

/// Any free port of [`ports::RANGE`], different from those handed out before.
impl PortSource for Vec<u16> {
    fn assign(&mut self, project: &str, service: &str) -> Option<u16> {
        let port = ports::find_free(project, service, &|p| self.contains(&p))?;
        self.push(port);
        Some(port)
    }
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.text, offset, message)
    }
}

pub fn resolve_toml(
    dir: &Path,
    file: &Path,
    text: &str,
    ports: &mut dyn PortSource,
) -> Result<Config, ConfigError> {
    let ctx = Ctx { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        ctx.err(offset, e.message().trim_end().replace('\n', " "))
    })?;
    let project_name = match raw.project.as_ref().and_then(|p| p.name.as_ref()) {
        Some(name) => {
            check_label(name.get_ref())
                .map_err(|m| ctx.err(name.span().start, format!("project name {m}")))?;
            name.get_ref().clone()
        }
        None => name_from_dir(dir),
    };
    let project_trusts_ca = raw.project.as_ref().and_then(|p| p.trust_local_ca).unwrap_or(false);
    let https_redirect = raw.project.as_ref().and_then(|p| p.https_redirect).unwrap_or(false);
    let checkout = checkout::linked_worktree(dir);
    // A worktree's names all start with its label, so they never meet the main checkout's.
    let own = |name: String| checkout.as_ref().map_or(name.clone(), |c| c.name(&name));
    let domain = match raw.project.as_ref().and_then(|p| p.domain.as_ref()) {
        Some(domain) => {
            check_domain(domain.get_ref()).map_err(|m| ctx.err(domain.span().start, m))?;
            own(domain.get_ref().clone())
        }
        None => own(format!("{project_name}.{}", default_suffix())),
    };
    // Where a worktree's preferred ports start: apart from the main checkout's.
    let port_key = own(project_name.clone());
    if raw.services.is_empty() {
        return Err(ConfigError::whole_file(file, "no [services.<name>] defined"));
    }
    for name in raw.services.keys() {
        check_label(name.get_ref()).map_err(|m| ctx.err(name.span().start, format!("service name {m}")))?;
    }
    let services: BTreeMap<&str, &Spanned<RawService>> =
        raw.services.iter().map(|(k, v)| (k.get_ref().as_str(), v)).collect();
    let order = start_order(&ctx, &services)?;

    // Ports first: interpolation may refer to any service's port.
    let mut assigned: HashMap<&str, u16> = HashMap::new();
    for (name, service) in &services {
        let port = match service.get_ref().port.as_ref().map(|p| (p, *p.get_ref())) {
            Some((port, RawPort::Number(0))) => {
                return Err(ctx.err(port.span().start, "port must be 1-65535"));
            }
            Some((_, RawPort::Number(port))) => port,
            // `${services.x.port}` and $PORT still have a value; nothing probes or routes it.
            Some((_, RawPort::Off)) | None => ports
                .assign(&port_key, name)
                .ok_or_else(|| ctx.err(service.span().start, "no free port left to assign"))?,
        };
        assigned.insert(name, port);
    }
    let mut domains: HashMap<&str, String> = HashMap::new();
    for (name, service) in &services {
        let service_domain = match &service.get_ref().domain {
            Some(d) => {
                check_domain(d.get_ref()).map_err(|m| ctx.err(d.span().start, m))?;
                own(d.get_ref().clone())
            }
            None => default_domain(&project_name, &domain, name),
        };
        domains.insert(name, service_domain);
    }
    let lookup = |service: &str, field: &str| -> Result<String, String> {
        let port = assigned.get(service).ok_or_else(|| format!("no service named {service:?}"))?;
        match field {
            "port" => Ok(port.to_string()),
            "url" => Ok(format!("http://127.0.0.1:{port}")),
            "domain" => Ok(domains[service].clone()),
            "host" => Ok("127.0.0.1".into()),
            other => Err(format!("unknown field {other:?} (expected port, url, host or domain)")),
        }
    };

    let mut out = Vec::new();
    for name in order {
        let spanned = services[name];
        let s = spanned.get_ref();
        let port = assigned[name];
        let command = s.command.as_ref().map(|c| interpolate_command(&ctx, c, &lookup)).transpose()?;
        let container = match &s.image {
            Some(image) => Some(container(&ctx, dir, s, image)?),
            None if command.is_none() => {
                return Err(
                    ctx.err(spanned.span().start, format!("service {name:?} needs a command or an image"))
                );
            }
            None => {
                refuse_container_keys(&ctx, s)?;
                None
            }
        };
        let cwd = match &s.cwd {
            Some(cwd) if container.is_none() => {
                let path = dir.join(cwd.get_ref());
                if !path.is_dir() {
                    return Err(
                        ctx.err(cwd.span().start, format!("cwd {:?} is not a directory", cwd.get_ref()))
                    );
                }
                path
            }
            // An image service's cwd is a path inside the container (see `container`).
            _ => dir.to_owned(),
        };
        let mut env = Vec::new();
        if let Some(env_file) = &s.env_file {
            let path = dir.join(env_file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ctx.err(env_file.span().start, format!("cannot read {}: {e}", path.display()))
            })?;
            let pairs = dotenv::parse(&text).map_err(|(line, m)| ConfigError {
                file: path.clone(),
                line,
                col: 1,
                message: m,
            })?;
            env.extend(pairs);
        }
        let env_from_file = env.len();
        for (key, value) in &s.env {
            env.push((key.clone(), interpolate(&ctx, value, &lookup)?));
        }
        env.push(("PORT".into(), port.to_string()));
        let depends_on = s
            .depends_on
            .iter()
            .flat_map(|d| d.0.iter())
            .map(|(dep, condition)| {
                let has_check = services[dep.get_ref().as_str()].get_ref().health_check.is_some();
                let condition =
                    condition.unwrap_or(if has_check { Condition::Healthy } else { Condition::Started });
                if condition == Condition::Healthy && !has_check {
                    return Err(ctx.err(
                        dep.span().start,
                        format!("condition healthy needs a health_check on service {:?}", dep.get_ref()),
                    ));
                }
                Ok(Dependency { name: dep.get_ref().clone(), condition })
            })
            .collect::<Result<_, _>>()?;
        let health_check = s.health_check.as_ref().map(|c| check(&ctx, c, port, &lookup)).transpose()?;
        let liveness = s.liveness.as_ref().map(|c| check(&ctx, c, port, &lookup)).transpose()?;
        let restart = Restart {
            policy: s.restart.unwrap_or(RestartPolicy::OnFailure),
            max_restarts: s.max_restarts.unwrap_or(5),
            backoff: s.backoff.map_or(Duration::from_millis(500), |d| d.0),
            max_backoff: s.max_backoff.map_or(Duration::from_secs(30), |d| d.0),
        };
        let domain = domains[name].clone();
        let mut extra_domains = Vec::new();
        for extra in s.domains.iter().flatten() {
            check_domain(extra.get_ref()).map_err(|m| ctx.err(extra.span().start, m))?;
            extra_domains.push(own(extra.get_ref().clone()));
        }
        out.push(Service {
            name: name.to_owned(),
            command,
            container,
            cwd,
            env,
            env_from_file,
            port,
            serves: serving::serves(s.port.as_ref().map(|p| *p.get_ref()), s.protocol),
            start_timeout: s.start_timeout.map_or(serving::DEFAULT_START_TIMEOUT, |d| d.0),
            port_written: matches!(s.port.as_ref().map(|p| *p.get_ref()), Some(RawPort::Number(_))),
            url: format!("http://{domain}"),
            domain,
            domains: extra_domains,
            trust_local_ca: s.trust_local_ca.unwrap_or(project_trusts_ca),
            depends_on,
            health_check,
            liveness,
            restart,
            stop_signal: s.stop_signal.map_or(libc::SIGTERM, |s| s.0),
            stop_timeout: s.stop_timeout.map_or(Duration::from_secs(10), |d| d.0),
            watch: watch::resolve(&ctx, s, &lookup)?,
            profiles: profiles(&ctx, s)?,
        });
    }
    Ok(Config {
        project: Project {
            name: project_name,
            domain,
            dir: dir.to_owned(),
            source: file.to_owned(),
            https_redirect,
            insecure_registries: raw
                .project
                .as_ref()
                .and_then(|p| p.insecure_registries.clone())
                .unwrap_or_default(),
            checkout,
        },
        services: out,
    })
}

/// A Procfile (`name: command` lines) plus `.env` when present: no dependencies, no checks.
pub fn resolve_procfile(
    dir: &Path,
    file: &Path,
    text: &str,
    ports: &mut dyn PortSource,
) -> Result<Config, ConfigError> {
    let name = name_from_dir(dir);
    let checkout = checkout::linked_worktree(dir);
    let own = |name: String| checkout.as_ref().map_or(name.clone(), |c| c.name(&name));
    let domain = own(format!("{name}.{}", default_suffix()));
    let port_key = own(name.clone());
    let dotenv_path = dir.join(".env");
    let dotenv = match std::fs::read_to_string(&dotenv_path) {
        Ok(text) => dotenv::parse(&text).map_err(|(line, m)| ConfigError {
            file: dotenv_path.clone(),
            line,
            col: 1,
            message: m,
        })?,
        Err(_) => Vec::new(),
    };
    let mut services = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |m: String| ConfigError { file: file.to_owned(), line: index + 1, col: 1, message: m };
        let (service, command) =
            trimmed.split_once(':').ok_or_else(|| err("expected `name: command`".into()))?;
        let service = service.trim();
        check_label(service).map_err(|m| err(format!("service name {m}")))?;
        if services.iter().any(|s: &Service| s.name == service) {
            return Err(err(format!("service {service:?} defined twice")));
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(err("command is empty".into()));
        }
        let port =
            ports.assign(&port_key, service).ok_or_else(|| err("no free port left to assign".into()))?;
        let mut env = dotenv.clone();
        let env_from_file = env.len();
        env.push(("PORT".into(), port.to_string()));
        let service_domain = default_domain(&name, &domain, service);
        services.push(Service {
            name: service.to_owned(),
            command: Some(Command::Shell(command.to_owned())),
            container: None,
            cwd: dir.to_owned(),
            env,
            env_from_file,
            port,
            serves: serving::procfile_serves(service),
            start_timeout: serving::DEFAULT_START_TIMEOUT,
            port_written: false,
            url: format!("http://{service_domain}"),
            domain: service_domain,
            domains: Vec::new(),
            trust_local_ca: false,
            depends_on: Vec::new(),
            health_check: None,
            liveness: None,
            restart: Restart {
                policy: RestartPolicy::OnFailure,
                max_restarts: 5,
                backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(30),
            },
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            watch: None,
            profiles: Vec::new(),
        });
    }
    if services.is_empty() {
        return Err(ConfigError::whole_file(file, "no processes defined"));
    }
    Ok(Config {
        project: Project {
            name,
            domain: domain.clone(),
            dir: dir.to_owned(),
            source: file.to_owned(),
            https_redirect: false,
            insecure_registries: Vec::new(),
            checkout,
        },
        services,
    })
}

/// Profile names are labels, like service names, so `--profile` never needs quoting.
fn profiles(ctx: &Ctx, s: &RawService) -> Result<Vec<String>, ConfigError> {
    s.profiles
        .iter()
        .flatten()
        .map(|p| {
            check_label(p.get_ref()).map_err(|m| ctx.err(p.span().start, format!("profile name {m}")))?;
            Ok(p.get_ref().clone())
        })
        .collect()
}

fn check(ctx: &Ctx, spanned: &Spanned<RawCheck>, port: u16, lookup: &Lookup) -> Result<Check, ConfigError> {
    let c = spanned.get_ref();
    let at = spanned.span().start;
    let kinds =
        usize::from(c.tcp == Some(true)) + usize::from(c.http.is_some()) + usize::from(c.command.is_some());
    if kinds != 1 {
        return Err(ctx.err(at, "a check needs exactly one of tcp = true, http = \"/path\" or command"));
    }
    let probe = if let Some(path) = &c.http {
        if !path.starts_with('/') {
            return Err(ctx.err(at, format!("http path must start with '/', found {path:?}")));
        }
        Probe::Http { port, path: path.clone(), status: c.status }
    } else if let Some(command) = &c.command {
        Probe::Command { command: interpolate_command(ctx, command, lookup)? }
    } else {
        Probe::Tcp { port }
    };
    if c.status.is_some() && c.http.is_none() {
        return Err(ctx.err(at, "status applies only to http checks"));
    }
    let timeout = c.timeout.map_or(Duration::from_secs(2), |d| d.0);
    let interval = c.interval.map_or(Duration::from_secs(1), |d| d.0);
    if interval.is_zero() || timeout.is_zero() {
        return Err(ctx.err(at, "interval and timeout must be greater than zero"));
    }
    Ok(Check {
        probe,
        interval,
        timeout,
        retries: c.retries.unwrap_or(3).max(1),
        start_period: c.start_period.map_or(Duration::ZERO, |d| d.0),
    })
}

#[cfg(test)]
mod tests;
