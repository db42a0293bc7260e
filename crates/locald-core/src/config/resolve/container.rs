//! An image service's container part: volumes parsed and resolved against the project, limits
//! and the user checked, and the container-only keys refused on a service without an image.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::Ctx;
use crate::config::raw::RawService;
use crate::config::{ConfigError, Container, Volume};

/// The container part of an image service: volumes parsed and resolved against the project,
/// limits checked, `cwd` taken as the working directory inside the container.
pub(super) fn container(
    ctx: &Ctx,
    dir: &Path,
    s: &RawService,
    image: &Spanned<String>,
) -> Result<Container, ConfigError> {
    if image.get_ref().trim().is_empty() {
        return Err(ctx.err(image.span().start, "image is empty"));
    }
    let volumes = s
        .volumes
        .iter()
        .flatten()
        .map(|v| volume(dir, v.get_ref()).map_err(|m| ctx.err(v.span().start, m)))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|w| w.container == v.container) {
            let at = s.volumes.as_ref().map_or(0, |list| list[i].span().start);
            return Err(ctx.err(at, format!("two volumes are mounted at {}", v.container)));
        }
    }
    let workdir = match &s.cwd {
        Some(cwd) => {
            container_path(cwd.get_ref())
                .map_err(|m| ctx.err(cwd.span().start, format!("cwd of an image service {m}")))?;
            Some(cwd.get_ref().clone())
        }
        None => None,
    };
    let pids = match &s.pids {
        Some(p) if *p.get_ref() < 1 => return Err(ctx.err(p.span().start, "pids must be at least 1")),
        Some(p) => Some(*p.get_ref()),
        None => None,
    };
    let user = match &s.user {
        Some(u) => {
            let text = u.get_ref();
            let ok = text.split(':').count() <= 2
                && text.split(':').all(|part| !part.is_empty() && !part.contains(char::is_whitespace));
            if !ok {
                return Err(ctx.err(
                    u.span().start,
                    format!("user {text:?} is not `name`, `uid`, `name:group` or `uid:gid`"),
                ));
            }
            Some(text.clone())
        }
        None => None,
    };
    Ok(Container {
        image: image.get_ref().clone(),
        volumes,
        workdir,
        memory_bytes: s.memory.as_ref().map(|m| m.get_ref().0),
        pids,
        user,
        pull: s.pull.as_ref().map(|p| *p.get_ref()).unwrap_or_default(),
    })
}

/// `host:container[:ro|:rw]`; the host side is relative to the project (or absolute).
fn volume(dir: &Path, text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, container, read_only) = match parts.as_slice() {
        [host, container] => (*host, *container, false),
        [host, container, "ro"] => (*host, *container, true),
        [host, container, "rw"] => (*host, *container, false),
        [_, _, other] => {
            return Err(format!("volume {text:?}: unknown option {other:?} (expected ro or rw)"));
        }
        _ => return Err(format!("volume {text:?} must be \"<host path>:<container path>[:ro]\"")),
    };
    if host.is_empty() {
        return Err(format!("volume {text:?} has no host path"));
    }
    container_path(container).map_err(|m| format!("volume {text:?}: container path {m}"))?;
    let host = Path::new(host);
    let host = if host.is_absolute() { host.to_owned() } else { dir.join(host) };
    let host: PathBuf = host.components().collect();
    if host.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("volume {text:?}: the host path may not contain '..'"));
    }
    Ok(Volume { host, container: container.to_owned(), read_only })
}

fn container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be absolute"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{path:?} may not contain '.' or '..'"));
    }
    Ok(())
}

pub(super) fn refuse_container_keys(ctx: &Ctx, s: &RawService) -> Result<(), ConfigError> {
    let first = [
        s.volumes.as_ref().and_then(|v| v.first()).map(|v| ("volumes", v.span().start)),
        s.memory.as_ref().map(|m| ("memory", m.span().start)),
        s.pids.as_ref().map(|p| ("pids", p.span().start)),
        s.user.as_ref().map(|u| ("user", u.span().start)),
        s.pull.as_ref().map(|p| ("pull", p.span().start)),
    ];
    match first.into_iter().flatten().next() {
        Some((key, at)) => Err(ctx.err(at, format!("{key} applies only to services with an image"))),
        None => Ok(()),
    }
}
