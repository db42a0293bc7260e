//! The loop-device ioctls, behind one narrow seam: attach an already-open image fd to a free
//! loop device, and detach it. The image is passed by fd, never by path.

use std::os::fd::{AsRawFd, OwnedFd};

use locald_shim_protocol::ShimError;
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::userpath::own;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process may take the free device between GET_FREE and CONFIGURE; try a few.
const ATTEMPTS: usize = 8;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Autoclear is set, so the kernel detaches it when its last user (our
/// fd or the mount) goes away.
pub struct LoopDevice {
    fd: OwnedFd,
    pub path: String,
}

impl LoopDevice {
    pub fn attach(image: &OwnedFd, read_only: bool) -> Result<Self, ShimError> {
        let control = own(open("/dev/loop-control", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| ShimError::os("open /dev/loop-control", e))?);
        let mut flags = LO_FLAGS_AUTOCLEAR;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let mode = if read_only { OFlag::O_RDONLY } else { OFlag::O_RDWR };
        let mut last = Errno::EBUSY;
        for _ in 0..ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if number < 0 {
                return Err(ShimError::os("LOOP_CTL_GET_FREE", Errno::last()));
            }
            let path = format!("/dev/loop{number}");
            let fd = own(open(path.as_str(), mode | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|e| ShimError::os(&format!("open {path}"), e))?);
            match configure(&fd, image, flags) {
                Ok(()) => return Ok(Self { fd, path }),
                Err(Errno::EBUSY) => last = Errno::EBUSY,
                Err(e) => return Err(ShimError::os(&format!("attach image to {path}"), e)),
            }
        }
        Err(ShimError::os("attach image to a loop device", last))
    }

    /// Detaches now (on a failure path): the mount never happened, so nothing else holds it.
    pub fn detach(self) {
        // SAFETY: LOOP_CLR_FD takes no argument; the fd is an open loop device.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), LOOP_CLR_FD as _) };
    }
}

fn configure(device: &OwnedFd, image: &OwnedFd, flags: u32) -> Result<(), Errno> {
    // SAFETY: the all-zero bit pattern is valid for these plain-integer C structs.
    let mut config: LoopConfig = unsafe { std::mem::zeroed() };
    config.fd = image.as_raw_fd() as u32;
    config.info.lo_flags = flags;
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives across the call.
    let ret = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
    if ret == 0 {
        return Ok(());
    }
    match Errno::last() {
        // Kernels before 5.8: the two-step interface.
        Errno::EINVAL | Errno::ENOTTY => {
            // SAFETY: LOOP_SET_FD takes the backing fd as its integer argument.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, image.as_raw_fd()) } != 0 {
                return Err(Errno::last());
            }
            // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` that lives across the call.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64 as _, &config.info) } != 0 {
                let err = Errno::last();
                // SAFETY: as in detach.
                unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD as _) };
                return Err(err);
            }
            Ok(())
        }
        other => Err(other),
    }
}
