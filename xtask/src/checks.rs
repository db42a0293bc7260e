//! Static checks that no unit test can make: what the shim links, that it builds for macOS, and
//! that the daemon and CLI type-check (with clippy) for macOS.

use anyhow::bail;

use crate::util;

/// Crates that must never reach the setuid binary (DESIGN §3): async runtimes, HTTP, TLS, TOML.
const FORBIDDEN_IN_SHIM: &[&str] = &["tokio", "hyper", "rustls", "toml", "openssl", "ring"];
const MAC_TARGETS: &[&str] = &["aarch64-apple-darwin", "x86_64-apple-darwin"];

pub fn run() -> anyhow::Result<()> {
    shim_dependencies()?;
    shim_builds_for_macos()?;
    locald_checks_for_macos()?;
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

/// The macOS build of locald (daemon, CLI and their tests) passes clippy. ring's C and assembly
/// need Apple's toolchain, which Linux does not have, so its build script is handed a compiler
/// that writes empty objects: enough for `check`, which never links. What this cannot show is
/// that the binary links and runs on a Mac; `nix build` on one does.
fn locald_checks_for_macos() -> anyhow::Result<()> {
    const MAC_CHECKED: &[&str] = &["locald", "locald-daemon", "locald-proxy", "locald-core", "locald-shim"];
    let stub = crate::util::target_dir().join("xtask-macos-cc");
    std::fs::create_dir_all(&stub)?;
    write_script(
        &stub.join("cc"),
        "out=\"\"\nwhile [ $# -gt 0 ]; do\n  case $1 in -o) out=$2; shift ;; -o*) out=${1#-o} ;; esac\n  shift\ndone\n\
         [ -z \"$out\" ] || : > \"$out\"\n",
    )?;
    write_script(&stub.join("ar"), "[ $# -lt 2 ] || printf '!<arch>\\n' > \"$2\"\n")?;
    for target in MAC_TARGETS {
        let var = target.replace('-', "_");
        util::run(
            util::cargo_command()
                .args(["clippy", "--all-targets", "--target", target])
                .args(MAC_CHECKED.iter().flat_map(|package| ["-p", package]))
                .args(["--", "-D", "warnings"])
                .env(format!("CC_{var}"), stub.join("cc"))
                .env(format!("AR_{var}"), stub.join("ar")),
        )?;
    }
    eprintln!("xtask: {} pass clippy for {MAC_TARGETS:?}", MAC_CHECKED.join(", "));
    Ok(())
}

fn write_script(path: &std::path::Path, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n# Type-checking only: see locald_checks_for_macos.\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
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
