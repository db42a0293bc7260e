//! The locald daemon as a library. It runs as the user and never gains privileges; everything
//! that needs root is a request to `locald-shim` through [`shim`].

mod container;
pub mod daemon_log;
mod dashboard;
pub mod doctor;
mod first;
mod health;
mod hosts;
mod logs;
mod nofile;
pub mod server;
pub mod shim;
mod signals;
mod supervisor;
mod watch;
mod wiring;
