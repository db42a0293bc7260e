//! A stock distribution kernel: Debian's cloud kernel package, downloaded with apt once and
//! unpacked into the cache (the package carries the modules the guest loads, e.g. loop).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::util;

const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Modules the scenarios need that the cloud kernel builds as modules, in load order.
pub const MODULES: &[&str] = &["loop"];

pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    pub version: String,
}

pub fn obtain(cache: &Path) -> anyhow::Result<Kernel> {
    std::fs::create_dir_all(cache)?;
    let unpacked = cache.join("kernel");
    if let Some(kernel) = find(&unpacked) {
        return with_modules_dep(&unpacked, kernel);
    }
    let package = concrete_package()?;
    // apt's sandbox user cannot write into target/: download as root into the cache.
    util::run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(cache),
    )?;
    let deb = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package)))
        .context("the kernel package did not download")?;
    let _ = std::fs::remove_dir_all(&unpacked);
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let kernel = find(&unpacked).context("no vmlinuz in the kernel package")?;
    with_modules_dep(&unpacked, kernel)
}

/// The package ships modules without `modules.dep` (its postinst runs depmod); make it here.
fn with_modules_dep(unpacked: &Path, kernel: Kernel) -> anyhow::Result<Kernel> {
    if !kernel.modules_dir.join("modules.dep").is_file() {
        util::run(Command::new("/sbin/depmod").arg("-b").arg(unpacked).arg(&kernel.version))?;
    }
    Ok(kernel)
}

/// The versioned package the metapackage depends on (`linux-image-6.1.0-NN-cloud-amd64`).
fn concrete_package() -> anyhow::Result<String> {
    let mut depends = util::output(Command::new("apt-cache").args(["depends", META_PACKAGE]))?;
    if !depends.contains("Depends:") {
        util::run(Command::new("apt-get").args(["update", "-qq"]))?;
        depends = util::output(Command::new("apt-cache").args(["depends", META_PACKAGE]))?;
    }
    match parse_depends(&depends) {
        Some(package) => Ok(package),
        None => bail!("apt-cache depends {META_PACKAGE} names no kernel image:\n{depends}"),
    }
}

pub fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
}

fn find(unpacked: &Path) -> Option<Kernel> {
    let boot = std::fs::read_dir(unpacked.join("boot")).ok()?;
    let vmlinuz = boot
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))?;
    let version = vmlinuz.file_name()?.to_string_lossy().trim_start_matches("vmlinuz-").to_owned();
    let modules_dir = unpacked.join("lib/modules").join(&version);
    modules_dir.is_dir().then_some(Kernel { vmlinuz, modules_dir, version })
}

/// `module` and everything it needs, dependencies first, as paths relative to `modules_dir`,
/// from a `modules.dep` text.
pub fn with_dependencies(modules_dep: &str, module: &str) -> Vec<String> {
    let deps: std::collections::HashMap<String, Vec<String>> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim().to_owned(), d.split_whitespace().map(str::to_owned).collect()))
        .collect();
    let wanted = deps.keys().find(|path| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split('.').next() == Some(module) || file.split('.').next() == Some(&module.replace('-', "_"))
    });
    let mut order = Vec::new();
    fn visit(path: &str, deps: &std::collections::HashMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|p| p == path) {
            return;
        }
        for dep in deps.get(path).into_iter().flatten() {
            visit(dep, deps, order);
        }
        order.push(path.to_owned());
    }
    if let Some(path) = wanted {
        visit(path, &deps, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_concrete_image_package_is_read_from_apt_cache() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(parse_depends(text).as_deref(), Some("linux-image-6.1.0-56-cloud-amd64"));
        assert_eq!(parse_depends("nothing here"), None);
    }

    #[test]
    fn dependencies_come_before_the_module() {
        let dep = "kernel/fs/overlay.ko: kernel/lib/a.ko kernel/lib/b.ko\nkernel/lib/b.ko: kernel/lib/a.ko\nkernel/lib/a.ko:\nkernel/drivers/block/loop.ko:\n";
        assert_eq!(
            with_dependencies(dep, "overlay"),
            ["kernel/lib/a.ko", "kernel/lib/b.ko", "kernel/fs/overlay.ko"]
        );
        assert_eq!(with_dependencies(dep, "loop"), ["kernel/drivers/block/loop.ko"]);
        assert!(with_dependencies(dep, "missing").is_empty());
    }
}
