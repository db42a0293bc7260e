//! Privilege phases as types: a [`Root`] value exists only while the effective uid is 0, and
//! giving it up ([`Root::drop_to_caller`]) consumes it, so code that needs root cannot run after
//! the drop by mistake.

use locald_shim_protocol::ShimError;
use nix::unistd::{Gid, Uid, getegid, geteuid, getgid, getuid, setgid, setuid};

/// The real identity of whoever executed the shim: every request is judged against it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: Uid,
    pub gid: Gid,
    /// The supplementary groups the caller came with (CVE-2014-8989 class): a group can also
    /// deny access (`0604 root:denied`), so acting as the caller without them would let the
    /// shim reach what the caller cannot.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub groups: &'static [Gid],
}

#[derive(Debug)]
pub struct Root {
    caller: Caller,
}

impl Root {
    /// Checks that the setuid bit gave us root, records the caller (with their supplementary
    /// groups), and drops those groups so no group permission of theirs leaks into privileged
    /// work; they come back only while acting as the caller.
    pub fn acquire() -> Result<Self, ShimError> {
        if !geteuid().is_root() {
            return Err(ShimError::refused(
                "not running as root: locald-shim must be root-owned and setuid (run `sudo locald admin setup`)",
            ));
        }
        // Leaked once: the shim is short-lived and `Caller` stays `Copy`.
        let groups: &'static [Gid] = Vec::leak(supplementary_groups()?);
        let caller = Caller { uid: getuid(), gid: getgid(), groups };
        set_groups(&[])?;
        Ok(Self { caller })
    }

    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// Gives up root for good: real, effective and saved ids all become the caller's.
    pub fn drop_to_caller(self) -> Result<Caller, ShimError> {
        let Caller { uid, gid, .. } = self.caller;
        setgid(gid).map_err(|e| ShimError::os("setgid", e))?;
        setuid(uid).map_err(|e| ShimError::os("setuid", e))?;
        if geteuid() != uid || getegid() != gid || (!uid.is_root() && setuid(Uid::from_raw(0)).is_ok()) {
            return Err(ShimError::os("drop privileges", "root could be regained"));
        }
        Ok(self.caller)
    }
}

fn supplementary_groups() -> Result<Vec<Gid>, ShimError> {
    // SAFETY: with size 0 getgroups only returns the number of groups and writes nothing.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count < 0 {
        return Err(ShimError::os("getgroups", nix::errno::Errno::last()));
    }
    let mut groups: Vec<libc::gid_t> = vec![0; count as usize];
    // SAFETY: the buffer holds `count` gids, the size passed; the kernel writes at most that many.
    let got = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(ShimError::os("getgroups", nix::errno::Errno::last()));
    }
    groups.truncate(got as usize);
    Ok(groups.into_iter().map(Gid::from_raw).collect())
}

/// Replaces the supplementary groups of the whole process (glibc applies it to every thread).
pub fn set_groups(groups: &[Gid]) -> Result<(), ShimError> {
    let raw: Vec<libc::gid_t> = groups.iter().map(|g| g.as_raw()).collect();
    // SAFETY: `raw` holds `raw.len()` gids and outlives the call; with length 0 nothing is read.
    // (The length is a size_t on Linux and an int on Apple systems, hence `as _`.)
    let ret = unsafe { libc::setgroups(raw.len() as _, raw.as_ptr()) };
    if ret != 0 {
        return Err(ShimError::os("setgroups", nix::errno::Errno::last()));
    }
    Ok(())
}
