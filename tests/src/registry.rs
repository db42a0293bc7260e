//! A real registry on loopback for the registry suites: Debian's `docker-registry` (the CNCF
//! distribution server) with a config, storage and access log of its own, and images made with
//! `umoci` from a busybox rootfs and pushed with `skopeo`.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Registry {
    /// Starts a registry; with `user`, it asks for that user and password (htpasswd, bcrypt).
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        Self::start_with(user, None)
    }

    /// [`Registry::start`] serving HTTPS with `tls` (certificate chain and key PEM files).
    pub fn start_with(user: Option<(&str, &str)>, tls: Option<(&Path, &Path)>) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").is_file(),
            "the registry suites need Debian's docker-registry, skopeo and umoci (cargo xtask deps)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut auth = String::new();
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            fs::write(dir.path().join("htpasswd"), format!("{name}:{hash}\n")).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: locald-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let tls = tls
            .map(|(cert, key)| {
                format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
            })
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            dir.path().join("storage").display()
        );
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .args(["serve", &dir.path().join("config.yml").display().to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { dir, port, child };
        let up = crate::wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        assert!(up.is_some(), "the registry did not listen:\n{}", registry.log());
        registry
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Blob downloads served so far (GETs of `/v2/<name>/blobs/sha256:…`).
    pub fn blob_gets(&self) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).count()
    }

    /// The registry's own copy of blob `digest` (`sha256:…`).
    pub fn stored_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Pushes `layout:tag` (an OCI layout) as `name:tag`; `all`: an index with its images.
    pub fn push(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            command.args(["--dest-creds", creds]);
        }
        let out = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy failed: {}", crate::text(&out));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?} failed: {}", crate::text(&out));
}

/// Adds image `tag` to the OCI layout `layout` (created when missing) with umoci: a busybox
/// rootfs with `applets`, a file `/marker` holding `marker`, and `cmd` as its command.
pub fn umoci_image(layout: &Path, tag: &str, arch: &str, marker: &str, applets: &[&str], cmd: &[&str]) {
    if !layout.join("index.json").is_file() {
        run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    }
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["new", "--image", &image]));
    let bundle = layout.with_extension(format!("bundle-{tag}"));
    let _ = fs::remove_dir_all(&bundle);
    run(Command::new("umoci").args(["unpack", "--rootless", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    crate::busybox_rootfs(&rootfs, applets, &["proc", "dev", "sys", "tmp", "etc", "www"]);
    fs::write(rootfs.join("marker"), marker).unwrap();
    fs::write(rootfs.join("www/index.html"), marker).unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    let mut config = Command::new("umoci");
    config.args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        arch,
        "--config.env",
        "PATH=/bin",
    ]);
    config.args(["--config.workingdir", "/www"]);
    for arg in cmd {
        config.arg(format!("--config.cmd={arg}"));
    }
    run(&mut config);
    let _ = fs::remove_dir_all(&bundle);
}

/// The descriptor of `tag` in `layout`'s index.json.
pub fn descriptor(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
}

pub fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

/// Adds tag `tag` naming an image index over `entries` (tag, os, architecture, variant) of the
/// same layout.
pub fn index_of(layout: &Path, tag: &str, entries: &[(&str, &str, Option<&str>)]) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(image, arch, variant)| {
            let d = descriptor(layout, image);
            let mut platform = serde_json::json!({ "os": "linux", "architecture": arch });
            if let Some(v) = variant {
                platform["variant"] = (*v).into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d["digest"], "size": d["size"], "platform": platform,
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let digest = format!("sha256:{}", hex(&Sha256::digest(&index)));
    fs::write(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap()), &index).unwrap();
    let path = layout.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    top["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest, "size": index.len(),
        "annotations": { "org.opencontainers.image.ref.name": tag },
    }));
    fs::write(&path, serde_json::to_vec(&top).unwrap()).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test CA and a certificate it signed for 127.0.0.1, made with openssl in `dir`: returns
/// (CA certificate, server certificate, server key).
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (cert, key, csr) = (dir.join("registry.crt"), dir.join("registry.key"), dir.join("registry.csr"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=locald test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("ext.cnf");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}
