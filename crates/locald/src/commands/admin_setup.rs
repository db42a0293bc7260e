//! `sudo locald admin setup [--ports-only]`: install the shim that was built with this `locald`,
//! setuid root, or (`--ports-only`) not setuid with only the file capability
//! `cap_net_bind_service=ep`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use locald_daemon::shim::filecap::{self, FileCaps};
use locald_daemon::shim::{SHIM_NAME, Shim, check_dir_chain};
use locald_shim_protocol::ShimMode;

/// The two installs: file mode and file capability, and the mode the shim must then report.
#[derive(Debug, Clone, Copy)]
struct Install {
    mode: ShimMode,
    permissions: u32,
    capability: Option<FileCaps>,
}

impl Install {
    fn new(ports_only: bool) -> Self {
        match ports_only {
            false => Self { mode: ShimMode::Setuid, permissions: 0o4755, capability: None },
            true => Self {
                mode: ShimMode::Capabilities,
                permissions: 0o755,
                capability: Some(FileCaps::BIND_ONLY),
            },
        }
    }

    fn describe(self) -> String {
        match self.capability {
            None => format!("root:root {:o}", self.permissions),
            Some(_) => format!("root:root {:o}, cap_net_bind_service=ep", self.permissions),
        }
    }

    /// Whether `target` is exactly this install of `source` already.
    fn holds(self, target: &Path, source: &Path) -> anyhow::Result<bool> {
        let Ok(meta) = fs::symlink_metadata(target) else { return Ok(false) };
        let same_bytes = fs::read(target).ok() == Some(fs::read(source)?);
        let same_mode = meta.mode() & 0o7777 == self.permissions && meta.uid() == 0 && meta.gid() == 0;
        let same_capability = filecap::read(target).ok().flatten() == self.capability;
        Ok(same_bytes && same_mode && same_capability && Shim::at(target).is_ok())
    }
}

pub fn run(dest: &Path, ports_only: bool) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        let flag = if ports_only { " --ports-only" } else { "" };
        bail!(
            "admin setup installs a privileged program and needs root: run `sudo locald admin setup{flag}`"
        );
    }
    if !dest.is_absolute() {
        bail!("--dest {} must be an absolute path", dest.display());
    }
    let install = Install::new(ports_only);
    let source = built_shim()?;
    create_dir_chain(dest)?;
    check_dir_chain(dest).with_context(|| format!("refusing to install into {}", dest.display()))?;

    let target = dest.join(SHIM_NAME);
    if install.holds(&target, &source)? {
        println!("{} is already installed and current ({})", target.display(), install.describe());
        return Ok(ExitCode::SUCCESS);
    }
    install_atomically(install, &source, dest, &target)?;
    let shim = Shim::at(&target).context("installed shim failed the version handshake")?;
    // Run as root the shim reports `setuid` whatever its file holds (euid 0 is root's own
    // privilege), so the install is checked by what the file carries.
    let carried = filecap::read(&target).ok().flatten();
    if carried != install.capability {
        bail!("installed {} but its file capability reads back as {carried:?}", target.display());
    }
    println!(
        "installed {} ({}, {} mode) from {}; handshake: {}",
        shim.path().display(),
        install.describe(),
        install.mode,
        source.display(),
        locald_shim_protocol::version_line(),
    );
    Ok(ExitCode::SUCCESS)
}

/// The shim is built next to `locald` (same cargo target dir, same package output).
fn built_shim() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running locald binary")?;
    let shim = exe.with_file_name(SHIM_NAME);
    if !shim.is_file() {
        bail!("no {SHIM_NAME} next to {}: build it with `cargo build --bins`", exe.display());
    }
    Ok(shim)
}

fn create_dir_chain(dest: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755);
    builder.create(dest).with_context(|| format!("cannot create {}", dest.display()))
}

/// Copy to a temporary name in the same directory, make it root:root with the install's mode
/// and capability, fsync, rename: at no moment is a half-written or wrongly-permissioned shim at
/// the final path, and switching between the two installs replaces one with the other at once.
fn install_atomically(install: Install, source: &Path, dest: &Path, target: &Path) -> anyhow::Result<()> {
    let temp = dest.join(format!(".{SHIM_NAME}.tmp-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o700).open(&temp)?;
        io::copy(&mut File::open(source)?, &mut out)?;
        std::os::unix::fs::fchown(&out, Some(0), Some(0))?;
        // chmod and the capability after chown: chown clears the setuid bit and the capability.
        out.set_permissions(fs::Permissions::from_mode(install.permissions))?;
        if let Some(capability) = install.capability {
            xattr::FileExt::set_xattr(&out, filecap::ATTRIBUTE, &capability.to_v2_bytes())?;
        }
        out.sync_all()?;
        fs::rename(&temp, target)?;
        File::open(dest)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot install {}", target.display()))
}
