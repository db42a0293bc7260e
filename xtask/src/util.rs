use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
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
    fn the_target_dir_follows_cargo_target_dir() {
        assert_eq!(target_dir_from(None), workspace_root().join("target"));
        assert_eq!(target_dir_from(Some("".into())), workspace_root().join("target"));
        assert_eq!(target_dir_from(Some("/tmp/t".into())), PathBuf::from("/tmp/t"));
        assert_eq!(target_dir_from(Some("out".into())), workspace_root().join("out"));
    }
}
