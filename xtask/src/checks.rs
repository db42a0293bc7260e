//! Static checks that no unit test can make: which crate depends on which (the rules are in
//! `deps.rs`), that the shim builds for macOS, and that the daemon and CLI type-check (with
//! clippy) for macOS.

mod deps;

use std::collections::BTreeMap;

use anyhow::bail;

use crate::util;

const MAC_TARGETS: &[&str] = &["aarch64-apple-darwin", "x86_64-apple-darwin"];
/// The platforms locald ships for on Linux (musl: the VM suite's static build). Dependencies
/// can differ per platform, so the rules are checked on each, and on the host.
const LINUX_TARGETS: &[&str] =
    &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "x86_64-unknown-linux-musl"];

pub fn run() -> anyhow::Result<()> {
    crate_dependencies()?;
    shim_builds_for_macos()?;
    locald_checks_for_macos()?;
    Ok(())
}

fn crate_dependencies() -> anyhow::Result<()> {
    let host = host_target()?;
    let mut targets = vec![host.as_str()];
    targets.extend(LINUX_TARGETS.iter().filter(|t| **t != host));
    // One line per problem, with the platforms it shows on when that is not all of them.
    let mut found: BTreeMap<deps::Problem, Vec<&str>> = BTreeMap::new();
    for target in &targets {
        let json = util::output(util::cargo_command().args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            target,
        ]))?;
        for problem in deps::violations(&deps::Graph::from_metadata(&json)?, deps::RULES) {
            found.entry(problem).or_default().push(target);
        }
    }
    if found.is_empty() {
        eprintln!("xtask: the {} dependency rules hold on {targets:?}", deps::RULES.len());
        return Ok(());
    }
    for (problem, on) in &found {
        if on.len() == targets.len() {
            eprintln!("xtask: {problem}");
        } else {
            eprintln!("xtask: {problem} [on {}]", on.join(", "));
        }
    }
    let count = match found.len() {
        1 => "a dependency problem".to_owned(),
        n => format!("{n} dependency problems"),
    };
    bail!("{count}; the rules are in xtask/src/checks/deps.rs")
}

fn host_target() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = util::output(std::process::Command::new(rustc).arg("-vV"))?;
    match version.lines().find_map(|l| l.strip_prefix("host: ")) {
        Some(host) => Ok(host.trim().to_owned()),
        None => bail!("rustc -vV names no host target:\n{version}"),
    }
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
