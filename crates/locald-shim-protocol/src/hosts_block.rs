//! The caller's block in `/etc/hosts`: the one rewrite of its content (every other byte kept),
//! and whether the file is a mount point (a container's bind-mounted `/etc/hosts`, which rename
//! cannot replace: `EBUSY`). Used by the shim's `admin sync-hosts` and by a daemon running as
//! root, which writes the file itself.

use std::path::Path;

use crate::mountinfo;

/// Whether `path` is itself a mount point in this mount table (`/proc/self/mountinfo`).
pub fn is_mount_point(mountinfo_text: &str, path: &Path) -> bool {
    mountinfo::entries(mountinfo_text).any(|entry| entry.point == path)
}

pub fn begin_marker(uid: u32) -> String {
    format!("# BEGIN locald uid={uid}")
}

pub fn end_marker(uid: u32) -> String {
    format!("# END locald uid={uid}")
}

/// The file with the caller's block replaced (or removed when `domains` is empty); every other
/// byte, other users' blocks included, kept as it was.
pub fn rewrite(content: &[u8], uid: u32, domains: &[String]) -> Result<Vec<u8>, String> {
    let (begin, end) = (begin_marker(uid), end_marker(uid));
    let mut out = Vec::with_capacity(content.len());
    let mut inside = false;
    for line in content.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == begin.as_bytes() {
            if inside {
                return Err(format!("/etc/hosts has a nested `{begin}`; fix it by hand"));
            }
            inside = true;
        } else if inside && text == end.as_bytes() {
            inside = false;
        } else if !inside {
            out.extend_from_slice(line);
        }
    }
    if inside {
        return Err(format!("/etc/hosts has `{begin}` without `{end}`; fix it by hand"));
    }
    if !domains.is_empty() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(begin.as_bytes());
        out.push(b'\n');
        for domain in domains {
            out.extend_from_slice(format!("127.0.0.1\t{domain}\n::1\t{domain}\n").as_bytes());
        }
        out.extend_from_slice(end.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &[u8] = b"127.0.0.1\tlocalhost\n# comment \xff kept\n::1 localhost ip6-localhost\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn adds_a_block_mapping_each_name_to_both_loopbacks() {
        let out = rewrite(BASE, 1000, &names(&["a.localhost"])).unwrap();
        let expected = [
            BASE,
            b"# BEGIN locald uid=1000\n127.0.0.1\ta.localhost\n::1\ta.localhost\n# END locald uid=1000\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn replaces_only_its_own_block_and_keeps_everything_else_byte_for_byte() {
        let other = b"# BEGIN locald uid=1001\n127.0.0.1\tb.localhost\n# END locald uid=1001\n";
        let mine = b"# BEGIN locald uid=1000\n127.0.0.1\told.localhost\n# END locald uid=1000\n";
        let content = [BASE, mine, other, b"10.0.0.1 host\n"].concat();
        let out = rewrite(&content, 1000, &names(&["new.localhost"])).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("old.localhost"));
        assert!(text.contains("new.localhost"));
        assert!(out.windows(other.len()).any(|w| w == other), "another uid's block is untouched");
        assert!(out.starts_with(BASE));
        assert!(text.contains("10.0.0.1 host\n"));
    }

    #[test]
    fn no_domains_removes_the_block_and_nothing_else() {
        let with = rewrite(BASE, 7, &names(&["a.localhost"])).unwrap();
        assert_eq!(rewrite(&with, 7, &[]).unwrap(), BASE);
        assert_eq!(rewrite(BASE, 7, &[]).unwrap(), BASE, "idempotent");
    }

    #[test]
    fn a_file_without_final_newline_gets_one_before_the_block() {
        let out = rewrite(b"127.0.0.1 localhost", 1, &names(&["a.localhost"])).unwrap();
        assert!(out.starts_with(b"127.0.0.1 localhost\n# BEGIN locald uid=1\n"));
    }

    #[test]
    fn an_unterminated_block_is_refused_rather_than_eating_the_file() {
        let broken = [BASE, b"# BEGIN locald uid=5\n127.0.0.1 x.localhost\n10.0.0.1 precious\n"].concat();
        assert!(rewrite(&broken, 5, &[]).is_err());
        // Another uid's broken block is not ours to judge.
        assert!(rewrite(&broken, 6, &[]).is_ok());
    }

    #[test]
    fn a_marker_for_a_uid_prefix_is_not_ours() {
        let content = b"# BEGIN locald uid=10\nx\n# END locald uid=10\n";
        assert_eq!(rewrite(content, 1, &[]).unwrap(), content.to_vec());
    }

    #[test]
    fn a_bind_mounted_hosts_file_is_a_mount_point_and_etc_is_not() {
        let table = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                     40 22 8:1 /var/lib/docker/containers/x/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw\n";
        assert!(is_mount_point(table, Path::new("/etc/hosts")));
        assert!(!is_mount_point(table, Path::new("/etc")));
        assert!(!is_mount_point("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", Path::new("/etc/hosts")));
    }
}
