//! What `locald` and `locald-shim` agree on: the argv protocol, exit classes, the validation
//! rules for every argument, the bundle policy and where a container's cgroups go. Both the
//! setuid shim and the daemon compile this crate, so the rules are written once; it pulls in no
//! container runtime, nothing async, no TLS and no TOML.
//!
//! The shim's command line is a private, versioned protocol: the daemon builds argv with
//! [`Request::to_args`] and the shim parses it with [`Request::parse_from`], from the same types,
//! so the two sides cannot drift. Changing anything here is a protocol bump: raise
//! [`PROTOCOL_VERSION`] in the same change.

pub mod bundle_policy;
pub mod cgroup_placement;
pub mod exit;
pub mod hosts_block;
pub mod mountinfo;
pub mod overlay;
pub mod protocol;
pub mod subid;
pub mod validate;
pub mod volume_idmap;

pub use exit::{ExitClass, ShimError};
pub use protocol::{
    BindRequest, CONTROL_FD, PROTOCOL_VERSION, Parsed, Request, ShimMode, parse_version_line, version_line,
};
