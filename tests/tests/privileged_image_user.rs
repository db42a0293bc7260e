//! The image's `User` (issue 20) under `locald up`: with a subordinate allocation the service runs
//! as the image's uid, which is the allocation's start + uid − 1 on the host; without one the
//! start fails with one line saying how to add an allocation.
//!
//! The fixture user gets an allocation only for the length of the test, after the case without
//! one. The image's files keep their owners (issue 20 item 2): unpacked in a user namespace mapped
//! by `newuidmap`, uid 101 in a layer is the allocation's start + 100 on the host, in the cache
//! and in the container's copy; setuid bits and hard links survive; `down` removes that copy, so
//! the user removes the project directory as themselves.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use locald_tests::subid::Allocation;
use locald_tests::{Privileged, privileged, text, wait_for};

const RANGE: (u32, u32) = (700_000, 65_536);

/// Both tests give the fixture user the same allocation and take it away again.
static ALLOCATION: Mutex<()> = Mutex::new(());

/// A `docker save`-style archive of busybox whose config says `User: user` (when given), with
/// whatever `extra` adds to its layer.
fn archive(path: &Path, user: Option<&str>, extra: fn(&mut tar::Builder<Vec<u8>>)) {
    let mut layer = tar::Builder::new(Vec::new());
    let busybox = fs::read("/bin/busybox").expect("busybox-static");
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    layer.append_data(&mut header, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in ["sh", "id", "touch", "stat", "mv"] {
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
    extra(&mut layer);
    let layer = layer.into_inner().unwrap();
    let config = match user {
        Some(user) => serde_json::json!({ "config": { "Env": ["PATH=/bin"], "User": user } }),
        None => serde_json::json!({ "config": { "Env": ["PATH=/bin"] } }),
    };
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

const USERS_TOML: &str = "[project]\nname = \"imguser\"\n\n[services.job]\nimage = \"./app.tar\"\n\
     command = \"id -u > /data/uid; id -g > /data/gid; id -G > /data/groups; touch /data/f\"\n\
     volumes = [\"./data:/data\"]\nrestart = \"no\"\n\n\
     [services.over]\nimage = \"./app.tar\"\nuser = \"101:103\"\n\
     command = \"id -G > /data/over-groups\"\nvolumes = [\"./data:/data\"]\nrestart = \"no\"\n";

struct Project {
    p: &'static Privileged,
    root: PathBuf,
    /// The daemon copies rootfs instead of stacking an overlay (`LOCALD_NO_OVERLAY`).
    copy_roots: bool,
}

impl Project {
    fn new(p: &'static Privileged, name: &str) -> Self {
        Self::with(p, name, USERS_TOML, |root| archive(&root.join("project/app.tar"), Some("app"), |_| {}))
    }

    fn with(p: &'static Privileged, name: &str, toml: &str, image: impl FnOnce(&Path)) -> Self {
        let root = p.user_dir(name);
        for sub in ["project", "run", "state", "cache", "home", "project/data"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(root.join("project/locald.toml"), toml).unwrap();
        image(&root);
        locald_tests::chown_tree(&root, p.user.uid, p.user.gid);
        // The image's user writes here.
        fs::set_permissions(root.join("project/data"), fs::Permissions::from_mode(0o777)).unwrap();
        Project { p, root, copy_roots: false }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.p
            .as_user(&self.p.bin("locald"))
            .env("HOME", self.root.join("home"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("LOCALD_SHIM", self.p.shim())
            .envs(self.copy_roots.then_some(("LOCALD_NO_OVERLAY", "1")))
            // The last test removes the project; `server stop` then runs beside it.
            .current_dir(Some(self.root.join("project")).filter(|d| d.exists()).unwrap_or(self.root.clone()))
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

#[test]
fn the_images_user_runs_the_service_through_the_users_allocation() {
    let Some(p) = privileged() else { return };
    let _lock = ALLOCATION.lock().unwrap_or_else(|e| e.into_inner());
    // Without an allocation (one left by an aborted run is removed): a clear refusal, nothing
    // written.
    Allocation::remove(&p.user.name, RANGE);
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

    let _allocation = Allocation::add(&p.user.name, RANGE);
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
    // The volume is idmapped: what uid 101 writes is the user's on the host (not start + 100).
    for file in ["f", "uid", "over-groups"] {
        let meta = fs::metadata(data.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (p.user.uid, p.user.gid), "{file} is the user's on the host");
    }
    let rm = p.as_user(Path::new("/bin/rm")).arg(data.join("f")).output().unwrap();
    assert!(rm.status.success(), "the user removes the container user's file: {}", text(&rm));
}

/// An entry of `kind` at `path` owned by `uid:gid` with `mode`; `body` is a file's content or a
/// hard link's target.
fn entry(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    owner: (u64, u64),
    mode: u32,
    body: &str,
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_uid(owner.0);
    header.set_gid(owner.1);
    header.set_mode(mode);
    if kind == tar::EntryType::Link {
        header.set_size(0);
        tar.append_link(&mut header, path, body).unwrap();
    } else {
        header.set_size(if kind == tar::EntryType::Regular { body.len() as u64 } else { 0 });
        header.set_cksum();
        tar.append_data(&mut header, path, body.as_bytes()).unwrap();
    }
}

/// Files of uid 101 (group 102), a hard link, a setuid-root and a setuid-101 program.
fn owned_entries(tar: &mut tar::Builder<Vec<u8>>) {
    use tar::EntryType::{Directory, Link, Regular};
    entry(tar, "srv/", Directory, (101, 102), 0o750, "");
    entry(tar, "srv/data", Regular, (101, 102), 0o640, "kept\n");
    entry(tar, "srv/data-link", Link, (101, 102), 0o640, "srv/data");
    entry(tar, "srv/suid-app", Regular, (101, 102), 0o4710, "app\n");
    entry(tar, "bin/suid-root", Regular, (0, 0), 0o4755, "root\n");
}

const OWNERS_TOML: &str = "[project]\nname = \"owners\"\n\n[services.job]\nimage = \"./app.tar\"\n\
     command = \"stat -c '%u %g %a %h' /srv/data /srv/suid-app /bin/suid-root > /data/t && touch /srv/written && mv /data/t /data/stat\"\n\
     volumes = [\"./data:/data\"]\nrestart = \"no\"\n";

/// What the container saw, once it is written.
fn stat_inside(project: &Project) -> String {
    let path = project.root.join("project/data/stat");
    wait_for(Duration::from_secs(20), || fs::read_to_string(&path).ok())
        .unwrap_or_else(|| panic!("the job wrote nothing; logs:\n{}", text(&project.run(&["logs"]))))
}

/// `path` under the single unpacked image of the project's cache.
fn in_cache(project: &Project, path: &str) -> fs::Metadata {
    let images = project.root.join("cache/locald/images");
    let dirs: Vec<PathBuf> = fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| !d.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    fs::symlink_metadata(dirs[0].join("rootfs").join(path)).unwrap()
}

fn owner_mode(meta: &fs::Metadata) -> (u32, u32, u32) {
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn image_files_keep_their_owners_modes_and_links_through_the_allocation() {
    let Some(p) = privileged() else { return };
    let _lock = ALLOCATION.lock().unwrap_or_else(|e| e.into_inner());
    let make = |root: &Path| archive(&root.join("project/app.tar"), None, owned_entries);

    // Without an allocation, as before: every file the user's, modes and setuid bits kept.
    Allocation::remove(&p.user.name, RANGE);
    let project = Project::with(p, "img-owners-none", OWNERS_TOML, make);
    let _ = project.run(&["up"]);
    assert_eq!(stat_inside(&project), "0 0 640 2\n0 0 4710 1\n0 0 4755 1\n");
    let user = (p.user.uid, p.user.gid);
    assert_eq!(owner_mode(&in_cache(&project, "srv/data")), (user.0, user.1, 0o640));
    drop(project);

    let _allocation = Allocation::add(&p.user.name, RANGE);
    let (app_uid, app_gid) = (RANGE.0 + 100, RANGE.0 + 101);
    // The overlay root, then the copy made where overlayfs cannot be used: both keep the owners.
    for copy_roots in [false, true] {
        let mut project =
            Project::with(p, if copy_roots { "img-owners-copy" } else { "img-owners" }, OWNERS_TOML, make);
        project.copy_roots = copy_roots;
        let up = project.run(&["up"]);
        let inside = stat_inside(&project);
        assert_eq!(inside, "101 102 640 2\n101 102 4710 1\n0 0 4755 1\n", "copy {copy_roots}: {}", text(&up));
        let bundle = project.root.join("project/.locald/containers/job");
        let mut seen = vec![("cache", in_cache(&project, "srv/data"))];
        if copy_roots {
            seen.push(("copy", fs::metadata(bundle.join("rootfs/srv/data")).unwrap()));
            assert_eq!(
                owner_mode(&fs::metadata(bundle.join("rootfs/srv/suid-app")).unwrap()),
                (app_uid, app_gid, 0o4710)
            );
        } else {
            assert!(!bundle.join("rootfs/srv").exists(), "an overlay root copies nothing into the bundle");
        }
        for (what, meta) in seen {
            assert_eq!(
                owner_mode(&meta),
                (app_uid, app_gid, 0o640),
                "{what}: uid 101 is start + 100 on the host"
            );
            assert_eq!(meta.nlink(), 2, "{what}: the hard link is a link, not a copy");
        }
        assert_eq!(owner_mode(&in_cache(&project, "srv/suid-app")), (app_uid, app_gid, 0o4710));
        assert_eq!(
            owner_mode(&in_cache(&project, "bin/suid-root")),
            (user.0, user.1, 0o4755),
            "container root is the user"
        );
        assert_eq!(owner_mode(&in_cache(&project, "srv")), (app_uid, app_gid, 0o750));
        // The cache stays the user's alone: nobody else reaches a setuid file of their ids.
        let cache = fs::metadata(project.root.join("cache/locald")).unwrap();
        assert_eq!((cache.uid(), cache.mode() & 0o777), (user.0, 0o700));

        // down keeps what the container wrote (`/srv` of uid 101 holds a new file)...
        let written = bundle.join(if copy_roots { "rootfs/srv/written" } else { "upper/srv/written" });
        let down = project.run(&["down"]);
        assert!(down.status.success(), "{}", text(&down));
        assert!(text(&down).contains("`locald down --volumes` removes it"), "no hint: {}", text(&down));
        let srv = fs::metadata(written.parent().unwrap()).unwrap();
        assert_eq!(owner_mode(&srv), (app_uid, app_gid, 0o750), "copy {copy_roots}: the written /srv");
        assert!(written.exists(), "copy {copy_roots}: down dropped what the container wrote");
        // ...which `rm` of the user cannot remove; `down --volumes` removes it without root.
        let down = project.run(&["down", "--volumes"]);
        assert!(down.status.success(), "{}", text(&down));
        assert!(!bundle.exists(), "copy {copy_roots}: down --volumes left the container's files");
        let rm =
            p.as_user(Path::new("/bin/rm")).arg("-rf").arg(project.root.join("project")).output().unwrap();
        assert!(rm.status.success(), "{}", text(&rm));
        assert!(!project.root.join("project").exists());
    }
}
