//! `bind`: listen on a privileged port as root, give up root, hand the listener back.

use std::io::IoSlice;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use locald_shim_protocol::{CONTROL_FD, ShimError};
use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockaddrLike, SockaddrStorage};
use nix::sys::socket::{getsockname, sendmsg};
use nix::sys::stat::{SFlag, fstat};

#[cfg(target_os = "linux")]
use crate::capability::BindOnly;
use crate::privilege::Root;
use locald_shim_protocol::ShimMode;

/// What lets this process bind a privileged port; the same rules apply to both.
#[derive(Debug)]
pub enum Privilege {
    Root(Root),
    #[cfg(target_os = "linux")]
    Capability(BindOnly),
}

impl Privilege {
    pub fn acquire(mode: ShimMode) -> Result<Self, ShimError> {
        match mode {
            #[cfg(target_os = "linux")]
            ShimMode::Capabilities => Ok(Privilege::Capability(BindOnly::acquire()?)),
            _ => Ok(Privilege::Root(Root::acquire()?)),
        }
    }

    /// Gives the privilege up for good: root to the caller's ids, or every capability set emptied.
    fn drop(self) -> Result<(), ShimError> {
        match self {
            Privilege::Root(root) => root.drop_to_caller().map(drop),
            #[cfg(target_os = "linux")]
            Privilege::Capability(bind_only) => bind_only.drop_all(),
        }
    }
}

pub fn run(privilege: Privilege, address: SocketAddr) -> Result<(), ShimError> {
    check_control_socket()?;
    // std sets SO_REUSEADDR on Unix, so a listener left in TIME_WAIT by a previous daemon does
    // not block the port.
    let listener = TcpListener::bind(address).map_err(|e| ShimError::os(&format!("bind {address}"), e))?;
    // The socket is bound; nothing left needs root or the capability.
    privilege.drop()?;
    let fds = [listener.as_raw_fd()];
    sendmsg::<()>(
        CONTROL_FD,
        &[IoSlice::new(b"L")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| ShimError::os("send listener over fd 3", e))?;
    Ok(())
}

/// fd 3 must be a unix socket the caller created: the listener goes nowhere else.
fn check_control_socket() -> Result<(), ShimError> {
    let stat = fstat(CONTROL_FD).map_err(|_| {
        ShimError::usage("fd 3 is not open: pass a unix socket on fd 3 to receive the listener")
    })?;
    let is_socket = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK;
    let family = getsockname::<SockaddrStorage>(CONTROL_FD).ok().and_then(|a| a.family());
    if !is_socket || family != Some(AddressFamily::Unix) {
        return Err(ShimError::usage("fd 3 is not a unix socket"));
    }
    Ok(())
}
