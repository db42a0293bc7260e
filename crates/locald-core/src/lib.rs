//! Unprivileged code shared by the `locald` CLI and the daemon.

pub mod diagnostics;
