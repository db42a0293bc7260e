//! CPU and memory per service: from its cgroup (`cpu.stat`, `memory.current`) when it has a
//! locald cgroup of its own, else summed over its process group from `/proc/<pid>/stat` and
//! `statm`. One scan of `/proc` serves every service of a snapshot.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

/// A service's totals at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    /// CPU time used so far, microseconds.
    pub(crate) cpu_micros: u64,
    pub(crate) memory_bytes: u64,
}

/// Totals of every process group on the machine, by group id, read once.
pub(crate) struct ProcScan {
    by_group: HashMap<u32, Usage>,
}

impl ProcScan {
    pub(crate) fn read() -> Self {
        let ticks = clock_ticks();
        let page = page_size();
        let mut by_group: HashMap<u32, Usage> = HashMap::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Some((group, cpu_ticks)) = stat(pid) else { continue };
            let resident = statm_resident(pid).unwrap_or(0);
            let usage = by_group.entry(group).or_default();
            usage.cpu_micros += cpu_ticks * 1_000_000 / ticks;
            usage.memory_bytes += resident * page;
        }
        Self { by_group }
    }

    /// The usage of the service whose main process is `pid`.
    pub(crate) fn usage(&self, pid: u32) -> Option<Usage> {
        cgroup_usage(pid).or_else(|| {
            // The service leads its own process group; a process that left it is only counted
            // through a cgroup.
            let group = stat(pid)?.0;
            self.by_group.get(&group).copied()
        })
    }
}

/// Process group and user+system CPU ticks, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12).
    let group = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((group, utime + stime))
}

fn statm_resident(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/statm")).ok()?.split(' ').nth(1)?.parse().ok()
}

/// From the service's own cgroup, when it is in one locald made (`…/locald-<owner>/<name>`).
fn cgroup_usage(pid: u32) -> Option<Usage> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let parent = path.rsplit('/').nth(1)?;
    if !parent.starts_with("locald-") {
        return None;
    }
    let dir = PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let cpu = fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let cpu_micros = cpu.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
    let memory_bytes = fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
    Some(Usage { cpu_micros, memory_bytes })
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100, |t| t.max(1) as u64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_group_has_memory_and_cpu() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let usage = ProcScan::read().usage(pid).expect("our group");
        assert!(usage.memory_bytes > 1 << 20, "{usage:?}");
    }
}
