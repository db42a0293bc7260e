//! The TCP ports a service's own processes listen on, read from `/proc`: the members of its
//! process group, the socket inodes among their open fds, and the listening sockets of their
//! network namespace with those inodes. This is how a server that ignores `$PORT` (a framework
//! with its own default, 3000 or 5173) is found and routed to anyway. Only the daemon's own
//! user's processes are readable, which is all it asks about.

use std::collections::BTreeSet;

/// The ports processes of group `pgid` listen on, lowest first; empty off Linux or when none.
pub fn group_ports(pgid: u32) -> Vec<u16> {
    ports_of(&group_members(pgid))
}

#[cfg(target_os = "linux")]
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_group(*pid) == Some(pgid))
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn group_members(_pgid: u32) -> Vec<u32> {
    Vec::new()
}

/// Field 5 of `/proc/<pid>/stat`, counted after the command name's closing parenthesis (the
/// name itself may hold spaces and parentheses).
#[cfg(target_os = "linux")]
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // state, ppid, pgrp
    after.split_whitespace().nth(2)?.parse().ok()
}

/// The listening ports among the sockets `pids` hold.
pub fn ports_of(pids: &[u32]) -> Vec<u16> {
    let mut inodes = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.extend(inode.parse::<u64>().ok());
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut ports = BTreeSet::new();
    // Processes of one group normally share a network namespace; reading each one's view
    // costs little and covers those that do not.
    let mut seen_namespaces = BTreeSet::new();
    for pid in pids {
        let namespace = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if !seen_namespaces.insert(namespace) {
            continue;
        }
        for table in ["tcp", "tcp6"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
            ports.extend(listening(&text).filter(|(_, inode)| inodes.contains(inode)).map(|(port, _)| port));
        }
    }
    ports.into_iter().collect()
}

/// `(local port, inode)` of each socket in LISTEN state (`st` 0A) of a `/proc/net/tcp{,6}` table.
fn listening(table: &str) -> impl Iterator<Item = (u16, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((port, inode))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_line_gives_port_and_inode_of_listeners_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0\n\
           1: 0100007F:0BB9 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0\n";
        assert_eq!(listening(table).collect::<Vec<_>>(), [(3000, 4242)]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_a_port_this_process_listens_on_and_not_one_it_only_connects_from() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let ports = ports_of(&[std::process::id()]);
        assert!(ports.contains(&port), "{port} in {ports:?}");
        assert!(!ports.contains(&client.local_addr().unwrap().port()), "a client socket is not listening");
        let me = std::process::id();
        assert_eq!(
            process_group(me),
            Some(nix::unistd::getpgrp().as_raw() as u32),
            "the group read from /proc/{me}/stat"
        );
    }
}
