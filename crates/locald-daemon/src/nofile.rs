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

/// Gives a child the soft limit the daemon inherited (unchanged when [`raise`] never ran).
pub fn restore_in_child(command: &mut std::process::Command) {
    let Some(&(soft, hard)) = INHERITED.get() else { return };
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
