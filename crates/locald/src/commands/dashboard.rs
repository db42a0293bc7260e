//! `locald dashboard`: a one-time login URL from the daemon, opened in the browser when there
//! is a display, else printed.
//!
//! The URL is not put on the opener's command line, where every user of the machine could
//! read it in `/proc`: it goes into a page in the private runtime directory (0600 in 0700) that
//! sends the browser on, and that page's path is what `xdg-open`/`open` gets.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{ExitCode, Stdio};

use anyhow::Context;
use locald_core::ipc::{Request, Response};
use locald_core::paths;

use super::client::Client;

pub fn run(print: bool) -> anyhow::Result<ExitCode> {
    let Response::DashboardLogin { url } = Client::call(&Request::Dashboard)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if !print && has_display() {
        match open_in_browser(&url) {
            Ok(()) => {
                println!("opened the dashboard in your browser (no window? `locald dashboard --print`)");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => eprintln!("could not open a browser ({e:#}); open this URL instead:"),
        }
    }
    println!("{url}");
    Ok(ExitCode::SUCCESS)
}

fn has_display() -> bool {
    cfg!(target_os = "macos")
        || ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

fn open_in_browser(url: &str) -> anyhow::Result<()> {
    let page = paths::runtime_dir()?.join("dashboard-login.html");
    let _ = std::fs::remove_file(&page);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&page)
        .with_context(|| page.display().to_string())?;
    // The URL is ours (hex token, fixed host), but escape it anyway for the attribute.
    let attr = url.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;");
    writeln!(
        file,
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={attr}\"><title>locald</title>\
         <a href=\"{attr}\">Open the locald dashboard</a>"
    )?;
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let status = std::process::Command::new(opener)
        .arg(&page)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {opener}"))?;
    anyhow::ensure!(status.success(), "{opener} exited with {status}");
    Ok(())
}
