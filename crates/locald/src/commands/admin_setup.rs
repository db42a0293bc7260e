//! `sudo locald admin setup`: install the shim that was built with this `locald`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use locald_daemon::shim::{SHIM_NAME, Shim, check_dir_chain};

pub fn run(dest: &Path) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("admin setup installs a setuid-root program and needs root: run `sudo locald admin setup`");
    }
    if !dest.is_absolute() {
        bail!("--dest {} must be an absolute path", dest.display());
    }
    let source = built_shim()?;
    create_dir_chain(dest)?;
    check_dir_chain(dest).with_context(|| format!("refusing to install into {}", dest.display()))?;

    let target = dest.join(SHIM_NAME);
    let unchanged = fs::read(&target).ok() == Some(fs::read(&source)?) && Shim::at(&target).is_ok();
    if unchanged {
        println!("{} is already installed and current", target.display());
        return Ok(ExitCode::SUCCESS);
    }
    install_atomically(&source, dest, &target)?;
    let shim = Shim::at(&target).context("installed shim failed the version handshake")?;
    println!(
        "installed {} (root:root 4755) from {}; handshake: {}",
        shim.path().display(),
        source.display(),
        locald_shim_protocol::version_line()
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

/// Copy to a temporary name in the same directory, make it root:root 4755, fsync, rename: at no
/// moment is a half-written or wrongly-permissioned shim at the final path.
fn install_atomically(source: &Path, dest: &Path, target: &Path) -> anyhow::Result<()> {
    let temp = dest.join(format!(".{SHIM_NAME}.tmp-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o700).open(&temp)?;
        io::copy(&mut File::open(source)?, &mut out)?;
        std::os::unix::fs::fchown(&out, Some(0), Some(0))?;
        // chmod after chown: chown clears the setuid bit.
        out.set_permissions(fs::Permissions::from_mode(0o4755))?;
        out.sync_all()?;
        fs::rename(&temp, target)?;
        File::open(dest)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot install {}", target.display()))
}
