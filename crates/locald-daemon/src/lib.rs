//! The locald daemon as a library. It runs as the user and never gains privileges; everything
//! that needs root is a request to `locald-shim` through [`shim`].

pub mod container;
pub mod daemon_log;
pub mod doctor;
pub mod health;
pub mod hosts;
pub mod logs;
pub mod nofile;
pub mod proxy;
pub mod server;
pub mod shim;
pub mod supervisor;
