//! Containers, caller side (RFC 0098: the daemon generates the bundle, the shim executes it).

pub(crate) mod prepare;
pub(crate) mod pulls;
