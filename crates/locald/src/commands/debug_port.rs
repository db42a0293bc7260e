use std::process::ExitCode;

use locald_daemon::shim;

pub fn run(port: u16) -> anyhow::Result<ExitCode> {
    let owners = shim::discover().debug_port(port)?;
    if owners.is_empty() {
        println!("nothing listens on port {port}");
    }
    for owner in owners {
        println!("port {port}: {owner}");
    }
    Ok(ExitCode::SUCCESS)
}
