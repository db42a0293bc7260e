//! The daemon's descriptor limit and its children's: the proxy needs far more than the 1,024 a
//! login session starts with, while the services it runs must get the limit they would have had
//! without locald (programs built on `select()` break above 1,024 descriptors, as systemd's
//! `DefaultLimitNOFILE=1024:524288` keeps in mind).

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft and hard limits the daemon was started with.
static INHERITED: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, remembering the soft limit it had for the
/// children, and returns the soft limit now in force.
pub fn raise() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let _ = INHERITED.set((soft, hard));
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}"),
        }
    }
    soft
}

/// Gives a child the soft limit the daemon inherited, when [`raise`] changed it. Only then: a
/// `pre_exec` closure makes `Command` fork the daemon and wait for the child's `exec` instead
/// of using `posix_spawn` (a vfork), which costs each service start milliseconds of the `up`
/// that waits for it.
pub fn restore_in_child(command: &mut std::process::Command) {
    let Some((soft, hard)) = to_give_back() else { return };
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit(2) is async-signal-safe and `limit` is a plain value moved into the
    // closure; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The (soft, hard) `RLIMIT_NOFILE` a child must be given, when [`raise`] changed the daemon's.
pub fn to_give_back() -> Option<(u64, u64)> {
    let inherited = *INHERITED.get()?;
    getrlimit(Resource::RLIMIT_NOFILE).ok().and_then(|now| to_restore(inherited, now))
}

/// The limits a child must be given back, from those the daemon inherited and those in force
/// now (soft, hard); `None` when they are the same, so the child inherits them as they are.
fn to_restore(inherited: (u64, u64), now: (u64, u64)) -> Option<(u64, u64)> {
    (inherited != now).then_some(inherited)
}

#[cfg(test)]
mod tests {
    use super::to_restore;

    #[test]
    fn a_child_is_given_back_the_inherited_limit_only_when_the_daemon_raised_it() {
        assert_eq!(to_restore((1024, 524_288), (524_288, 524_288)), Some((1024, 524_288)), "raised");
        assert_eq!(
            to_restore((20_000, 20_000), (20_000, 20_000)),
            None,
            "soft already at the hard limit: nothing to restore, no pre_exec, posix_spawn"
        );
    }
}
