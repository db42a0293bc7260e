use std::process::ExitCode;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let report = locald_daemon::doctor::run();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.blocks() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
