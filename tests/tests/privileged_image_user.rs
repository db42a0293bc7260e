//! The image's `User` (issue 20) under `locald up`: with a subordinate allocation the service runs
//! as the image's uid, which is the allocation's start + uid − 1 on the host; without one the
//! start fails with one line saying how to add an allocation.
//!
//! The fixture user gets an allocation only for the length of the test, after the case without
//! one.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use locald_tests::{Privileged, privileged, text, wait_for};

const RANGE: (u32, u32) = (700_000, 65_536);

/// A `docker save`-style archive of busybox whose config says `User: 101`.
fn archive(path: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    let busybox = fs::read("/bin/busybox").expect("busybox-static");
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    layer.append_data(&mut header, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in ["sh", "id", "touch"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        layer.append_link(&mut header, format!("bin/{applet}"), "busybox").unwrap();
    }
    for dir in ["proc", "dev", "sys", "tmp", "etc", "data"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        header.set_cksum();
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty()).unwrap();
    }
    for (name, body) in [
        ("etc/passwd", "root:x:0:0::/:/bin/sh\napp:x:101:102::/:/bin/sh\n"),
        ("etc/group", "root:x:0:\napp:x:102:\nextra:x:103:app\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        layer.append_data(&mut header, name, body.as_bytes()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({ "config": { "Env": ["PATH=/bin"], "User": "app" } });
    let manifest = serde_json::json!([{ "Config": "config.json", "Layers": ["layer/layer.tar"] }]);
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("config.json", serde_json::to_vec(&config).unwrap()),
        ("layer/layer.tar", layer),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        outer.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    fs::write(path, outer.into_inner().unwrap()).unwrap();
}

struct Project {
    p: &'static Privileged,
    root: std::path::PathBuf,
}

impl Project {
    fn new(p: &'static Privileged, name: &str) -> Self {
        let root = p.user_dir(name);
        for sub in ["project", "run", "state", "cache", "home", "project/data"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(
            root.join("project/locald.toml"),
            "[project]\nname = \"imguser\"\n\n[services.job]\nimage = \"./app.tar\"\n\
             command = \"id -u > /data/uid; id -g > /data/gid; id -G > /data/groups; touch /data/f\"\n\
             volumes = [\"./data:/data\"]\nrestart = \"no\"\n\n\
             [services.over]\nimage = \"./app.tar\"\nuser = \"101:103\"\n\
             command = \"id -G > /data/over-groups\"\nvolumes = [\"./data:/data\"]\nrestart = \"no\"\n",
        )
        .unwrap();
        archive(&root.join("project/app.tar"));
        locald_tests::chown_tree(&root, p.user.uid, p.user.gid);
        // The image's user writes here.
        fs::set_permissions(root.join("project/data"), fs::Permissions::from_mode(0o777)).unwrap();
        Project { p, root }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.p
            .as_user(&self.p.bin("locald"))
            .env("HOME", self.root.join("home"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("LOCALD_SHIM", self.p.shim())
            .current_dir(self.root.join("project"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["server", "stop"]);
    }
}

/// The fixture user's allocation, removed on drop. The files are edited directly: `usermod`
/// refuses a user that has processes, and other suites run some as this user.
struct Allocation(String);

impl Allocation {
    fn line(&self) -> String {
        format!("{}:{}:{}", self.0, RANGE.0, RANGE.1)
    }

    fn add(user: &str) -> Self {
        let allocation = Allocation(user.to_owned());
        allocation.edit(true);
        allocation
    }

    fn edit(&self, present: bool) {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let old = fs::read_to_string(file).unwrap_or_default();
            let mut lines: Vec<String> =
                old.lines().filter(|l| *l != self.line()).map(str::to_owned).collect();
            if present {
                lines.push(self.line());
            }
            let temp = format!("{file}.locald-test");
            fs::write(&temp, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
            fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).unwrap();
            fs::rename(&temp, file).unwrap();
        }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.edit(false);
    }
}

#[test]
fn the_images_user_runs_the_service_through_the_users_allocation() {
    let Some(p) = privileged() else { return };
    // Without an allocation (one left by an aborted run is removed): a clear refusal, nothing
    // written.
    drop(Allocation(p.user.name.clone()));
    let project = Project::new(p, "img-user-none");
    let _ = project.run(&["up"]);
    let logs = wait_for(Duration::from_secs(10), || {
        let logs = text(&project.run(&["logs"]));
        // Each service refuses on its own; wait for job's line, whichever comes first.
        logs.lines().any(|l| l.contains("service job") && l.contains("usermod --add-subuids")).then_some(logs)
    })
    .unwrap_or_else(|| panic!("no allocation hint:\n{}", text(&project.run(&["logs"]))));
    assert!(logs.contains("service job") && logs.contains("container uid 101"), "{logs}");
    assert!(!project.root.join("project/data/uid").exists());
    drop(project);

    let _allocation = Allocation::add(&p.user.name);
    let project = Project::new(p, "img-user");
    let up = project.run(&["up"]);
    let data = project.root.join("project/data");
    let done = wait_for(Duration::from_secs(10), || {
        (data.join("f").exists()
            && fs::read_to_string(data.join("over-groups")).is_ok_and(|g| g.ends_with('\n')))
        .then_some(())
    });
    assert!(done.is_some(), "{}\nlogs:\n{}", text(&up), text(&project.run(&["logs"])));
    let read = |f: &str| fs::read_to_string(data.join(f)).unwrap().trim().to_owned();
    assert_eq!(read("uid"), "101");
    assert_eq!(read("gid"), "102");
    assert_eq!(read("groups"), "102 103", "supplementary groups from the image's /etc/group");
    assert_eq!(read("over-groups"), "103", "`user = \"101:103\"` in locald.toml overrides the image's User");
    let meta = fs::metadata(data.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (RANGE.0 + 100, RANGE.0 + 101), "start + id - 1 on the host");
}
