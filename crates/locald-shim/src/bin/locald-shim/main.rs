//! `locald-shim`: the setuid-root helper of locald.
//!
//! Read this file top to bottom: refuse a degenerate start, harden the process, parse the
//! request, check it against the caller's real identity, then one call per subcommand. Every
//! privileged step lives in a module named after its subcommand.

mod bind;
mod preamble;
mod privilege;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use locald_shim::{Parsed, Request, ShimError, version_line};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "{err}");
            ExitCode::from(err.class.code() as u8)
        }
    }
}

fn run() -> Result<(), ShimError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // CVE-2021-4034 (pkexec): with argc 0 a setuid program may read argv[1] out of envp.
    preamble::refuse_empty_argv(&argv)?;
    preamble::harden()?;

    let request = match Request::parse_from(argv)? {
        Parsed::Help(text) => {
            print!("{text}");
            return Ok(());
        }
        Parsed::Request(request) => request,
    };
    if !request.takes_control_fd() {
        preamble::close_control_fd();
    }

    match request {
        Request::Version => {
            println!("{}", version_line());
            Ok(())
        }
        Request::Bind(bind) => {
            let address = bind.validate()?;
            let root = privilege::Root::acquire()?;
            bind::run(root, address)
        }
    }
}
