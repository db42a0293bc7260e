//! Registry images of a project: pulled into the shared store before the supervisor starts
//! anything (so a long download never holds the projects lock), pinned by digest in
//! `<project>/.locald/images.json`, and found again there when a bundle is prepared.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use locald_core::config::{Config, PullPolicy};
use locald_core::ipc::PullProgress;
use locald_image::{ImageSource, Pulled};
use locald_registry::{ImageRef, Pinned, ProjectImages, PullOptions, Store};

/// `image` names a registry image: not a path that exists in the project, and spelled as a name.
pub fn is_reference(project: &Path, image: &str) -> bool {
    locald_image::looks_like_registry_reference(image)
        && std::fs::symlink_metadata(project.join(image)).is_err()
}

pub fn store() -> Result<Store, String> {
    let cache = locald_core::paths::cache_dir().map_err(|e| e.to_string())?;
    Store::open(&cache).map_err(|e| format!("image store in {}: {e}", cache.display()))
}

/// The pinned, complete image of `image` in `project`, as the blobs to unpack.
pub fn resolve(project: &Path, image: &str) -> Result<ImageSource, String> {
    let store = store()?;
    let pins = ProjectImages::load(project);
    let not_pulled = || format!("image {image} has not been pulled for this project: run `locald pull`");
    let pin = pins.images.get(image).ok_or_else(not_pulled)?;
    let record = store.image(&pin.digest).ok_or_else(not_pulled)?;
    let blob = |d: &str| store.blob_path(d).map_err(|e| e.to_string());
    Ok(ImageSource::Pulled(Pulled {
        manifest: record.digest.clone(),
        config: blob(&record.config)?,
        layers: record.layers.iter().map(|l| Ok((blob(l)?, l.clone()))).collect::<Result<_, String>>()?,
    }))
}

/// Makes sure every registry image of `config`'s services (only `services` when not empty) is in
/// the store and pinned. `force`: pull even what is pinned (`locald pull`). Each image reports
/// through `progress`, ending with a `done` report.
pub async fn ensure(
    config: &Config,
    services: Vec<String>,
    force: bool,
    progress: impl Fn(PullProgress) + Send + Sync + 'static,
) -> Result<(), String> {
    let project = config.project.dir.clone();
    if let Some(unknown) = services.iter().find(|s| !config.services.iter().any(|c| &c.name == *s)) {
        return Err(format!("no service {unknown:?} in project {}", config.project.name));
    }
    let mut wanted: Vec<(String, PullPolicy, String)> = Vec::new();
    for service in &config.services {
        let Some(container) = &service.container else { continue };
        if !services.is_empty() && !services.contains(&service.name) {
            continue;
        }
        if !is_reference(&project, &container.image) {
            continue;
        }
        let policy = if force { PullPolicy::Always } else { container.pull };
        match wanted.iter_mut().find(|(image, _, _)| *image == container.image) {
            // The most eager policy of the services sharing an image wins.
            Some(entry) if policy == PullPolicy::Always => entry.1 = policy,
            Some(_) => {}
            None => wanted.push((container.image.clone(), policy, service.name.clone())),
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let store = store()?;
    let options =
        PullOptions { insecure: config.project.insecure_registries.clone(), ..PullOptions::default() };
    let progress = Arc::new(progress);
    for (image, policy, service) in wanted {
        // Errors name the (first) service whose image it is, as the other `up` errors do.
        let named = |e: String| format!("service {service:?}: {e}");
        let reference = ImageRef::parse(&image).map_err(named)?;
        let shown = reference.to_string();
        let pinned = ProjectImages::load(&project).images.get(&image).and_then(|p| store.image(&p.digest));
        let record = match (policy, pinned) {
            (PullPolicy::Missing | PullPolicy::Never, Some(record)) => {
                let size = record.size;
                progress(PullProgress {
                    image: shown,
                    layers_done: record.layers.len(),
                    layers_total: record.layers.len(),
                    bytes_done: size,
                    bytes_total: size,
                    downloaded: 0,
                    done: true,
                });
                continue;
            }
            (PullPolicy::Never, None) => {
                return Err(named(locald_registry::PullError::NotPulled { image: shown }.to_string()));
            }
            _ => {
                let report = progress.clone();
                let last = Arc::new(Mutex::new(PullProgress::default()));
                let keep = last.clone();
                let on_progress: locald_registry::OnProgress = Arc::new(move |p: &PullProgress| {
                    *keep.lock().expect("progress lock") = p.clone();
                    report(p.clone());
                });
                let record = locald_registry::pull(&store, &reference, &options, on_progress)
                    .await
                    .map_err(|e| named(e.to_string()))?;
                let last = last.lock().expect("progress lock").clone();
                progress(PullProgress { done: true, ..last });
                record
            }
        };
        pin(&store, &project, &image, Pinned { reference: reference.to_string(), digest: record.digest })?;
    }
    Ok(())
}

fn pin(store: &Store, project: &Path, image: &str, pinned: Pinned) -> Result<(), String> {
    let mut pins = ProjectImages::load(project);
    pins.images.insert(image.to_owned(), pinned);
    let path: PathBuf = ProjectImages::path(project);
    pins.save(project).map_err(|e| format!("{}: {e}", path.display()))?;
    store.register_project(project).map_err(|e| format!("image store: {e}"))
}
