//! Booting the guest: KVM only when a probe boot proves it works here (on some hosts /dev/kvm
//! opens yet guests fail or hang), TCG otherwise; the serial console is the only channel.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The whole suite under TCG on 2 cores takes well under this.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(600);
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_MARKER: &str = "LOCALD-VM-PROBE-OK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

pub fn choose_accel(vmlinuz: &Path, initrd: &Path, work: &Path) -> anyhow::Result<Accel> {
    let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !usable {
        eprintln!("xtask vm: /dev/kvm is not usable, using TCG");
        return Ok(Accel::Tcg);
    }
    let log = work.join("kvm-probe.log");
    let output = run(vmlinuz, initrd, Accel::Kvm, " locald.probe=1", &log, PROBE_TIMEOUT)?;
    Ok(decide(&output))
}

/// KVM only if the probe guest got as far as printing its marker.
pub fn decide(probe_output: &str) -> Accel {
    if probe_output.contains(PROBE_MARKER) && !probe_output.contains("KVM internal error") {
        eprintln!("xtask vm: KVM probe boot succeeded, using KVM");
        Accel::Kvm
    } else {
        eprintln!("xtask vm: KVM probe boot failed or hung, using TCG");
        Accel::Tcg
    }
}

pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    accel: Accel,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    run(vmlinuz, initrd, accel, "", log, timeout)
}

/// Runs the guest to power-off (or the timeout) and returns everything it printed, also
/// written to `log`.
fn run(
    vmlinuz: &Path,
    initrd: &Path,
    accel: Accel,
    extra: &str,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-m", "1024", "-smp", "2", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 loglevel=4{extra}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match accel {
        Accel::Kvm => command.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => command.args(["-accel", "tcg", "-cpu", "max"]),
    };
    let started = Instant::now();
    let mut child = command.spawn().context("starting qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err);
        out.extend(err);
        out
    });
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut output = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    if timed_out {
        output.push_str(&format!("\nLOCALD-VM-TIMEOUT after {}s\n", timeout.as_secs()));
    }
    std::fs::write(log, &output)?;
    eprintln!("xtask vm: guest ({accel:?}) ran {:.1}s", started.elapsed().as_secs_f64());
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_is_used_only_after_a_probe_that_reached_init() {
        assert_eq!(decide("Linux version 6.1\nLOCALD-VM-PROBE-OK\n"), Accel::Kvm);
        assert_eq!(decide("KVM internal error. Suberror: 1\n"), Accel::Tcg);
        assert_eq!(decide("LOCALD-VM-PROBE-OK\nKVM internal error\n"), Accel::Tcg);
        assert_eq!(decide("LOCALD-VM-TIMEOUT after 30s\n"), Accel::Tcg);
    }
}
