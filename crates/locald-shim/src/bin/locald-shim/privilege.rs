//! Privilege phases as types: a [`Root`] value exists only while the effective uid is 0, and
//! giving it up ([`Root::drop_to_caller`]) consumes it, so code that needs root cannot run after
//! the drop by mistake.

use locald_shim::ShimError;
use nix::unistd::{Gid, Uid, getegid, geteuid, getgid, getuid, setgid, setuid};

/// The real identity of whoever executed the shim: every request is judged against it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug)]
pub struct Root {
    caller: Caller,
}

impl Root {
    /// Checks that the setuid bit gave us root, records the caller, and drops the caller's
    /// supplementary groups so no group permission of theirs leaks into privileged work.
    pub fn acquire() -> Result<Self, ShimError> {
        if !geteuid().is_root() {
            return Err(ShimError::refused(
                "not running as root: locald-shim must be root-owned and setuid (run `sudo locald admin setup`)",
            ));
        }
        let caller = Caller { uid: getuid(), gid: getgid() };
        drop_supplementary_groups()?;
        Ok(Self { caller })
    }

    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// Gives up root for good: real, effective and saved ids all become the caller's.
    pub fn drop_to_caller(self) -> Result<Caller, ShimError> {
        let Caller { uid, gid } = self.caller;
        setgid(gid).map_err(|e| ShimError::os("setgid", e))?;
        setuid(uid).map_err(|e| ShimError::os("setuid", e))?;
        if geteuid() != uid || getegid() != gid || (!uid.is_root() && setuid(Uid::from_raw(0)).is_ok()) {
            return Err(ShimError::os("drop privileges", "root could be regained"));
        }
        Ok(self.caller)
    }
}

fn drop_supplementary_groups() -> Result<(), ShimError> {
    // SAFETY: a zero-length list with a null pointer is the documented way to clear the groups.
    let ret = unsafe { libc::setgroups(0, std::ptr::null()) };
    if ret != 0 {
        return Err(ShimError::os("setgroups", nix::errno::Errno::last()));
    }
    Ok(())
}
