//! Static checks of the shim that no unit test can make: what it links, and that it builds for
//! macOS.

use anyhow::bail;

use crate::util;

/// Crates that must never reach the setuid binary (DESIGN §3): async runtimes, HTTP, TLS, TOML.
const FORBIDDEN_IN_SHIM: &[&str] = &["tokio", "hyper", "rustls", "toml", "openssl", "ring"];
const MAC_TARGETS: &[&str] = &["aarch64-apple-darwin", "x86_64-apple-darwin"];

pub fn run() -> anyhow::Result<()> {
    shim_dependencies()?;
    shim_builds_for_macos()?;
    Ok(())
}

fn shim_dependencies() -> anyhow::Result<()> {
    let tree = util::output(util::cargo_command().args([
        "tree",
        "-p",
        "locald-shim",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--target",
        "all",
    ]))?;
    let found = forbidden(&tree);
    if !found.is_empty() {
        bail!("locald-shim must not depend on {found:?}; its dependency tree:\n{tree}");
    }
    eprintln!("xtask: locald-shim depends on none of {FORBIDDEN_IN_SHIM:?}");
    Ok(())
}

fn forbidden(tree: &str) -> Vec<String> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN_IN_SHIM.iter().any(|f| name == f || name.starts_with(&format!("{f}-"))))
        .map(str::to_owned)
        .collect()
}

fn shim_builds_for_macos() -> anyhow::Result<()> {
    let installed =
        util::output(std::process::Command::new("rustup").args(["target", "list", "--installed"]))?;
    for target in MAC_TARGETS {
        if !installed.lines().any(|l| l.trim() == *target) {
            util::run(std::process::Command::new("rustup").args(["target", "add", target]))?;
        }
        util::cargo(&["check", "-p", "locald-shim", "--target", target])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::forbidden;

    #[test]
    fn forbidden_crates_are_spotted_in_a_tree() {
        let tree = "locald-shim v0.1.0\nclap v4.5.0\ntokio v1.0.0 (*)\ntokio-util v0.7.0\ntomlette v1\n";
        assert_eq!(forbidden(tree), vec!["tokio", "tokio-util"]);
        assert!(forbidden("locald-shim v0.1.0\nclap v4\nlibc v0.2\n").is_empty());
    }
}
