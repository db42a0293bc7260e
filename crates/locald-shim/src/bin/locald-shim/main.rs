//! `locald-shim`: the setuid-root helper of locald.
//!
//! Read this file top to bottom: refuse a degenerate start, harden the process, parse the
//! request, check it against the caller's real identity, then one call per subcommand. Every
//! privileged step lives in a module named after its subcommand.

mod bind;
#[cfg(target_os = "linux")]
mod bundle;
#[cfg(target_os = "linux")]
mod capability;
#[cfg(target_os = "linux")]
mod cgroup_view;
#[cfg(target_os = "linux")]
mod cleanup;
#[cfg(target_os = "linux")]
mod debug_port;
mod fds;
mod hosts;
#[cfg(target_os = "linux")]
mod loopdev;
#[cfg(target_os = "linux")]
mod mount_loop;
#[cfg(target_os = "linux")]
mod overlay;
mod preamble;
mod privilege;
#[cfg(target_os = "linux")]
mod subid_files;
#[cfg(target_os = "linux")]
mod userns;
#[cfg(target_os = "linux")]
mod userpath;
#[cfg(target_os = "linux")]
mod volume_idmap;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use locald_shim_protocol::{Parsed, Request, ShimError, ShimMode, version_line};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "{err}");
            ExitCode::from(err.class.code() as u8)
        }
    }
}

/// The exit code on success: 0, or the container's own status for `bundle run`.
fn run() -> Result<i32, ShimError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // CVE-2021-4034 (pkexec): with argc 0 a setuid program may read argv[1] out of envp.
    preamble::refuse_empty_argv(&argv)?;
    preamble::harden()?;

    let request = match Request::parse_from(argv)? {
        Parsed::Help(text) => {
            print!("{text}");
            return Ok(0);
        }
        Parsed::Request(request) => request,
    };
    if !request.takes_control_fd() {
        preamble::close_control_fd();
    }

    let mode = mode();
    // The capability install serves bind and the handshake only; the rest is refused here,
    // before anything of the request is touched.
    if mode == ShimMode::Capabilities && !request.served_with_bind_capability() {
        #[cfg(target_os = "linux")]
        return Err(capability::refuse(request.name()));
    }

    let done = |result: Result<(), ShimError>| result.map(|()| 0);
    match request {
        Request::Version => {
            println!("{}", version_line());
            println!("{}", mode.line());
            Ok(0)
        }
        Request::Bind(bind) => {
            let address = bind.validate()?;
            done(bind::run(bind::Privilege::acquire(mode)?, address))
        }
        Request::SyncHosts(request) => done(hosts::run(privilege::Root::acquire()?, &request)),
        #[cfg(target_os = "linux")]
        Request::Cleanup(request) => done(cleanup::run(privilege::Root::acquire()?, &request)),
        #[cfg(target_os = "linux")]
        Request::MountLoop(request) => done(mount_loop::mount_loop(privilege::Root::acquire()?, &request)),
        #[cfg(target_os = "linux")]
        Request::UnmountLoop(request) => {
            done(mount_loop::unmount_loop(privilege::Root::acquire()?, &request))
        }
        #[cfg(target_os = "linux")]
        Request::DebugPort(request) => done(debug_port::run(privilege::Root::acquire()?, &request)),
        #[cfg(target_os = "linux")]
        Request::BundleRun(request) => bundle::run(privilege::Root::acquire()?, &request),
        #[cfg(not(target_os = "linux"))]
        Request::BundleRun(_) => Err(ShimError::refused(
            "UnsupportedPlatform: container execution needs Linux — use the Lima profile (lima/locald.yaml)",
        )),
        #[cfg(not(target_os = "linux"))]
        Request::Cleanup(_) | Request::MountLoop(_) | Request::UnmountLoop(_) | Request::DebugPort(_) => {
            Err(ShimError::refused(
                "UnsupportedPlatform: this request needs Linux — use the Lima profile (lima/locald.yaml)",
            ))
        }
    }
}

#[cfg(target_os = "linux")]
fn mode() -> ShimMode {
    capability::mode()
}

#[cfg(not(target_os = "linux"))]
fn mode() -> ShimMode {
    if nix::unistd::geteuid().is_root() { ShimMode::Setuid } else { ShimMode::Unprivileged }
}
