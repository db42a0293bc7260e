//! Unprivileged code shared by the `locald` CLI and the daemon.

pub mod atomic_file;
pub mod config;
pub mod diagnostics;
pub mod ipc;
pub mod paths;
