//! `cargo xtask vm [SCENARIO...]`: boots a stock Debian kernel under QEMU with a busybox
//! initramfs that holds static builds of locald, the shim and the test helper, runs
//! `vm-tests/scenarios/*.sh` inside (cgroup v2 with all controllers, loop devices, namespaces —
//! what the host cannot show), and fails unless every scenario reported a pass.

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::{deps, util};

const MUSL: &str = "x86_64-unknown-linux-musl";
/// A scenario the harness adds to every run and expects to fail: proof that a failing scenario
/// is reported as one, so a pass can be trusted.
const CANARY: &str = "zz-harness-canary-must-fail";

pub fn run(selected: &[String]) -> anyhow::Result<()> {
    // crun and runc are the peers of the bench-container-start scenario, getcap (libcap2-bin)
    // reads the ports-only shim's capability, newuidmap/newgidmap (uidmap) map container-subid's
    // unpack helper (copied in with their libraries by the initramfs builder).
    deps::ensure(&[
        "qemu-system-x86",
        "busybox-static",
        "cpio",
        "musl-tools",
        "kmod",
        "crun",
        "runc",
        "libcap2-bin",
        "uidmap",
    ])?;
    ensure_musl_target()?;
    let root = util::workspace_root();
    let target = util::target_dir();
    let work = target.join("vm");
    std::fs::create_dir_all(&work)?;

    let kernel = kernel::obtain(&target.join("vm-cache"))?;
    util::cargo(&[
        "build",
        "--quiet",
        "--release",
        "--target",
        MUSL,
        "-p",
        "locald",
        "-p",
        "locald-shim",
        "-p",
        "locald-tests",
        "--bins",
    ])?;
    let bins = target.join(MUSL).join("release");

    let mut scenarios = scenario_files(&root.join("vm-tests/scenarios"), selected)?;
    let canary = work.join(format!("{CANARY}.sh"));
    std::fs::write(
        &canary,
        "# run-as: root\n# Must fail: the harness checks that failures are reported.\nexit 3\n",
    )?;
    scenarios.push(canary);

    let initrd = initramfs::build(&work, &root.join("vm-tests/init.sh"), &bins, &scenarios, &kernel)?;
    let accel = qemu::choose_accel(&kernel.vmlinuz, &initrd, &work)?;
    let log = work.join("serial.log");
    let output = qemu::boot(&kernel.vmlinuz, &initrd, accel, &log, qemu::SUITE_TIMEOUT)?;

    let expected: Vec<String> = scenarios.iter().map(|s| report::name(s)).collect();
    let results = report::parse(&output);
    print!("{}", report::summary(&results, &expected));
    println!("xtask vm: serial log in {}", log.display());
    report::verdict(&results, &expected, CANARY)
        .map_err(|e| anyhow::anyhow!("{e} (serial log: {})", log.display()))
}

fn ensure_musl_target() -> anyhow::Result<()> {
    let installed =
        util::output(std::process::Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == MUSL) {
        util::run(std::process::Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    Ok(())
}

fn scenario_files(dir: &std::path::Path, selected: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    all.sort();
    if selected.is_empty() {
        // Opt-in scenarios (benchmarks) run only when named.
        let mut default = Vec::new();
        for path in all {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            if !is_opt_in(&text) {
                default.push(path);
            }
        }
        return Ok(default);
    }
    let mut chosen = Vec::new();
    for name in selected {
        match all.iter().find(|p| report::name(p) == *name) {
            Some(path) => chosen.push(path.clone()),
            None => bail!("no scenario {name:?} in {}", dir.display()),
        }
    }
    Ok(chosen)
}

/// The header line `# opt-in: yes` among a scenario's leading comments.
fn is_opt_in(script: &str) -> bool {
    script.lines().take_while(|l| l.starts_with('#')).any(|l| l.trim_end() == "# opt-in: yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_header_line_makes_a_scenario_opt_in() {
        assert!(is_opt_in("# run-as: root\n# opt-in: yes\n# A benchmark.\necho hi\n"));
        assert!(!is_opt_in("# run-as: root\n# A test.\necho hi\n"));
        assert!(!is_opt_in("# run-as: root\necho '# opt-in: yes'\n# opt-in: yes\n"));
    }
}
