use std::process::ExitCode;

use locald_core::diagnostics::Finding;
use locald_core::ipc::{Request, Response};

use super::client::Client;

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let mut report = locald_daemon::doctor::run(&*locald_daemon::shim::discover());
    let proxy = proxy_status();
    if let Some(Some(proxy)) = &proxy
        && proxy.via_shim
    {
        // 80/443 are taken, by locald's own proxy: that is the goal, not a problem.
        for finding in &mut report.findings {
            if finding.id == "port.80" || finding.id == "port.443" {
                *finding = Finding::ok(finding.id, "used by locald's proxy (through locald-shim)");
            }
        }
    }
    report.findings.push(match &proxy {
        None => Finding::ok(
            "proxy.ports",
            "daemon not running; it takes 443/80 through locald-shim when it starts",
        ),
        Some(None) => Finding::error(
            "proxy.ports",
            "the daemon runs without its proxy (see its log)",
            "locald server stop; locald up",
        ),
        Some(Some(p)) if p.on_standard_ports() => {
            Finding::ok("proxy.ports", "serving https on 443 and http on 80")
        }
        Some(Some(p)) => Finding::warn(
            "proxy.ports",
            format!(
                "serving https on {} and http on {}, so URLs carry the port: {}",
                p.https_port,
                p.http_port,
                p.note.as_deref().unwrap_or("443/80 unavailable")
            ),
            "sudo locald admin setup, then locald server stop; locald up",
        ),
    });
    if let Some(Some(p)) = &proxy {
        report.findings.push(match &p.ipv6_note {
            None => Finding::ok("proxy.ipv6", "also listening on ::1"),
            Some(note) => Finding::warn(
                "proxy.ipv6",
                format!("not listening on ::1: {note}"),
                "clients that try ::1 first fall back to 127.0.0.1; bring up IPv6 on lo, then locald server stop; locald up",
            ),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.blocks() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The running daemon's proxy: `None` without a daemon, `Some(None)` when it has no proxy.
fn proxy_status() -> Option<Option<locald_core::ipc::ProxyStatus>> {
    let mut client = Client::existing().ok()??;
    client.send(&Request::Status).ok()?;
    match client.next().ok()? {
        Response::Status { proxy, .. } => Some(proxy),
        _ => None,
    }
}
