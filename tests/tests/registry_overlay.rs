//! Services of a pulled image start from an overlay of the store's layers, as the throwaway user
//! with the setuid shim: a second service copies nothing (its `.locald/containers/<svc>` holds
//! what it wrote, measured with `du`), the store's files stay as pulled after the containers
//! wrote over them, writes survive stop/start and `down` (not `down --volumes`), and where
//! overlayfs refuses the project's filesystem the daemon copies the rootfs and says so once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use locald_tests::registry::{Registry, umoci_image};
use locald_tests::{Privileged, privileged, text, wait_for};

/// Each start appends a line to `/runs` (in the container's root) and serves the count.
const SCRIPT: &str = "echo overwritten > /marker; echo run >> /runs; wc -l < /runs > /www/runs.html; \
                      exec httpd -f -p $PORT -h /www";

struct User {
    p: &'static Privileged,
    home: PathBuf,
    dir: PathBuf,
}

impl User {
    fn new(p: &'static Privileged, name: &str, project: Option<&Path>) -> User {
        let home = p.user_dir(name);
        for sub in ["run", "state", "cache", "home"] {
            fs::create_dir(home.join(sub)).unwrap();
        }
        fs::set_permissions(home.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let dir = project.map_or_else(|| home.join("project"), Path::to_owned);
        fs::create_dir_all(&dir).unwrap();
        locald_tests::chown_tree(&home, p.user.uid, p.user.gid);
        locald_tests::chown_tree(&dir, p.user.uid, p.user.gid);
        User { p, home, dir }
    }

    /// Two services of `image`; `name` differs per test, since ports are assigned by name and
    /// the tests' daemons run at once.
    fn toml(&self, name: &str, image: &str) {
        let service = |name: &str| {
            format!(
                "[services.{name}]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \"{SCRIPT}\"]\n\
                 stop_timeout = \"1s\"\nhealth_check = {{ http = \"/runs.html\" }}\n\n"
            )
        };
        let toml = format!("[project]\nname = \"{name}\"\n\n{}{}", service("a"), service("b"));
        fs::write(self.dir.join("locald.toml"), toml).unwrap();
        locald_tests::chown_tree(&self.dir, self.p.user.uid, self.p.user.gid);
    }

    fn run(&self, args: &[&str]) -> Output {
        self.p.locald_in(&self.home, &self.dir).args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        locald_tests::succeeded(args, self.run(args), || self.run(&["logs"]))
    }

    fn port(&self, service: &str) -> u64 {
        let status: serde_json::Value = serde_json::from_str(&self.ok(&["status", "--json"])).unwrap();
        let services = status[0]["services"].as_array().unwrap().clone();
        services.iter().find(|s| s["name"] == service).unwrap()["port"].as_u64().unwrap()
    }

    /// How many times `service`'s root has seen a start.
    fn runs(&self, service: &str) -> Option<u32> {
        let port = self.port(service);
        wait_for(Duration::from_secs(10), || {
            let out = Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{port}/runs.html")])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        })
    }

    fn container(&self, service: &str) -> PathBuf {
        self.dir.join(".locald/containers").join(service)
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.home.join("state/locald/daemon.log")).unwrap_or_default()
    }
}

fn du_kib(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn pushed_image(registry: &Registry) -> String {
    let layout = registry.dir.path().join("layout");
    umoci_image(&layout, "v1", "amd64", "from the registry\n", &["sh", "httpd", "echo", "wc"], &["sh"]);
    registry.push(&layout, "v1", "web", None);
    format!("{}/web:v1", registry.host())
}

/// The stored layer directories holding `/marker`.
fn stored_markers(user: &User) -> Vec<PathBuf> {
    let layers = user.home.join("cache/locald/oci/layers/sha256");
    fs::read_dir(&layers).unwrap().map(|e| e.unwrap().path().join("marker")).filter(|m| m.is_file()).collect()
}

#[test]
fn services_of_a_pulled_image_start_from_its_layers_and_keep_their_writes() {
    let Some(p) = privileged() else { return };
    let registry = Registry::start(None);
    let image = pushed_image(&registry);
    let user = User::new(p, "ov-services", None);
    user.toml("ov-services", &image);
    let out = user.ok(&["up"]);
    assert!(!out.contains("overlayfs cannot be used"), "{out}");
    assert_eq!(user.runs("a"), Some(1));
    assert_eq!(user.runs("b"), Some(1));

    // The second service copied nothing: what is under its directory is its writes and bundle.
    let b = user.container("b");
    let kib = du_kib(&b);
    assert!(kib < 200, "{kib} KiB under {} (busybox alone is ~1900)", b.display());
    assert!(!b.join("rootfs/bin/busybox").exists(), "the rootfs was copied");
    assert_eq!(fs::read_to_string(b.join("upper/marker")).unwrap(), "overwritten\n");
    // The store's files are as pulled, though both containers wrote over /marker.
    let markers = stored_markers(&user);
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert_eq!(fs::read_to_string(&markers[0]).unwrap(), "from the registry\n");

    // Writes survive stop/start and `down`; `down --volumes` removes them.
    user.ok(&["stop", "b"]);
    user.ok(&["start", "b"]);
    assert_eq!(user.runs("b"), Some(2), "b's writes did not survive stop/start");
    let out = user.ok(&["down"]);
    assert!(out.contains("kept what its containers wrote") && out.contains("down --volumes"), "{out}");
    user.ok(&["up"]);
    assert_eq!(user.runs("b"), Some(3), "`down` removed b's writes");
    let out = user.ok(&["down", "--volumes"]);
    assert!(out.contains("removed") && !out.contains("kept"), "{out}");
    assert!(!user.dir.join(".locald/containers").exists());
    user.ok(&["up"]);
    assert_eq!(user.runs("a"), Some(1), "`down --volumes` kept a's writes");
    assert_eq!(fs::read_to_string(&markers[0]).unwrap(), "from the registry\n");
    user.ok(&["server", "stop"]);
}

#[test]
fn where_overlayfs_refuses_the_project_the_rootfs_is_copied_and_up_says_so_once() {
    let Some(p) = privileged() else { return };
    let registry = Registry::start(None);
    let image = pushed_image(&registry);
    // The project lies on an overlayfs, which overlayfs takes as no upper.
    let base = p.scratch_dir("ov-fallback-mnt");
    for sub in ["l", "u", "w", "m"] {
        fs::create_dir(base.join(sub)).unwrap();
    }
    let options = format!("lowerdir={0}/l,upperdir={0}/u,workdir={0}/w", base.display());
    let mount =
        Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(base.join("m")).output();
    assert!(mount.unwrap().status.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(base.join("m"));
    let user = User::new(p, "ov-fallback", Some(&base.join("m/project")));
    user.toml("ov-fallback", &image);
    let out = user.ok(&["up"]);
    assert_eq!(out.matches("overlayfs cannot be used here").count(), 1, "{out}");
    assert_eq!(user.runs("a"), Some(1), "{}", text(&user.run(&["logs"])));
    assert_eq!(user.runs("b"), Some(1), "{}", text(&user.run(&["logs"])));
    for service in ["a", "b"] {
        assert!(user.container(service).join("rootfs/bin/busybox").is_file(), "{service} was not copied");
    }
    let log = user.daemon_log();
    assert_eq!(log.matches("overlayfs cannot be used here").count(), 1, "{log}");
    // Copied roots keep their writes across stop/start too; the next `up` says nothing again.
    user.ok(&["stop", "a"]);
    user.ok(&["start", "a"]);
    assert_eq!(user.runs("a"), Some(2), "{}", text(&user.run(&["logs"])));
    user.ok(&["down"]);
    let out = user.ok(&["up"]);
    assert!(!out.contains("overlayfs cannot be used"), "said twice: {out}");
    user.ok(&["server", "stop"]);
}
