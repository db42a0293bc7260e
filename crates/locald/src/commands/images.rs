//! `locald images` and `locald images prune`: the shared store, read directly (it is the user's
//! own cache; no daemon needed).

use std::process::ExitCode;

use anyhow::Context;
use locald_registry::Store;

use super::up::bytes;

fn store() -> anyhow::Result<Store> {
    let cache = locald_core::paths::cache_dir()?;
    Store::open(&cache).with_context(|| format!("image store in {}", cache.display()))
}

pub fn list() -> anyhow::Result<ExitCode> {
    let listed = store()?.list();
    if listed.is_empty() {
        println!("no registry images pulled");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<48} {:<19} {:>9}  PROJECTS", "IMAGE", "DIGEST", "SIZE");
    for image in listed {
        let names: Vec<&str> = image.record.references.iter().map(String::as_str).collect();
        let projects: Vec<String> = image.projects.iter().map(|p| p.display().to_string()).collect();
        println!(
            "{:<48} {:<19} {:>9}  {}",
            names.join(", "),
            &image.record.digest[..image.record.digest.len().min(19)],
            bytes(image.record.size),
            if projects.is_empty() { "(unused)".to_owned() } else { projects.join(", ") }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prune() -> anyhow::Result<ExitCode> {
    let (removed, freed) = store()?.prune().context("pruning the image store")?;
    for record in &removed {
        let names: Vec<&str> = record.references.iter().map(String::as_str).collect();
        println!("removed {} ({})", names.join(", "), record.digest);
    }
    println!("{} image(s) removed, {} freed", removed.len(), bytes(freed));
    Ok(ExitCode::SUCCESS)
}
