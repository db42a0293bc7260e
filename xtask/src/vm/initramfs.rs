//! The guest's whole filesystem: busybox, the init script, the static binaries, the scenarios
//! and the kernel modules they need, packed as a gzipped newc cpio owned by root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::kernel::{self, Kernel};
use crate::util;

const BINARIES: &[&str] = &["locald", "locald-shim", "shim-caller"];

pub fn build(
    work: &Path,
    init: &Path,
    bins: &Path,
    scenarios: &[PathBuf],
    kernel: &Kernel,
) -> anyhow::Result<PathBuf> {
    let staging = work.join("initramfs");
    let _ = fs::remove_dir_all(&staging);
    for dir in [
        "bin",
        "sbin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "home",
        "opt/locald",
        "scenarios",
        "lib/modules",
    ] {
        fs::create_dir_all(staging.join(dir))?;
    }
    copy(Path::new("/bin/busybox"), &staging.join("bin/busybox"), 0o755)?;
    copy(init, &staging.join("init"), 0o755)?;
    for name in BINARIES {
        copy(&bins.join(name), &staging.join("opt/locald").join(name), 0o755)?;
    }
    for scenario in scenarios {
        copy(
            scenario,
            &staging.join("scenarios").join(scenario.file_name().context("scenario name")?),
            0o644,
        )?;
    }
    let modules_dep = fs::read_to_string(kernel.modules_dir.join("modules.dep")).context("modules.dep")?;
    let mut order = String::new();
    for module in kernel::MODULES {
        let paths = kernel::with_dependencies(&modules_dep, module);
        anyhow::ensure!(!paths.is_empty(), "module {module} is not in kernel {}", kernel.version);
        for path in paths {
            let name = Path::new(&path).file_name().context("module name")?.to_string_lossy().into_owned();
            copy(&kernel.modules_dir.join(&path), &staging.join("lib/modules").join(&name), 0o644)?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    fs::write(staging.join("lib/modules/order"), order)?;

    let image = work.join("initrd.img");
    let pack = format!("find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > '{}'", image.display());
    util::run(Command::new("sh").arg("-c").arg(pack).current_dir(&staging))?;
    Ok(image)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::copy(from, to).with_context(|| format!("copy {} -> {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}
