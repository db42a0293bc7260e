//! A real browser: headless Chromium (Debian's package), running as the throwaway user, opens
//! the quickstart example at `https://web.quickstart.localhost/` on port 443 — first without
//! trusting the CA (the page must not load), then after `locald trust` put the CA into the user's
//! NSS database (it must load, with the API's items). A screenshot is kept under
//! `target/artifacts/`. Runs as root; fails under LOCALD_REQUIRE_PRIVILEGED=1 without it.

use std::path::{Path, PathBuf};
use std::process::Output;

use locald_tests::proxy::Scene;
use locald_tests::{built_bin_dir, privileged, text};

const URL: &str = "https://web.quickstart.localhost/";

fn chromium(scene: &Scene, args: &[&str]) -> Output {
    let browser = Path::new("/usr/bin/chromium");
    assert!(browser.is_file(), "chromium is needed for the browser test (apt-get install chromium)");
    let mut command = scene.p.as_user(Path::new("/usr/bin/timeout"));
    command
        .arg("90")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", scene.home().join("chromium").display()))
        .args(args)
        .env("HOME", scene.home());
    command.output().unwrap()
}

#[test]
fn chromium_opens_the_quickstart_over_https_once_the_ca_is_trusted() {
    let Some(p) = privileged() else { return };
    let scene = Scene::example(p, "proxy-browser", "quickstart");
    let up = scene.ok(&["up"]);
    assert!(up.contains("https://quickstart.localhost "), "{up}");

    // Untrusted: Chromium refuses the certificate, so the page's content never shows.
    let before = chromium(&scene, &["--dump-dom", URL]);
    assert!(
        !text(&before).contains("<h1>quickstart</h1>"),
        "loaded without trusting the CA:\n{}",
        text(&before)
    );

    let trust = scene.ok(&["trust", "--user-only"]);
    let nssdb = scene.home().join(".pki/nssdb");
    assert!(trust.contains(&format!("trusted in NSS database {}", nssdb.display())), "{trust}");
    let doctor = scene.ok(&["doctor"]);
    assert!(doctor.contains(&format!("trusted in {}", nssdb.display())), "{doctor}");

    let after = chromium(&scene, &["--dump-dom", URL]);
    let dom = String::from_utf8_lossy(&after.stdout);
    assert!(dom.contains("<h1>quickstart</h1>"), "page did not load:\n{}", text(&after));
    for item in ["tea", "bread", "apples"] {
        assert!(dom.contains(&format!("<li>{item}</li>")), "{dom}");
    }

    let shot = scene.dir.join("quickstart.png");
    let out = chromium(&scene, &["--window-size=1000,700", &format!("--screenshot={}", shot.display()), URL]);
    assert!(shot.is_file(), "no screenshot: {}", text(&out));
    let artifacts: PathBuf = built_bin_dir().parent().expect("target dir").join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::copy(&shot, artifacts.join("proxy-browser-quickstart.png")).unwrap();

    // And out again.
    let untrust = scene.ok(&["untrust", "--user-only"]);
    assert!(untrust.contains("removed from NSS database"), "{untrust}");
}
