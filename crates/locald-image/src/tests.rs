//! Image unpacking against hand-built layers, hostile ones included.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

/// One tar entry; names are written raw so hostile paths (`..`) can be expressed.
enum Entry<'a> {
    File(&'a str, &'a str),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, data, link, mode): (&str, tar::EntryType, &[u8], Option<&str>, u32) = match entry {
            Entry::File(name, content) => (name, tar::EntryType::Regular, content.as_bytes(), None, 0o644),
            Entry::Dir(name, mode) => (name, tar::EntryType::Directory, b"", None, *mode),
            Entry::Symlink(name, target) => (name, tar::EntryType::Symlink, b"", Some(target), 0o777),
            Entry::Hardlink(name, target) => (name, tar::EntryType::Link, b"", Some(target), 0o644),
            Entry::CharDevice(name) => (name, tar::EntryType::Char, b"", None, 0o666),
        };
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn apply_all(root: &Path, layers: &[Vec<u8>]) -> Result<Skipped, LayerError> {
    let fd: OwnedFd = fs::File::open(root).unwrap().into();
    let mut modes = HashMap::new();
    let mut skipped = Skipped::default();
    for layer in layers {
        skipped
            .devices
            .extend(layer::apply(&fd, layer.as_slice(), &mut modes, layer::Owners::Caller)?.devices);
    }
    layer::apply_dir_modes(&fd, &modes, layer::Owners::Caller)?;
    Ok(skipped)
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&path).unwrap().display()));
            } else {
                out.push(rel);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
    let root = tempfile::tempdir().unwrap();
    let lower = tar_bytes(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/a", "a"),
        Entry::File("etc/b", "b"),
        Entry::Dir("dir/", 0o755),
        Entry::File("dir/x", "x"),
        Entry::Dir("usr/lib/", 0o755),
        Entry::File("usr/lib/z", "z"),
        Entry::Symlink("lib", "usr/lib"),
        Entry::Dir("tmp/", 0o1777),
    ]);
    let upper = tar_bytes(&[
        Entry::File("etc/.wh.a", ""),
        Entry::File("dir/new", "new"),
        Entry::File("dir/.wh..wh..opq", ""),
        // Through the merged-/usr symlink: must land in usr/lib, inside the root.
        Entry::File("lib/added", "added"),
        Entry::File("./etc/b", "b2"),
    ]);
    apply_all(root.path(), &[lower, upper]).unwrap();
    assert_eq!(
        tree(root.path()),
        [
            "dir/",
            "dir/new",
            "etc/",
            "etc/b",
            "lib -> usr/lib",
            "tmp/",
            "usr/",
            "usr/lib/",
            "usr/lib/added",
            "usr/lib/z"
        ]
    );
    assert_eq!(fs::read_to_string(root.path().join("etc/b")).unwrap(), "b2");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(root.path().join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
}

#[test]
fn parent_references_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let root = outside.path().join("root");
    fs::create_dir(&root).unwrap();
    for hostile in
        [tar_bytes(&[Entry::File("../escape", "x")]), tar_bytes(&[Entry::File("a/../../escape", "x")])]
    {
        assert!(matches!(apply_all(&root, &[hostile]), Err(LayerError::Escape { .. })));
    }
    let link = tar_bytes(&[Entry::Hardlink("passwd", "../../etc/passwd")]);
    assert!(matches!(apply_all(&root, &[link]), Err(LayerError::Escape { .. })));
    assert!(!outside.path().join("escape").exists());
}

#[test]
fn symlinks_in_a_layer_resolve_inside_the_root() {
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    fs::create_dir(&victim).unwrap();
    let root = host.path().join("root");
    fs::create_dir(&root).unwrap();
    let absolute = victim.display().to_string();
    // A link to an absolute host path resolves to that path *under the root*, which does not
    // exist there: the entry fails cleanly instead of writing on the host.
    let result =
        apply_all(&root, &[tar_bytes(&[Entry::Symlink("abs", &absolute), Entry::File("abs/pwned", "x")])]);
    assert!(matches!(result, Err(LayerError::Io { .. })), "{result:?}");
    // Relative `..` chains are clamped at the root.
    apply_all(
        &root,
        &[tar_bytes(&[Entry::Symlink("up", "../../../../../.."), Entry::File("up/pwned-too", "x")])],
    )
    .unwrap();
    // Absolute entry names are taken relative to the root.
    apply_all(&root, &[tar_bytes(&[Entry::File("/etc/absolute-name", "x")])]).unwrap();
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "a layer wrote outside the root");
    assert!(!host.path().join("pwned-too").exists());
    assert!(root.join("pwned-too").is_file(), "landed inside instead");
    assert!(root.join("etc/absolute-name").is_file());
}

