//! `debug port`: who listens on a TCP port. Root is needed to find the holder in other users' fd
//! tables, but which process of another user holds a socket is theirs to know: for the caller's
//! own processes the pid, uid and command name are printed, for anyone else's only the uid.
//! Everything printed is read as the caller after root is dropped, so `hidepid` still hides.

use std::collections::BTreeSet;
use std::fs;

use locald_shim_protocol::ShimError;
use locald_shim_protocol::protocol::DebugPortRequest;

use crate::privilege::Root;

const TCP_LISTEN: &str = "0A";

pub fn run(root: Root, request: &DebugPortRequest) -> Result<(), ShimError> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, request.port));
        }
    }
    let mut owners = Vec::new();
    if !inodes.is_empty() {
        let procs = fs::read_dir("/proc").map_err(|e| ShimError::os("read /proc", e))?;
        for entry in procs.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if holds_any(pid, &inodes) {
                owners.push(pid);
            }
        }
    }
    // Everything is collected; what is printed is read with the caller's own rights.
    let caller = root.drop_to_caller()?.uid.as_raw();
    let mut others = BTreeSet::new();
    for pid in owners {
        let Some(uid) = real_uid(pid) else { continue };
        if uid != caller {
            others.insert(uid);
            continue;
        }
        let Some(comm) = command_name(pid) else { continue };
        println!("pid={pid} uid={uid} comm={comm}");
    }
    for uid in others {
        println!("uid={uid}");
    }
    Ok(())
}

/// Socket inodes in state LISTEN on `port` in a `/proc/net/tcp{,6}` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            (local_port == port && *fields.get(3)? == TCP_LISTEN && inode != 0).then_some(inode)
        })
        .collect()
}

fn holds_any(pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .ok()
            .and_then(|t| socket_inode(&t.to_string_lossy()))
            .is_some_and(|i| inodes.contains(&i))
    })
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn real_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The command name, with anything but printable ASCII replaced: it is chosen by the process
/// (prctl PR_SET_NAME) and must not inject lines into our output.
fn command_name(pid: u32) -> Option<String> {
    let comm = fs::read(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    Some(comm.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0050 0100007F:D4C2 01 00000000:00000000 00:00000000 00000000  1000        0 5678 1 0000000000000000 20 4 30 10 -1
   2: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 9999 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_only_listening_sockets_on_the_port() {
        assert_eq!(listening_inodes(TABLE, 80), vec![1234]);
        assert_eq!(listening_inodes(TABLE, 443), vec![9999]);
        assert!(listening_inodes(TABLE, 8080).is_empty());
        assert!(listening_inodes("garbage\nmore garbage", 80).is_empty());
    }

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
        assert_eq!(socket_inode("/etc/passwd"), None);
    }
}
