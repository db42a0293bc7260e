//! Which shims the daemon side trusts, the version handshake, `locald admin setup` and
//! `locald doctor` — as root installing and as the throwaway user using.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::Path;
use std::process::Output;

use locald_tests::{Privileged, install, privileged, text};

fn discover_as_user(p: &Privileged, shim: &Path) -> Output {
    p.caller(false).env("LOCALD_SHIM", shim).arg("discover").output().unwrap()
}

fn assert_not_discovered(p: &Privileged, shim: &Path, reason: &str) {
    let out = discover_as_user(p, shim);
    assert!(!out.status.success(), "{} was trusted: {}", shim.display(), text(&out));
    assert!(text(&out).contains(reason), "expected {reason:?}: {}", text(&out));
}

#[test]
fn the_installed_shim_is_discovered() {
    let Some(p) = privileged() else { return };
    let out = discover_as_user(p, &p.shim());
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_shim_that_is_not_setuid_is_not_discovered() {
    let Some(p) = privileged() else { return };
    let shim = p.scratch_dir("plain").join("locald-shim");
    install(&p.shim(), &shim, 0o755);
    assert_not_discovered(p, &shim, "is neither setuid nor carries exactly the file capability");
}

#[test]
fn a_shim_not_owned_by_root_is_not_discovered() {
    let Some(p) = privileged() else { return };
    let shim = p.scratch_dir("user-owned").join("locald-shim");
    install(&p.shim(), &shim, 0o4755);
    chown(&shim, Some(p.user.uid), Some(p.user.gid)).unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_not_discovered(p, &shim, "not root");
}

#[test]
fn a_shim_in_a_user_writable_directory_is_not_discovered() {
    let Some(p) = privileged() else { return };
    let dir = p.scratch_dir("user-dir");
    let shim = dir.join("locald-shim");
    install(&p.shim(), &shim, 0o4755);
    // The user could rename a shim of their choosing over this one after the check.
    chown(&dir, Some(p.user.uid), Some(p.user.gid)).unwrap();
    assert_not_discovered(p, &shim, "not root");

    let dir = p.scratch_dir("group-writable-dir");
    let shim = dir.join("locald-shim");
    install(&p.shim(), &shim, 0o4755);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
    assert_not_discovered(p, &shim, "writable by group or others");
}

#[test]
fn a_symlink_is_judged_by_its_target() {
    let Some(p) = privileged() else { return };
    // A link in a root-owned directory pointing at a user-owned setuid copy must not pass.
    let user_dir = p.scratch_dir("link-target");
    chown(&user_dir, Some(p.user.uid), Some(p.user.gid)).unwrap();
    let target = user_dir.join("locald-shim");
    install(&p.shim(), &target, 0o4755);
    let link = p.scratch_dir("link").join("locald-shim");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_not_discovered(p, &link, "not root");
}

#[test]
fn a_wrong_version_shim_is_refused_with_the_setup_hint() {
    let Some(p) = privileged() else { return };
    let shim = p.scratch_dir("old").join("locald-shim");
    fs::write(&shim, "#!/bin/sh\necho 'locald-shim 0.0.1 protocol 999'\n").unwrap();
    chown(&shim, Some(0), Some(0)).unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = discover_as_user(p, &shim);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(message.contains("0.0.1 (protocol 999)"), "{message}");
    assert!(message.contains(&format!("protocol {}", locald_shim_protocol::PROTOCOL_VERSION)), "{message}");
    assert!(message.contains("sudo locald admin setup"), "{message}");

    // And no privileged call goes through it.
    let out = p.caller(true).env("LOCALD_SHIM", &shim).args(["bind", "80"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("sudo locald admin setup"), "{}", text(&out));
}

#[test]
fn admin_setup_installs_root_owned_setuid_and_is_idempotent() {
    let Some(p) = privileged() else { return };
    let dest = p.dir.join("setup-dest/libexec");
    let _ = fs::remove_dir_all(p.dir.join("setup-dest"));
    let locald = locald_tests::built_bin("locald");
    let out =
        std::process::Command::new(&locald).args(["admin", "setup", "--dest"]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed"), "{}", text(&out));
    let meta = fs::metadata(dest.join("locald-shim")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0o4755));
    assert_eq!(
        fs::read(dest.join("locald-shim")).unwrap(),
        fs::read(locald.with_file_name("locald-shim")).unwrap()
    );

    // The installed shim works for the user.
    assert!(discover_as_user(p, &dest.join("locald-shim")).status.success());

    let again =
        std::process::Command::new(&locald).args(["admin", "setup", "--dest"]).arg(&dest).output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already installed"), "{}", text(&again));
    // No temporary files left behind.
    let names: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("locald-shim")]);
}

#[test]
fn admin_setup_refuses_a_destination_writable_by_others() {
    let Some(p) = privileged() else { return };
    let dir = p.scratch_dir("setup-open");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let dest = dir.join("libexec");
    let locald = locald_tests::built_bin("locald");
    let out =
        std::process::Command::new(&locald).args(["admin", "setup", "--dest"]).arg(&dest).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("refusing to install"), "{}", text(&out));
    assert!(!dest.join("locald-shim").exists());
}

#[test]
fn admin_setup_without_root_says_to_use_sudo() {
    let Some(p) = privileged() else { return };
    let out = p
        .as_user(&p.bin("locald"))
        .args(["admin", "setup", "--dest"])
        .arg(p.dir.join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("sudo locald admin setup"), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", text(&out));
}

#[test]
fn doctor_reports_the_shim_with_stable_ids() {
    let Some(p) = privileged() else { return };
    let out =
        p.as_user(&p.bin("locald")).args(["doctor", "--json"]).env("LOCALD_SHIM", p.shim()).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let findings = report["findings"].as_array().unwrap();
    for id in ["shim.present", "shim.owner", "shim.mode", "shim.version"] {
        let finding = findings.iter().find(|f| f["id"] == id).unwrap_or_else(|| panic!("no {id}: {report}"));
        assert_eq!(finding["severity"], "ok", "{report}");
    }
    for id in ["cgroup.mode", "dns.localhost", "port.80", "port.443"] {
        assert!(findings.iter().any(|f| f["id"] == id), "missing {id}: {report}");
    }
    let blocking = findings.iter().any(|f| f["severity"] == "error");
    assert_eq!(out.status.success(), !blocking, "{report}");

    // A broken shim is an error with the setup hint, and doctor exits non-zero.
    let old = p.scratch_dir("doctor-old").join("locald-shim");
    fs::write(&old, "#!/bin/sh\necho 'locald-shim 0.0.1 protocol 999'\n").unwrap();
    chown(&old, Some(0), Some(0)).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = p.as_user(&p.bin("locald")).arg("doctor").env("LOCALD_SHIM", &old).output().unwrap();
    assert!(!out.status.success());
    let line =
        String::from_utf8_lossy(&out.stdout).lines().find(|l| l.contains("shim.version")).map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(line.starts_with("error") && line.contains("sudo locald admin setup"), "{line}");

    // A copy that lost its setuid bit: present and root-owned, but the mode line says why not.
    let plain = p.scratch_dir("doctor-plain").join("locald-shim");
    install(&p.shim(), &plain, 0o755);
    let out =
        p.as_user(&p.bin("locald")).args(["doctor", "--json"]).env("LOCALD_SHIM", &plain).output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let severity = |id: &str| {
        report["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).unwrap()["severity"].clone()
    };
    assert_eq!(severity("shim.owner"), "ok", "{report}");
    assert_eq!(severity("shim.mode"), "error", "{report}");
    assert!(report.to_string().contains("is neither setuid nor carries"), "{report}");
}
