//! Pulls from a real registry on loopback (Debian's docker-registry), through the daemon with
//! `locald pull`: pins, the shared store, platform choice, digest checks, credentials, prune.
//! No root needed: nothing here runs a container (registry_container_up.rs does).

use std::fs;
use std::path::{Path, PathBuf};

use locald_tests::daemon::Daemon;
use locald_tests::registry::{Registry, descriptor, index_of, read_blob, umoci_image};
use locald_tests::text;

const APPLETS: &[&str] = &["sh", "httpd", "cat"];

/// Builds a one-layer busybox image with umoci and pushes it as `<host>/<name>:v1`.
fn pushed(registry: &Registry, name: &str, creds: Option<&str>) -> (String, PathBuf) {
    let layout = registry.dir.path().join(format!("layout-{name}"));
    umoci_image(&layout, "v1", "amd64", name, APPLETS, &["sh", "-c", "exec httpd -f -p $PORT -h /www"]);
    registry.push(&layout, "v1", name, creds);
    (format!("{}/{name}:v1", registry.host()), layout)
}

fn project(daemon: &Daemon, name: &str, image: &str, extra: &str) -> PathBuf {
    daemon.project(
        name,
        &format!("[project]\nname = \"{name}\"\n\n[services.web]\nimage = \"{image}\"\n{extra}"),
    )
}

fn pull(daemon: &Daemon, dir: &Path) -> std::process::Output {
    daemon.cmd().args(["pull", "-C"]).arg(dir).output().unwrap()
}

fn pinned(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join(".locald/images.json")).unwrap()).unwrap()
}

fn store(daemon: &Daemon) -> PathBuf {
    daemon.root.join("home/.cache/locald/oci")
}

/// Every file under `dir` (recursively), for "nothing half was left" checks.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn a_pull_pins_the_digest_and_a_second_project_downloads_nothing() {
    let registry = Registry::start(None);
    let (image, layout) = pushed(&registry, "app", None);
    let daemon = Daemon::new();
    let a = project(&daemon, "a", &image, "");
    let out = pull(&daemon, &a);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("image {image} pulled (1 layers")), "{}", text(&out));

    let manifest = descriptor(&layout, "v1")["digest"].as_str().unwrap().to_owned();
    assert_eq!(pinned(&a)["images"][&image]["digest"], manifest.as_str(), "pinned to what the registry had");
    let manifest_json: serde_json::Value = serde_json::from_slice(&read_blob(&layout, &manifest)).unwrap();
    let layer = manifest_json["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert_eq!(fs::read(store(&daemon).join("blobs/sha256").join(hex)).unwrap(), read_blob(&layout, layer));
    // Unpacked once on its own, beside the blob.
    assert_eq!(
        fs::read_to_string(store(&daemon).join("layers/sha256").join(hex).join("marker")).unwrap(),
        "app"
    );
    let downloads = registry.blob_gets();
    assert_eq!(downloads, 2, "config and layer, once each:\n{}", registry.log());

    // Another project, same image: the manifest is asked for again, no blob is.
    let b = project(&daemon, "b", &image, "");
    let out = pull(&daemon, &b);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(registry.blob_gets(), downloads, "the second project downloaded blobs:\n{}", registry.log());

    // `locald images` names both projects; prune keeps what they use.
    let listed = daemon.ok(&["images"]);
    assert!(listed.contains(&image) && listed.contains(&a.display().to_string()), "{listed}");
    assert!(listed.contains(&b.display().to_string()), "{listed}");
    assert!(daemon.ok(&["images", "prune"]).contains("0 image(s) removed"));
    assert!(store(&daemon).join("blobs/sha256").join(hex).is_file());

    // Once no project pins it, prune removes the image and its blobs.
    fs::remove_file(a.join(".locald/images.json")).unwrap();
    fs::remove_dir_all(&b).unwrap();
    assert!(daemon.ok(&["images"]).contains("(unused)"));
    let pruned = daemon.ok(&["images", "prune"]);
    assert!(pruned.contains("1 image(s) removed"), "{pruned}");
    assert!(!store(&daemon).join("blobs/sha256").join(hex).exists(), "the layer blob survived prune");
    assert!(!store(&daemon).join("layers/sha256").join(hex).exists(), "the unpacked layer survived prune");
    assert!(daemon.ok(&["images"]).contains("no registry images"));
}

