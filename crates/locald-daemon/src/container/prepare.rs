//! From an image service of `locald.toml` to a bundle the shim will run: the image unpacked
//! (or found in the cache), a `config.json` generated for the caller's uid in
//! `<project>/.locald/containers/<service>/`, and the container's root: an overlay the shim
//! mounts of the image's layer directories (a pulled image's, in the store) or of its unpacked
//! rootfs in the cache (a local archive or OCI layout), with the service's writes in `upper/`
//! beside it; or, where overlayfs cannot be used (and for plain directory images, which may
//! change under the same name), a copy of the rootfs as before.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use locald_core::config::{Container, Service};

use crate::shim::{Privileged, RemoveError, force_remove_dir_all_blocking};
use locald_ca::ca_bundle::{self, CaFiles};
use locald_image::bundle::{self, BundleError, ContainerConfig, Volume};
use locald_image::copy::copy_tree;
use locald_image::identity::{self, Subordinate};
use locald_image::{self as image, Defaults, ImageError, ImageSource};
use locald_shim_protocol::overlay::{UPPER_DIR, WORK_DIR};
use locald_shim_protocol::protocol::BundleRunRequest;

/// Records which image the root beside it was made from, and how (`overlay <id>`, or the id
/// alone for a copy).
const IMAGE_MARKER: &str = "image-id";

/// Why overlayfs cannot be used on this machine, once the shim said so: from then on this daemon
/// copies rootfs as before.
static OVERLAY_UNAVAILABLE: OnceLock<String> = OnceLock::new();
static OVERLAY_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Records the shim's `overlay-unavailable` line; logged once.
pub fn overlay_unavailable(reason: &str) {
    let reason = reason.trim().trim_start_matches(locald_shim_protocol::overlay::UNAVAILABLE).trim();
    let reason = reason.trim_start_matches(':').trim().to_owned();
    if OVERLAY_UNAVAILABLE.set(reason.clone()).is_ok() {
        tracing::warn!("overlayfs cannot be used here ({reason}); container rootfs are copied instead");
    }
}

/// The note for `up`, given once per daemon after overlayfs turned out unusable.
pub fn overlay_note() -> Option<String> {
    let reason = OVERLAY_UNAVAILABLE.get()?;
    (!OVERLAY_ANNOUNCED.swap(true, Ordering::SeqCst))
        .then(|| format!("overlayfs cannot be used here ({reason}): each container's rootfs is a full copy"))
}

/// `LOCALD_NO_OVERLAY` set: copy as before (a way out should overlayfs misbehave somewhere).
fn overlay_usable() -> bool {
    OVERLAY_UNAVAILABLE.get().is_none() && std::env::var_os("LOCALD_NO_OVERLAY").is_none()
}

/// A bundle ready for the shim.
#[derive(Debug)]
pub struct Bundle {
    pub run: BundleRunRequest,
    /// Lines worth a note in the service's log.
    pub notes: Vec<String>,
}

impl Bundle {
    pub fn is_overlay(&self) -> bool {
        !self.run.lowers.is_empty()
    }
}
/// The shim accepts ids of at most this length.
const MAX_ID: usize = 64;

