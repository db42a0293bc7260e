//! `/proc/self/mountinfo` lines, read the one way: the shim (which loop mount to unmount, where the
//! cgroup hierarchies are), the daemon (the cgroup2 mount) and the CLI (a project's loop mounts)
//! all parse them here, so a field that moves (optional fields before ` - `) or an escaped name is
//! handled once.

use std::path::PathBuf;

/// One mount, as `proc_pid_mountinfo(5)` lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent_id: u64,
    /// The directory of the filesystem mounted there, `/` for a whole filesystem.
    pub root: String,
    pub point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, …).
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options, after the source.
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// One line; `None` when it is not a well-formed mountinfo line.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    // Optional fields (`shared:1`, …) vary in number, so the fixed ones after them are found
    // from the ` - ` separator.
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let list = |s: &str| s.split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect();
    Some(MountEntry {
        id: fields.first()?.parse().ok()?,
        parent_id: fields.get(1)?.parse().ok()?,
        root: unescape(fields.get(3)?),
        point: PathBuf::from(unescape(fields.get(4)?)),
        options: list(fields.get(5)?),
        fstype: right.next()?.to_owned(),
        source: unescape(right.next()?),
        super_options: right.next().map(list).unwrap_or_default(),
    })
}

/// Every well-formed line of a mountinfo text, in order.
pub fn entries(text: &str) -> impl Iterator<Item = MountEntry> + '_ {
    text.lines().filter_map(parse_line)
}

/// The kernel escapes space, tab, newline and backslash in names as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_past_any_number_of_optional_ones() {
        let none = parse_line("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro").unwrap();
        let two = parse_line("22 1 8:1 / / rw,relatime shared:1 master:2 - ext4 /dev/sda1 rw").unwrap();
        for entry in [&none, &two] {
            assert_eq!((entry.id, entry.parent_id), (22, 1));
            assert_eq!((entry.fstype.as_str(), entry.source.as_str()), ("ext4", "/dev/sda1"));
            assert!(entry.has_option("relatime") && !entry.has_option("ro"));
        }
        assert_eq!(none.super_options, ["rw", "errors=remount-ro"]);
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let entry =
            parse_line("42 22 7:1 /sub\\040dir /p/with\\040space\\134x ro - ext4 /dev/loop1 ro").unwrap();
        assert_eq!(entry.root, "/sub dir");
        assert_eq!(entry.point, PathBuf::from("/p/with space\\x"));
        // A backslash not followed by three octal digits stays as it is.
        assert_eq!(parse_line("1 0 0:1 / /a\\9 rw - tmpfs t rw").unwrap().point, PathBuf::from("/a\\9"));
    }

    #[test]
    fn malformed_lines_are_none() {
        for line in ["", "22 1 8:1 / / rw", "x 1 8:1 / / rw - ext4 /dev/sda1 rw", "22 1 8:1 / - ext4 s o"] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        assert_eq!(entries("garbage\n22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").count(), 1);
    }
}
