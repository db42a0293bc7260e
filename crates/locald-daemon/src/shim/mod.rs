//! Talking to `locald-shim`: find a trustworthy one, agree on the protocol, ask it for things.

mod client;
mod discovery;
#[cfg(test)]
pub(crate) mod fake;
pub mod filecap;
mod privileged;
mod remove;
mod root;

pub use client::{PortOwner, Shim, ShimClientError};
pub use discovery::{
    DEFAULT_INSTALL_DIR, ENV_OVERRIDE, Insecure, NIXOS_WRAPPER, SHIM_NAME, candidates, check_dir_chain,
    check_trusted,
};
pub use privileged::{Privileged, Unavailable, discover};
pub use remove::{RemoveError, force_remove_dir_all, force_remove_dir_all_blocking};
pub use root::AsRoot;
