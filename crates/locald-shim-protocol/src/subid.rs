//! Subordinate id ranges (`/etc/subuid`, `/etc/subgid`) and the rule a container's id map must
//! follow (DESIGN §4): container 0 is the caller, and container ids from 1 on may map only into
//! ranges allocated to the caller — the rule of shadow-utils' `newuidmap`/`newgidmap`, checked by
//! the shim against files it reads itself. Pure functions: the shim and the daemon share them.

use oci_spec::runtime::LinuxIdMapping;

/// At most this many entries in one map: `0 → caller` and up to five subordinate ranges. The
/// kernel takes 340; a container needs one or two, and every entry is work to check.
pub const MAX_MAPPINGS: usize = 6;

/// The largest `/etc/subuid` the shim reads; a real one holds a line per user.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Host ids `start..start + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

impl Range {
    fn end(self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }
}

/// The ranges allocated to one user in `/etc/subuid` and `/etc/subgid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    pub uids: Vec<Range>,
    pub gids: Vec<Range>,
}

/// The ranges of `owner` (a user name, or a uid in decimal) in a subuid/subgid file's `contents`.
/// Lines are `owner:start:count`; comments, blank and malformed lines are skipped, as
/// shadow-utils does.
pub fn ranges_of(contents: &str, name: Option<&str>, uid: u32) -> Vec<Range> {
    let uid = uid.to_string();
    contents
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || !(owner == uid || Some(owner) == name) {
                return None;
            }
            let range = Range { start: start.parse().ok()?, count: count.parse().ok()? };
            (range.count > 0 && range.end() <= 1 << 32).then_some(range)
        })
        .collect()
}

/// The name of `uid` in `/etc/passwd`'s `contents`, if it has one there.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty() && !name.starts_with('#')).then(|| name.to_owned())
    })
}

/// Whether a map asks for more than `0 → caller`, so that the allocations must be read.
pub fn uses_subordinate(mappings: Option<&[LinuxIdMapping]>) -> bool {
    mappings.is_some_and(|m| m.len() > 1)
}

/// Checks one map (`what` is `uid` or `gid`): first `0 → caller` size 1, then at most
/// [`MAX_MAPPINGS`] − 1 ranges from container id 1 on, each lying entirely inside `allowed`,
/// overlapping no other entry on either side and never reaching host id 0.
pub fn check_map(
    what: &str,
    mappings: Option<&[LinuxIdMapping]>,
    caller: u32,
    allowed: &[Range],
) -> Result<(), String> {
    let own = format!("{what} mappings must start with exactly 0 -> {caller} (size 1)");
    let Some([first, rest @ ..]) = mappings else { return Err(own) };
    if (first.container_id(), first.host_id(), first.size()) != (0, caller, 1) {
        return Err(own);
    }
    if rest.len() + 1 > MAX_MAPPINGS {
        return Err(format!("{what} mappings: more than {MAX_MAPPINGS} entries"));
    }
    let mut inside: Vec<(u64, u64)> = vec![(0, 1)];
    let mut outside: Vec<(u64, u64)> = vec![(u64::from(caller), u64::from(caller) + 1)];
    for m in rest {
        let shown = format!("{what} mapping {} -> {} (size {})", m.container_id(), m.host_id(), m.size());
        if m.size() == 0 {
            return Err(format!("{shown} is empty"));
        }
        let container = (u64::from(m.container_id()), u64::from(m.container_id()) + u64::from(m.size()));
        let host = (u64::from(m.host_id()), u64::from(m.host_id()) + u64::from(m.size()));
        if container.1 > 1 << 32 || host.1 > 1 << 32 {
            return Err(format!("{shown} runs past the last id"));
        }
        if host.0 == 0 {
            return Err(format!("{shown} maps host id 0"));
        }
        if inside.iter().any(|&r| overlaps(r, container)) {
            return Err(format!("{shown} overlaps another mapping's container ids"));
        }
        if outside.iter().any(|&r| overlaps(r, host)) {
            return Err(format!("{shown} overlaps another mapping's host ids"));
        }
        if !covered(host, allowed) {
            return Err(format!(
                "{shown} is not inside the caller's allocation in /etc/sub{what} ({})",
                shown_ranges(allowed)
            ));
        }
        inside.push(container);
        outside.push(host);
    }
    Ok(())
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether every id of `host` lies in some range of `allowed` (adjacent ranges join, as in
/// shadow-utils).
fn covered(host: (u64, u64), allowed: &[Range]) -> bool {
    let mut next = host.0;
    while next < host.1 {
        match allowed.iter().find(|r| u64::from(r.start) <= next && next < r.end()) {
            Some(r) => next = r.end(),
            None => return false,
        }
    }
    true
}

fn shown_ranges(ranges: &[Range]) -> String {
    if ranges.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<String> = ranges.iter().map(|r| format!("{}-{}", r.start, r.end() - 1)).collect();
    shown.join(", ")
}

#[cfg(test)]
#[path = "subid_tests.rs"]
mod tests;
