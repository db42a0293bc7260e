//! `locald mount` / `locald unmount`: loop mounts in the current project's `.locald/mounts/`,
//! made by the shim.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use locald_daemon::shim;

pub fn mount(image: &Path, name: Option<String>, fstype: &str, read_write: bool) -> anyhow::Result<ExitCode> {
    // The shim follows no symlink, so hand it the real paths.
    let image = fs::canonicalize(image).with_context(|| format!("image {}", image.display()))?;
    let name = match name {
        Some(name) => name,
        None => image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    check_name(&name)?;
    let target = mounts_dir()?.join(&name);
    let shim = shim::discover();
    if let Some(reason) = shim.unavailable() {
        return Err(reason.into());
    }
    fs::create_dir(&target).with_context(|| format!("cannot create mount point {}", target.display()))?;
    if let Err(e) = shim.mount_loop(&image, &target, fstype, read_write) {
        let _ = fs::remove_dir(&target);
        return Err(e).context(format!("mount {}", image.display()));
    }
    let mode = if read_write { "read-write" } else { "read-only" };
    println!("mounted {} at {} ({mode}, nosuid,nodev,noexec)", image.display(), target.display());
    Ok(ExitCode::SUCCESS)
}

pub fn unmount(name: &str) -> anyhow::Result<ExitCode> {
    check_name(name)?;
    let target = mounts_dir()?.join(name);
    let shim = shim::discover();
    if let Some(reason) = shim.unavailable() {
        return Err(reason.into());
    }
    shim.unmount_loop(&target).with_context(|| format!("unmount {name}"))?;
    fs::remove_dir(&target).with_context(|| format!("remove {}", target.display()))?;
    println!("unmounted {}", target.display());
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("mount name {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with '.'");
    }
    Ok(())
}

/// `<project>/.locald/mounts`, created if missing; the project is the nearest directory upwards
/// with a `locald.toml` (or the current directory).
fn mounts_dir() -> anyhow::Result<PathBuf> {
    let cwd = fs::canonicalize(std::env::current_dir()?)?;
    let project = cwd.ancestors().find(|dir| dir.join("locald.toml").is_file()).unwrap_or(&cwd).to_owned();
    let mounts = project.join(".locald").join("mounts");
    fs::create_dir_all(&mounts).with_context(|| format!("cannot create {}", mounts.display()))?;
    Ok(mounts)
}