/// What every container of one daemon shares.
#[derive(Debug)]
pub struct Runtime {
    pub shim: Arc<dyn Privileged>,
    /// `$XDG_CACHE_HOME/locald/images`.
    pub cache: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "image {0} has no command of its own (a plain directory, or an image without Entrypoint/Cmd): set `command`"
    )]
    NoCommand(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Pull(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("old bundle: {0}")]
    Remove(#[from] RemoveError),
    #[error("service {service}: {message}")]
    User { service: String, message: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PrepareError {
    let path = path.to_owned();
    move |source| PrepareError::Io { what, path, source }
}

/// The container id of `service` in the project whose daemon key is `project_key`: unique per
/// project directory, recognisable in `ps` and in `/run/locald/<uid>/`.
pub fn container_id(project_key: &str, service: &str) -> String {
    let service: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .collect();
    let room = MAX_ID - 1 - project_key.len().min(MAX_ID / 2);
    let key = &project_key[..project_key.len().min(MAX_ID / 2)];
    if service.len() <= room {
        format!("{service}-{key}")
    } else {
        // Two long names sharing a prefix still differ by their hash.
        let hash = service.bytes().fold(0xcbf2_9ce4_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
        format!("{}-{hash:08x}-{key}", &service[..room - 9])
    }
}

/// `<project>/.locald/containers/<service>`.
pub fn bundle_dir(project: &Path, service: &str) -> PathBuf {
    locald_core::paths::containers_dir(project).join(service)
}

/// Checks what can be checked before anything starts: the image exists and is local, and a
/// command is known for images that bring none.
pub fn check(project: &Path, service: &Service, container: &Container) -> Result<ImageSource, PrepareError> {
    let source = if super::pulls::is_reference(project, &container.image) {
        super::pulls::resolve(project, &container.image).map_err(PrepareError::Pull)?
    } else {
        image::detect(project, &container.image)?
    };
    if matches!(source, ImageSource::Directory(_)) && service.command.is_none() {
        return Err(PrepareError::NoCommand(container.image.clone()));
    }
    Ok(source)
}

/// The container's root, before the bundle is written.
enum Root {
    /// Lowers (topmost first) for the shim to stack under `upper/`.
    Overlay { lowers: Vec<PathBuf> },
    /// A rootfs directory to copy into the bundle.
    Copy { rootfs: PathBuf },
}

/// Makes the bundle of `service` ready to run as container `id`; blocking (it may unpack an
/// image). `ca`: the CA files to mount (`trust_local_ca`).
pub fn prepare(
    runtime: &Runtime,
    project: &Path,
    service: &Service,
    id: &str,
    ca: Option<&CaFiles>,
) -> Result<Bundle, PrepareError> {
    let container = service.container.as_ref().expect("only image services have bundles");
    let mut notes = Vec::new();
    let source = check(project, service, container)?;
    let overlay = overlay_usable() && !matches!(source, ImageSource::Directory(_));
    let (root, image_id, defaults) = match &source {
        // A pulled image's layers are in the store, each unpacked once: they are the lowers.
        ImageSource::Pulled(pulled) if overlay => {
            let store = super::pulls::store().map_err(PrepareError::Pull)?;
            let mut lowers = Vec::with_capacity(pulled.layers.len());
            for (_, digest) in pulled.layers.iter().rev() {
                let dir = store.unpack_layer(digest).map_err(io_err("unpack layer", store.root()))?;
                lowers.push(dir.canonicalize().map_err(io_err("resolve", &dir))?);
            }
            let defaults = image::defaults_of(&pulled.config)?;
            (Root::Overlay { lowers }, pulled.manifest.clone(), defaults)
        }
        _ => {
            let prepared = image::prepare(&source, &runtime.cache)?;
            if !prepared.skipped.devices.is_empty() {
                notes.push(format!(
                    "image: {} device node(s) left out of the rootfs",
                    prepared.skipped.devices.len()
                ));
            }
            // A local image's unpacked rootfs in the cache is the one lower.
            let root = if overlay {
                let rootfs = prepared.rootfs.canonicalize().map_err(io_err("resolve", &prepared.rootfs))?;
                Root::Overlay { lowers: vec![rootfs] }
            } else {
                Root::Copy { rootfs: prepared.rootfs.clone() }
            };
            (root, prepared.id, prepared.defaults)
        }
    };
    let args = match &service.command {
        Some(command) => command.argv(),
        None => defaults.argv(),
    };
    if args.is_empty() {
        return Err(PrepareError::NoCommand(container.image.clone()));
    }

    let dot_locald = project.join(".locald");
    fs::create_dir_all(&dot_locald).map_err(io_err("create", &dot_locald))?;
    // Rootfs copies and container writes are not something to commit by accident.
    let ignore = dot_locald.join(".gitignore");
    if !ignore.exists() {
        fs::write(&ignore, "*\n").map_err(io_err("write", &ignore))?;
    }
    let dir = bundle_dir(project, &service.name);
    let marker = dir.join(IMAGE_MARKER);
    let wanted = match &root {
        Root::Overlay { .. } => format!("overlay {image_id}"),
        Root::Copy { .. } => image_id.clone(),
    };
    // The service's writes survive stop/start (and `down`) as long as its image stays the same;
    // a directory image may change under the same name, so it is copied afresh on every start.
    let reusable = !matches!(source, ImageSource::Directory(_))
        && fs::read_to_string(&marker).is_ok_and(|id| id == wanted)
        && dir.join("rootfs").is_dir();
    if !reusable {
        // Files a container left root-owned go through the shim's cleanup.
        force_remove_dir_all_blocking(&dir, &*runtime.shim)?;
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        match &root {
            Root::Overlay { .. } => {
                for sub in ["rootfs", UPPER_DIR, WORK_DIR] {
                    fs::create_dir(dir.join(sub)).map_err(io_err("create", &dir.join(sub)))?;
                }
            }
            Root::Copy { rootfs } => {
                copy_tree(rootfs, &dir.join("rootfs")).map_err(io_err("copy the image's rootfs to", &dir))?
            }
        }
        fs::write(&marker, &wanted).map_err(io_err("write", &marker))?;
    } else {
        notes.push("keeping the container's files from its last run".into());
    }

    for volume in &container.volumes {
        // Like compose: a missing host directory is created (as the user, not as root).
        if fs::symlink_metadata(&volume.host).is_err() {
            fs::create_dir_all(&volume.host).map_err(io_err("create volume", &volume.host))?;
        }
    }
    // The image's user, in the image's own files, mapped through the user's allocation (if any).
    let subordinate = Subordinate::of_host_user(runtime.uid);
    let user = match container.user.as_deref().or(defaults.user.as_deref()) {
        None | Some("0") | Some("root") | Some("0:0") | Some("root:root") => None,
        Some(spec) => {
            // In an overlay root the service's own writes (the upper) come first.
            let (upper, rootfs) = (dir.join(UPPER_DIR), dir.join("rootfs"));
            let layers: Vec<&Path> = match &root {
                Root::Overlay { lowers } => {
                    std::iter::once(upper.as_path()).chain(lowers.iter().map(PathBuf::as_path)).collect()
                }
                Root::Copy { .. } => vec![rootfs.as_path()],
            };
            Some(
                identity::resolve_in_layers(&layers, spec, &subordinate)
                    .map_err(|message| PrepareError::User { service: service.name.clone(), message })?,
            )
        }
    };
    let config = ContainerConfig {
        id: id.to_owned(),
        subordinate,
        user,
        uid: runtime.uid,
        gid: runtime.gid,
        args,
        env: environment(&defaults, &service.env),
        cwd: container.workdir.clone().or_else(|| defaults.workdir.clone()).map(PathBuf::from),
        volumes: container
            .volumes
            .iter()
            .map(|v| Volume {
                host: v.host.clone(),
                container: v.container.clone().into(),
                read_only: v.read_only,
            })
            .chain(ca.map(ca_volumes).into_iter().flatten())
            .collect(),
        memory_bytes: container.memory_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        pids: container.pids,
        idmap_volumes: true,
    };
    bundle::write(&dir, &config)?;
    let (cache, lowers) = match root {
        Root::Overlay { lowers } => {
            // Canonical, as the lowers are: the shim follows no symlink on the way.
            let cache = runtime.cache.parent().unwrap_or(&runtime.cache);
            (Some(cache.canonicalize().map_err(io_err("resolve", cache))?), lowers)
        }
        Root::Copy { .. } => (None, Vec::new()),
    };
    let bundle_path = dir.canonicalize().map_err(io_err("resolve", &dir))?;
    let run = BundleRunRequest { bundle: bundle_path, id: id.to_owned(), cache, lowers };
    Ok(Bundle { run, notes })
}

/// Removes the kept files of the project's image services (`down --volumes`): their writes,
/// copies and bundles. Blocking.
pub fn remove_containers(shim: &dyn Privileged, project: &Path) -> Result<(), PrepareError> {
    // A project whose containers never ran has nothing to remove: that is no error either.
    force_remove_dir_all_blocking(&locald_core::paths::containers_dir(project), shim)?;
    Ok(())
}

/// The CA and the bundle, read-only where the service's variables point
/// ([`ca_bundle::service_env`]).
pub fn ca_volumes(files: &CaFiles) -> [Volume; 2] {
    [(&files.ca, ca_bundle::CONTAINER_CA), (&files.bundle, ca_bundle::CONTAINER_BUNDLE)]
        .map(|(host, container)| Volume { host: host.clone(), container: container.into(), read_only: true })
}

/// The image's variables, then the service's (which win for the same name, PORT included).
fn environment(defaults: &Defaults, service: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = defaults
        .env
        .iter()
        .filter(|entry| {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            !service.iter().any(|(k, _)| k == key)
        })
        .cloned()
        .collect();
    env.extend(service.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_per_project_and_fit_the_shims_limit() {
        let key = "0123456789abcdef";
        assert_eq!(container_id(key, "web"), "web-0123456789abcdef");
        let long_a = format!("{}a", "s".repeat(62));
        let long_b = format!("{}b", "s".repeat(62));
        let (a, b) = (container_id(key, &long_a), container_id(key, &long_b));
        assert_ne!(a, b, "services sharing a long prefix get different ids");
        for id in [&a, &b] {
            assert!(id.len() <= MAX_ID, "{id}");
            locald_shim_protocol::bundle_policy::container_id(id).expect("the shim accepts the id");
        }
        assert_ne!(container_id("1111111111111111", "web"), container_id("2222222222222222", "web"));
    }

    #[test]
    fn service_variables_override_the_images() {
        let defaults = Defaults {
            env: vec!["PATH=/opt/bin".into(), "PORT=80".into(), "LANG=C".into()],
            ..Defaults::default()
        };
        let service = vec![("PORT".to_owned(), "41000".to_owned()), ("MODE".to_owned(), "dev".to_owned())];
        assert_eq!(environment(&defaults, &service), ["PATH=/opt/bin", "LANG=C", "PORT=41000", "MODE=dev"]);
    }

    #[test]
    fn the_local_ca_is_mounted_read_only_and_passes_the_policy() {
        let files = CaFiles {
            ca: "/home/u/.local/share/locald/ca/ca.pem".into(),
            bundle: "/home/u/.local/share/locald/ca/ca-bundle.pem".into(),
        };
        let config = ContainerConfig {
            id: "web-1".into(),
            uid: 1000,
            gid: 1000,
            args: vec!["/bin/sh".into()],
            volumes: ca_volumes(&files).to_vec(),
            ..Default::default()
        };
        let spec = bundle::spec(&config).unwrap();
        locald_shim_protocol::bundle_policy::check(&spec, 1000, 1000, "web-1").unwrap();
        let mounts = spec.mounts().as_ref().unwrap();
        for (source, destination) in
            [(&files.ca, ca_bundle::CONTAINER_CA), (&files.bundle, ca_bundle::CONTAINER_BUNDLE)]
        {
            let mount = mounts.iter().find(|m| m.destination() == Path::new(destination)).unwrap();
            assert_eq!(mount.source().as_ref(), Some(source));
            let options = mount.options().as_ref().unwrap();
            assert!(
                options.iter().any(|o| o == "ro") && options.iter().any(|o| o == "nosuid"),
                "{options:?}"
            );
        }
    }
}
