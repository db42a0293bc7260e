//! System packages the suites need, installed on a fresh Debian/Ubuntu machine when run as root.

use std::process::Command;

use anyhow::bail;

use crate::util;

/// Packages the privileged suite uses: a C compiler for the LD_PRELOAD probe, useradd for the
/// throwaway users, mkfs.ext4 for the loop-mount images, a static busybox for container rootfs,
/// openssl to check the CA; for the packaging suite (tests/tests/packaging.rs) Nix to parse the
/// `.nix` files and read the flake's lock offline, and shellcheck for every shell script.
/// Also python3 (the quickstart example and some CLI suites' services), for the proxy suites
/// curl, certutil (libnss3-tools) and chromium (the browser test); nginx, wrk and h2load
/// (nghttp2-client) for `bench/proxy`; for the registry suites (tests/tests/registry_*.rs)
/// Debian's docker-registry, skopeo and umoci.
pub const TEST_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "passwd",
    "util-linux",
    "e2fsprogs",
    // getcap, reading the --ports-only shim's file capability from outside (privileged_capabilities).
    "libcap2-bin",
    "busybox-static",
    "openssl",
    "nix-bin",
    "shellcheck",
    "python3",
    "curl",
    "libnss3-tools",
    "chromium",
    "nginx",
    "wrk",
    "nghttp2-client",
    "docker-registry",
    "skopeo",
    "umoci",
    // newuidmap/newgidmap: image layers unpacked with their owners (privileged_image_user).
    "uidmap",
    // The PostgreSQL image built by the suite, and pg_isready/psql to talk to it
    // (privileged_postgres).
    "mmdebstrap",
    "postgresql-client",
];

pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing Debian packages {missing:?}: install them with `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").args(["update", "-qq"]))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
