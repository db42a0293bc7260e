//! `up` of a service whose `image` is a registry reference, end to end as a throwaway user with
//! the setuid shim: the image is pulled from a loopback registry, pinned, run, and a second
//! project on the same image downloads nothing and starts from the same store.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use locald_tests::registry::{Registry, descriptor, umoci_image};
use locald_tests::{Privileged, privileged, wait_for};

struct UserProject {
    p: &'static Privileged,
    root: PathBuf,
    dir: PathBuf,
    home: PathBuf,
}

impl UserProject {
    /// A project `name` of the throwaway user; projects made with the same `home` share the
    /// user's daemon and image store.
    fn new(p: &'static Privileged, home: &Path, name: &str, toml: &str) -> Self {
        let root = home.join(name);
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("locald.toml"), toml).unwrap();
        locald_tests::chown_tree(home, p.user.uid, p.user.gid);
        Self { p, dir: root.clone(), root, home: home.to_owned() }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.p.locald_in(&self.home, &self.dir).args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        locald_tests::succeeded(args, self.run(args), || self.run(&["logs"]))
    }
}

fn user_home(p: &'static Privileged, name: &str) -> PathBuf {
    let home = p.user_dir(name);
    for sub in ["run", "state", "cache", "home"] {
        fs::create_dir(home.join(sub)).unwrap();
    }
    fs::set_permissions(home.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    home
}

fn get(port: u64) -> String {
    let out =
        Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/index.html")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn port(project: &UserProject) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&project.ok(&["status", "--json"])).unwrap();
    let p =
        status.as_array().unwrap().iter().find(|p| p["dir"] == project.dir.display().to_string()).cloned();
    let p = p.unwrap_or_else(|| status[0].clone());
    p["services"][0]["port"].as_u64().unwrap()
}

#[test]
fn up_pulls_a_registry_image_runs_it_and_a_second_project_downloads_nothing() {
    let Some(p) = privileged() else { return };
    let registry = Registry::start(None);
    let layout = registry.dir.path().join("layout");
    umoci_image(
        &layout,
        "v1",
        "amd64",
        "from the registry\n",
        &["sh", "httpd"],
        &["sh", "-c", "exec httpd -f -p $PORT -h /www"],
    );
    registry.push(&layout, "v1", "web", None);
    let image = format!("{}/web:v1", registry.host());
    let toml = |name: &str| {
        format!(
            "[project]\nname = \"{name}\"\n\n[services.web]\nimage = \"{image}\"\nstop_timeout = \"1s\"\nhealth_check = {{ http = \"/index.html\" }}\n"
        )
    };
    let home = user_home(p, "registry-up");
    let first = UserProject::new(p, &home, "one", &toml("one"));
    let out = first.ok(&["up"]);
    assert!(out.contains(&format!("image {image} pulled")), "{out}");
    assert_eq!(get(port(&first)), "from the registry\n", "the service serves the image's file");
    let pins: serde_json::Value =
        serde_json::from_slice(&fs::read(first.root.join(".locald/images.json")).unwrap()).unwrap();
    assert_eq!(pins["images"][&image]["digest"], descriptor(&layout, "v1")["digest"]);
    let downloads = registry.blob_gets();
    assert!(downloads >= 2, "{}", registry.log());

    // A second `up` of the same project and of another one: no blob downloaded again.
    first.ok(&["down"]);
    let out = first.ok(&["up"]);
    assert!(out.contains("up to date"), "{out}");
    let second = UserProject::new(p, &home, "two", &toml("two"));
    second.ok(&["up"]);
    assert_eq!(get(port(&second)), "from the registry\n");
    assert_eq!(registry.blob_gets(), downloads, "blobs downloaded again:\n{}", registry.log());

    // The pin holds: a new push under the same tag does not change a project's image silently.
    umoci_image(
        &layout,
        "v1",
        "amd64",
        "pushed later\n",
        &["sh", "httpd"],
        &["sh", "-c", "exec httpd -f -p $PORT -h /www"],
    );
    registry.push(&layout, "v1", "web", None);
    first.ok(&["down"]);
    first.ok(&["up"]);
    let served = wait_for(Duration::from_secs(5), || Some(get(port(&first))).filter(|s| !s.is_empty()));
    assert_eq!(
        served.as_deref(),
        Some("from the registry\n"),
        "the pinned image changed without `locald pull`"
    );
    // `locald pull` moves the pin; the next start uses the new image.
    first.ok(&["pull"]);
    first.ok(&["restart", "web"]);
    let served =
        wait_for(Duration::from_secs(10), || Some(get(port(&first))).filter(|s| s == "pushed later\n"));
    assert_eq!(served.as_deref(), Some("pushed later\n"), "`locald pull` did not refresh the image");
    first.ok(&["server", "stop"]);
}
