use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The checkout this run was started in, found at run time: two clones sharing one
/// `CARGO_TARGET_DIR` share the xtask binary, so a path baked in at build time would name
/// whichever clone built it last. `cargo run` sets `CARGO_MANIFEST_DIR` for the process it
/// starts; without it (the binary run directly), the nearest ancestor of the working directory
/// that holds `xtask/Cargo.toml`.
pub fn workspace_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        let cwd = std::env::current_dir().expect("current directory");
        root_from(manifest_dir.as_deref(), &cwd).expect(
            "run cargo xtask inside a locald checkout (no xtask/Cargo.toml above the current directory)",
        )
    })
    .clone()
}

fn root_from(manifest_dir: Option<&std::path::Path>, cwd: &std::path::Path) -> Option<PathBuf> {
    if let Some(dir) = manifest_dir
        && dir.join("Cargo.toml").is_file()
        && let Some(root) = dir.parent()
        && root.join("xtask/Cargo.toml").is_file()
    {
        return Some(root.to_owned());
    }
    cwd.ancestors().find(|dir| dir.join("xtask/Cargo.toml").is_file()).map(std::path::Path::to_owned)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set (a relative one is taken from the
/// workspace root, where xtask runs cargo), `target/` otherwise. Everything xtask builds or caches lives there.
pub fn target_dir() -> PathBuf {
    target_dir_from(std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_from(value: Option<std::ffi::OsString>) -> PathBuf {
    match value {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

pub fn cargo_command() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(cargo_command().args(args))
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_checkout_it_runs_in_not_the_one_it_was_built_in() {
        let base = std::env::temp_dir().join(format!("xtask-root-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        for clone in [&a, &b] {
            std::fs::create_dir_all(clone.join("xtask/src")).unwrap();
            std::fs::write(clone.join("xtask/Cargo.toml"), "").unwrap();
        }
        // `cargo run` in clone b names b's xtask, whoever built the binary.
        assert_eq!(root_from(Some(&b.join("xtask")), &a), Some(b.clone()));
        // Run directly from a subdirectory of clone a.
        assert_eq!(root_from(None, &a.join("xtask/src")), Some(a.clone()));
        assert_eq!(root_from(None, &base), None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_target_dir_follows_cargo_target_dir() {
        assert_eq!(target_dir_from(None), workspace_root().join("target"));
        assert_eq!(target_dir_from(Some("".into())), workspace_root().join("target"));
        assert_eq!(target_dir_from(Some("/tmp/t".into())), PathBuf::from("/tmp/t"));
        assert_eq!(target_dir_from(Some("out".into())), workspace_root().join("out"));
    }
}
