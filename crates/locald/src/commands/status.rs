//! `locald status`: every project's services as a table, or JSON.

use std::io::IsTerminal;
use std::process::ExitCode;

use locald_core::ipc::{Request, Response, ServiceState};

use super::client::Client;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let Response::Status { mut projects, proxy } = Client::call(&Request::Status)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    for project in &mut projects {
        project.mounts = super::mounted::list(&project.dir);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&projects)?);
        return Ok(ExitCode::SUCCESS);
    }
    if projects.is_empty() {
        println!("no projects running");
        print_dashboard_note(proxy.as_ref());
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stdout().is_terminal();
    println!(
        "{:<14} {:<14} {:<12} {:>7} {:>5}  {:<36} {:<9} {:>8} {:>7}",
        "PROJECT", "SERVICE", "STATE", "PID", "PORT", "URL", "HEALTH", "RESTARTS", "UPTIME"
    );
    for project in &projects {
        // Two checkouts of one repository share a name; the worktree's label tells them apart.
        let name = match &project.checkout {
            Some(checkout) => format!("{}@{}", project.name, checkout.label),
            None => project.name.clone(),
        };
        for s in &project.services {
            let health = match s.healthy {
                None => "-",
                Some(true) => "healthy",
                Some(false) => "unhealthy",
            };
            let pid = s.pid.map_or("-".into(), |p| p.to_string());
            let uptime = s.uptime_secs.map_or("-".into(), |u| {
                humantime::format_duration(std::time::Duration::from_secs(u)).to_string()
            });
            // Pad before colouring: escape codes would upset the column widths.
            let state = paint(tty, s.state, &format!("{:<12}", s.state.as_str()));
            println!(
                "{:<14} {:<14} {state} {pid:>7} {:>5}  {:<36} {health:<9} {:>8} {uptime:>7}",
                name,
                s.name,
                s.port,
                s.url.as_deref().unwrap_or("-"),
                s.restarts
            );
        }
    }
    for project in &projects {
        if let Some(checkout) = &project.checkout {
            println!(
                "{}@{}: {} ({})",
                project.name,
                checkout.label,
                checkout.describe(),
                project.dir.display()
            );
        }
    }
    for project in projects.iter().filter(|p| p.watching) {
        println!("{:<14} watching files", project.name);
        for s in &project.services {
            if let Some(changed) = &s.changed {
                println!("{:<14} {} restarted: {changed}", project.name, s.name);
            }
        }
    }
    if let Some(proxy) = &proxy {
        print_proxy_note(proxy);
    }
    print_dashboard_note(proxy.as_ref());
    for project in projects.iter().filter(|p| !p.mounts.is_empty()) {
        for m in &project.mounts {
            let image = m.image.as_ref().map_or("?".into(), |i| i.display().to_string());
            let mode = if m.read_only { "ro" } else { "rw" };
            println!(
                "{:<14} mount {:<8} {} ({mode}) at .locald/mounts/{}",
                project.name, m.name, image, m.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the dashboard is, when the proxy runs.
fn print_dashboard_note(proxy: Option<&locald_core::ipc::ProxyStatus>) {
    if let Some(proxy) = proxy {
        println!("dashboard: {} (`locald dashboard` opens it)", proxy.https_url("locald.localhost"));
    }
}

/// One line when the proxy is not on 443/80, saying why and how to get them.
pub fn print_proxy_note(proxy: &locald_core::ipc::ProxyStatus) {
    if !proxy.on_standard_ports() {
        println!(
            "proxy on ports {} (https) and {} (http), not 443/80: {}",
            proxy.https_port,
            proxy.http_port,
            proxy.note.as_deref().unwrap_or("the shim could not bind them")
        );
    }
    if let Some(note) = &proxy.ipv6_note {
        println!("proxy not on ::1: {note}");
    }
}

/// Colours a state on a terminal; plain text otherwise.
pub fn paint(tty: bool, state: ServiceState, text: &str) -> String {
    if !tty {
        return text.to_owned();
    }
    let code = match state {
        ServiceState::Healthy | ServiceState::Running | ServiceState::Completed => "32",
        ServiceState::Failed | ServiceState::Unhealthy => "31",
        ServiceState::BackingOff | ServiceState::Starting | ServiceState::Waiting => "33",
        ServiceState::Stopped => "90",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}