#[test]
fn an_index_resolves_to_the_hosts_platform_or_says_there_is_none() {
    let registry = Registry::start(None);
    let layout = registry.dir.path().join("layout-multi");
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    umoci_image(&layout, host, host, host, APPLETS, &["sh"]);
    umoci_image(&layout, other, other, other, APPLETS, &["sh"]);
    index_of(&layout, "multi", &[(other, other, (other == "arm64").then_some("v8")), (host, host, None)]);
    index_of(&layout, "foreign", &[(other, other, None), (other, "s390x", None)]);
    registry.push(&layout, "multi", "multi", None);
    registry.push(&layout, "foreign", "multi", None);

    let daemon = Daemon::new();
    let image = format!("{}/multi:multi", registry.host());
    let dir = project(&daemon, "multi", &image, "");
    let out = pull(&daemon, &dir);
    assert!(out.status.success(), "{}", text(&out));
    let chosen = descriptor(&layout, host)["digest"].as_str().unwrap().to_owned();
    assert_eq!(pinned(&dir)["images"][&image]["digest"], chosen.as_str(), "linux/{host} was not chosen");
    let not_chosen = descriptor(&layout, other)["digest"].as_str().unwrap().to_owned();
    let fetched = registry.log().lines().any(|l| l.contains("\"GET /v2/") && l.contains(&not_chosen));
    assert!(!fetched, "the other platform's manifest was fetched:\n{}", registry.log());

    let image = format!("{}/multi:foreign", registry.host());
    let dir = project(&daemon, "foreign", &image, "");
    let out = pull(&daemon, &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("has no manifest for linux/{host}"))
            && err.contains(&format!("linux/{other}"))
            && err.contains("linux/s390x"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_of_it_is_stored() {
    let registry = Registry::start(None);
    let (image, layout) = pushed(&registry, "tampered", None);
    let manifest = descriptor(&layout, "v1")["digest"].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(&read_blob(&layout, &manifest)).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    // Same length, different bytes: only the digest can tell.
    let stored = registry.stored_blob(&layer);
    let mut bytes = fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&stored, bytes).unwrap();

    let daemon = Daemon::new();
    let dir = project(&daemon, "t", &image, "");
    let out = pull(&daemon, &dir);
    assert!(!out.status.success(), "a tampered layer was accepted: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("blob {layer} does not match its digest")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let hex = layer.strip_prefix("sha256:").unwrap();
    let left: Vec<PathBuf> = files(&store(&daemon).join("blobs"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(hex))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "part of the tampered layer is in the store");
    assert!(!dir.join(".locald/images.json").exists(), "a failed pull pinned something");
}

#[test]
fn credentials_come_from_docker_config_and_their_absence_says_how_to_log_in() {
    let registry = Registry::start(Some(("alice", "s3cret")));
    let (image, _) = pushed(&registry, "private", Some("alice:s3cret"));
    let daemon = Daemon::new();
    let dir = project(&daemon, "p", &image, "");

    let out = pull(&daemon, &dir);
    assert!(!out.status.success(), "pulled without credentials");
    let err = String::from_utf8_lossy(&out.stderr);
    let host = registry.host();
    assert!(
        err.contains(&format!("registry {host} refused access"))
            && err.contains(&format!("docker login {host}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // `docker login` would write this ("alice:s3cret" in base64).
    fs::create_dir_all(daemon.root.join("home/.docker")).unwrap();
    fs::write(
        daemon.root.join("home/.docker/config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let out = pull(&daemon, &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(pinned(&dir)["images"][&image]["digest"].is_string());
}

#[test]
fn two_concurrent_pulls_of_one_new_image_both_succeed_with_one_download() {
    let registry = Registry::start(None);
    let (image, _) = pushed(&registry, "shared", None);
    let daemon = Daemon::new();
    daemon.ok(&["status"]);
    let a = project(&daemon, "a", &image, "");
    let b = project(&daemon, "b", &image, "");
    let first = daemon.cmd().args(["pull", "-C"]).arg(&a).spawn().unwrap();
    let second = daemon.cmd().args(["pull", "-C"]).arg(&b).spawn().unwrap();
    for (child, dir) in [(first, &a), (second, &b)] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(pinned(dir)["images"][&image]["digest"].is_string());
    }
    assert_eq!(registry.blob_gets(), 2, "each blob once:\n{}", registry.log());
}

#[test]
fn pull_never_refuses_an_image_that_was_not_pulled() {
    let daemon = Daemon::new();
    let dir = project(&daemon, "n", "127.0.0.1:1/nothing:v1", "pull = \"never\"\n");
    let out = daemon.cmd().arg("up").current_dir(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not in the local store and `pull = \"never\"`"), "{err}");
}

#[test]
fn a_missing_image_and_an_unreachable_registry_each_say_so_in_one_line() {
    let registry = Registry::start(None);
    let daemon = Daemon::new();
    let image = format!("{}/nobody/here:v1", registry.host());
    let dir = project(&daemon, "missing", &image, "");
    let out = pull(&daemon, &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("image {image} not found in its registry")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Nothing listens on port 1.
    let dir = project(&daemon, "offline", "127.0.0.1:1/app:v1", "");
    let started = std::time::Instant::now();
    let out = pull(&daemon, &dir);
    // Retried a few times, not forever.
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach registry 127.0.0.1:1 for 127.0.0.1:1/app:v1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
