//! Containers, caller side (RFC 0098: the daemon generates the bundle, the shim executes it).

pub mod prepare;
pub mod pulls;
