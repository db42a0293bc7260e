//! A subordinate id allocation of the fixture user, for the length of a test. The files are
//! edited directly: `usermod` refuses a user that has processes, and other suites run some as
//! this user.

use std::fs;
use std::os::unix::fs::PermissionsExt;

/// `user:start:count` in `/etc/subuid` and `/etc/subgid`, removed on drop.
pub struct Allocation {
    line: String,
}

impl Allocation {
    pub fn add(user: &str, (start, count): (u32, u32)) -> Self {
        let allocation = Allocation { line: format!("{user}:{start}:{count}") };
        allocation.edit(true);
        allocation
    }

    /// Removes the line (one left by an aborted run, or for a case without an allocation).
    pub fn remove(user: &str, range: (u32, u32)) {
        drop(Self::add(user, range));
    }

    fn edit(&self, present: bool) {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let old = fs::read_to_string(file).unwrap_or_default();
            let mut lines: Vec<String> = old.lines().filter(|l| *l != self.line).map(str::to_owned).collect();
            if present {
                lines.push(self.line.clone());
            }
            let temp = format!("{file}.locald-test");
            fs::write(&temp, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
            fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).unwrap();
            fs::rename(&temp, file).unwrap();
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.edit(false);
    }
}
