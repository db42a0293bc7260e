//! Talking to `locald-shim`: find a trustworthy one, agree on the protocol, ask it for things.

mod client;
mod discovery;

pub use client::{Shim, ShimClientError};
pub use discovery::{
    DEFAULT_INSTALL_DIR, ENV_OVERRIDE, Insecure, NIXOS_WRAPPER, SHIM_NAME, candidates, check_dir_chain,
    check_trusted,
};
