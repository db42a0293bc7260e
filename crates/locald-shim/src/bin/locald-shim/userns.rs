//! The container's user namespace, made by the shim itself so that it writes the validated id
//! maps directly as root. libcontainer 0.7 writes a map of more than one entry only by running
//! `newuidmap`/`newgidmap` found through `PATH` (and ignores their exit status); the shim never
//! runs a host binary. So a child of the shim unshares a user namespace and waits, the shim writes
//! its `uid_map`/`gid_map`, and libcontainer is given the namespace by path (`/proc/<child>/ns/user`),
//! which it joins without writing any map. The child is ours and unreaped until dropped, so its
//! pid (and the path) cannot name another process meanwhile.
//!
//! The namespace is created with effective uid 0, so it is owned by root, as the one libcontainer
//! creates is: the caller has no capability in it from outside.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use locald_shim_protocol::ShimError;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe, read};
use oci_spec::runtime::LinuxIdMapping;

pub struct Holder {
    pid: Pid,
}

impl Holder {
    /// A new user namespace with these maps. `setgroups` is denied in it unless `allow_setgroups`
    /// (newgidmap's rule: only a map with subordinate gids may drop the caller's groups).
    pub fn create(
        uid_map: &[LinuxIdMapping],
        gid_map: &[LinuxIdMapping],
        allow_setgroups: bool,
    ) -> Result<Self, ShimError> {
        let (ready_read, ready_write) = pipe().map_err(|e| ShimError::os("pipe", e))?;
        // SAFETY: the child only calls async-signal-safe functions (unshare, write, pause, _exit)
        // on memory it owns before exiting; it never returns into Rust code of the parent.
        match unsafe { fork() }.map_err(|e| ShimError::os("fork", e))? {
            ForkResult::Child => hold(ready_read, ready_write),
            ForkResult::Parent { child } => {
                drop(ready_write);
                let holder = Holder { pid: child };
                let mut status = [1u8];
                if !matches!(read(ready_read.as_raw_fd(), &mut status), Ok(1)) || status[0] != 0 {
                    return Err(ShimError::os("create the container's user namespace", "unshare failed"));
                }
                let dir = PathBuf::from(format!("/proc/{child}"));
                let setgroups = if allow_setgroups { "allow" } else { "deny" };
                write_proc(&dir.join("setgroups"), setgroups)?;
                write_proc(&dir.join("uid_map"), &map_text(uid_map))?;
                write_proc(&dir.join("gid_map"), &map_text(gid_map))?;
                Ok(holder)
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.pid))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

fn hold(ready_read: OwnedFd, ready_write: OwnedFd) -> ! {
    // SAFETY: only async-signal-safe libc calls on fds this process owns and a one-byte local
    // buffer; the process ends with _exit and never unwinds.
    unsafe {
        libc::close(ready_read.as_raw_fd());
        let status: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 0 } else { 1 };
        libc::write(ready_write.as_raw_fd(), (&status as *const u8).cast(), 1);
        libc::close(ready_write.as_raw_fd());
        loop {
            libc::pause();
        }
    }
}

/// The kernel takes a map in one write, one `inside outside count` line per entry.
fn map_text(map: &[LinuxIdMapping]) -> String {
    map.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

fn write_proc(path: &std::path::Path, text: &str) -> Result<(), ShimError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| ShimError::os(&path.display().to_string(), e))?;
    file.write_all(text.as_bytes()).map_err(|e| ShimError::os(&format!("write {}", path.display()), e))
}
