//! Owning raw descriptors returned by nix's RawFd-based calls.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of a descriptor a successful open just returned.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass only fds freshly returned by open/openat/openat2, owned by no one.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
