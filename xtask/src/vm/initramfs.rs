//! The guest's whole filesystem: busybox, the init script, the static binaries, the scenarios
//! and the kernel modules they need, packed as a gzipped newc cpio owned by root. Host programs
//! the guest runs as they are (the container benchmark's peers, getcap) come with the shared
//! libraries and ELF interpreter `ldd` names, each at its host path.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::kernel::{self, Kernel};
use crate::util;

const BINARIES: &[&str] = &["locald", "locald-shim", "shim-caller", "proxy-probe"];
/// Debian's runc and crun (packages of the same names), for `bench-container-start`; getcap
/// (libcap2-bin), for `ports-only` to read the shim's file capability as the kernel stores it;
/// newuidmap and newgidmap (uidmap), for `container-subid`'s unpack helper (made setuid root
/// again by init.sh: copies here lose the bit).
pub const HOST_PROGRAMS: &[&str] =
    &["/usr/sbin/runc", "/usr/bin/crun", "/usr/sbin/getcap", "/usr/bin/newuidmap", "/usr/bin/newgidmap"];

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
    for program in HOST_PROGRAMS {
        add_host_program(&staging, Path::new(program))?;
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

/// `program` and everything its dynamic loader will map, at the same absolute paths in `staging`
/// (the guest has no ld.so.cache; glibc's built-in search path finds the libraries there).
fn add_host_program(staging: &Path, program: &Path) -> anyhow::Result<()> {
    let listing = util::output(Command::new("ldd").arg(program)).with_context(|| {
        format!("{} is needed in the VM (its Debian package is missing?)", program.display())
    })?;
    let mut files = ldd_paths(&listing).with_context(|| format!("ldd {}", program.display()))?;
    files.insert(program.to_owned());
    for file in files {
        let inside = staging.join(file.strip_prefix("/").context("ldd printed a relative path")?);
        fs::create_dir_all(inside.parent().context("no parent")?)?;
        // The source's mode: the interpreter must stay executable. fs::copy follows symlinks
        // (`/lib` is one on merged-/usr hosts), so the guest gets a plain file at each path.
        let mode = fs::metadata(&file).with_context(|| format!("{}", file.display()))?.permissions().mode();
        copy(&file, &inside, mode & 0o7777 & !0o6000)?;
    }
    Ok(())
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// the interpreter line `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file. A library
/// ldd could not find is an error: the program would not start in the guest.
pub fn ldd_paths(listing: &str) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut paths = BTreeSet::new();
    for line in listing.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, target)) if target.trim() == "not found" => {
                anyhow::bail!("{} not found", name.trim())
            }
            Some((_, target)) => target.trim(),
            None => line,
        };
        if let Some(path) = path.split_whitespace().next().filter(|p| p.starts_with('/')) {
            paths.insert(PathBuf::from(path));
        }
    }
    Ok(paths)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::copy(from, to).with_context(|| format!("copy {} -> {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_the_libraries_and_the_interpreter() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd4f5f2000)
\tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f0a1c2a1000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1c0bf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c2d8000)
";
        let paths: Vec<PathBuf> = ldd_paths(listing).unwrap().into_iter().collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libseccomp.so.2",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(ldd_paths("\tnot a dynamic executable\n").unwrap().is_empty());
        assert!(ldd_paths("\tstatically linked\n").unwrap().is_empty());
        assert!(ldd_paths("\tlibmissing.so.1 => not found\n").is_err(), "a missing library fails the build");
    }
}