#[test]
fn device_nodes_are_skipped() {
    let root = tempfile::tempdir().unwrap();
    let skipped =
        apply_all(root.path(), &[tar_bytes(&[Entry::CharDevice("dev/mem"), Entry::File("ok", "1")])])
            .unwrap();
    assert_eq!(skipped.devices, ["dev/mem"]);
    assert!(!root.path().join("dev/mem").exists());
    assert!(root.path().join("ok").exists());
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI layout with the given (already compressed or plain) layers.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha(bytes);
        fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        digest
    };
    let config =
        put(br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["A=1"],"WorkingDir":"/srv"}}"#);
    let layer_descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(l), "size": l.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": layer_descriptors,
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn an_oci_layout_unpacks_into_the_cache_once() {
    let project = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    oci_layout(
        &project.path().join("img"),
        &[gzip(&tar_bytes(&[Entry::File("bin/app", "v1")])), tar_bytes(&[Entry::File("bin/app", "v2")])],
    );
    let source = detect(project.path(), "img").unwrap();
    assert!(matches!(source, ImageSource::OciLayout(_)));
    let first = prepare(&source, cache.path()).unwrap();
    assert_eq!(fs::read_to_string(first.rootfs.join("bin/app")).unwrap(), "v2");
    assert!(first.id.starts_with("sha256:"));
    // A marker inside the cached rootfs survives a second prepare: nothing was unpacked again.
    fs::write(first.rootfs.join("marker"), "").unwrap();
    let second = prepare(&source, cache.path()).unwrap();
    assert_eq!(second.rootfs, first.rootfs);
    assert!(second.rootfs.join("marker").exists());
    // The image's own command comes along, from the cache the second time.
    for prepared in [&first, &second] {
        assert_eq!(prepared.defaults.argv(), ["/bin/app", "--serve"]);
        assert_eq!(prepared.defaults.env, ["A=1"]);
        assert_eq!(prepared.defaults.workdir.as_deref(), Some("/srv"));
    }
}

#[test]
fn a_tampered_layer_is_rejected_and_nothing_is_cached() {
    let project = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let layer = gzip(&tar_bytes(&[Entry::File("bin/app", "v1")]));
    let img = project.path().join("img");
    oci_layout(&img, std::slice::from_ref(&layer));
    let blob = img.join("blobs/sha256").join(&sha(&layer)[7..]);
    fs::write(&blob, gzip(&tar_bytes(&[Entry::File("bin/app", "evil")]))).unwrap();
    let err = prepare(&detect(project.path(), "img").unwrap(), cache.path()).unwrap_err();
    assert!(matches!(err, ImageError::Digest { .. }), "{err}");
    assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 0, "a half-made rootfs was left in the cache");
}

/// A `docker save`-style tarball of plain files at `path`.
fn docker_archive(path: &Path, files: &[(&str, &[u8])]) {
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        outer.append_data(&mut header, name, *data).unwrap();
    }
    fs::write(path, outer.into_inner().unwrap()).unwrap();
}

#[test]
fn a_docker_save_archive_unpacks() {
    let project = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let layer1 = tar_bytes(&[Entry::File("etc/os-release", "ID=test"), Entry::File("etc/old", "x")]);
    let layer2 = tar_bytes(&[Entry::File("etc/.wh.old", "")]);
    let manifest = br#"[{"Config":"c.json","RepoTags":["t:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    docker_archive(
        &project.path().join("image.tar"),
        &[
            ("manifest.json", &manifest[..]),
            ("c.json", &br#"{"config":{"Cmd":["sh","-c","run"]}}"#[..]),
            ("l1/layer.tar", &layer1),
            ("l2/layer.tar", &layer2),
        ],
    );
    let prepared = prepare(&detect(project.path(), "image.tar").unwrap(), cache.path()).unwrap();
    assert_eq!(tree(&prepared.rootfs), ["etc/", "etc/os-release"]);
    assert_eq!(prepared.defaults.argv(), ["sh", "-c", "run"]);
    assert!(
        !cache.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".staging"))
    );
}

#[test]
fn registry_references_get_a_clear_message() {
    let project = tempfile::tempdir().unwrap();
    let err = detect(project.path(), "postgres:16").unwrap_err();
    assert!(err.to_string().contains("only local images are supported"), "{err}");
    assert!(err.to_string().contains("docker save postgres:16"), "{err}");
    assert!(matches!(detect(project.path(), "./missing-dir").unwrap_err(), ImageError::Missing(_)));
}

#[test]
fn services_of_one_daemon_preparing_the_same_archive_at_once_get_whole_rootfs() {
    let project = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let big = "x".repeat(4 << 20);
    let layer = tar_bytes(&[Entry::Dir("bin/", 0o755), Entry::File("bin/app", &big)]);
    let manifest = br#"[{"Config":"c.json","Layers":["l/layer.tar"]}]"#;
    docker_archive(
        &project.path().join("image.tar"),
        &[("manifest.json", &manifest[..]), ("c.json", &b"{}"[..]), ("l/layer.tar", &layer)],
    );
    let source = detect(project.path(), "image.tar").unwrap();
    // Same process, same moment: what two image services of one project do on `up`.
    let results: Vec<Prepared> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| prepare(&source, cache.path()).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for prepared in &results {
        assert_eq!(fs::read_to_string(prepared.rootfs.join("bin/app")).unwrap().len(), big.len());
    }
    let left: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "only the finished image stays in the cache: {left:?}");
}
