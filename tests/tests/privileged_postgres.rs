//! A real image that refuses root (issue 20): Debian 12 with PostgreSQL 15 from Debian's
//! packages, made by `mmdebstrap` and wrapped by `umoci` as an OCI layout whose config says
//! `User=postgres`, run by `locald up` as the fixture user with a subordinate allocation. The
//! server becomes healthy (`pg_isready`), accepts a write, keeps it across `down`/`up` in an
//! idmapped volume, and after `down --volumes` the user deletes the whole project directory as
//! themselves.
//!
//! The image is built once per recipe: it is cached under `/var/cache/locald-tests/` by a hash of
//! the commands that make it (a few minutes to build, ~170 MB).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use locald_tests::subid::Allocation;
use locald_tests::{Privileged, privileged, text, wait_for};
use sha2::{Digest, Sha256};

const RANGE: (u32, u32) = (800_000, 65_536);
const CACHE: &str = "/var/cache/locald-tests";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The commands that make the image in `$WORK` (`layout/` is the result); their text is the
/// cache key.
fn recipe() -> Vec<Vec<String>> {
    let words = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
    vec![
        words(
            "mmdebstrap --quiet --variant=apt --include=postgresql-15 --format=tar bookworm $WORK/rootfs.tar",
        ),
        words("umoci init --layout $WORK/layout"),
        words("umoci new --image $WORK/layout:pg"),
        words("umoci raw add-layer --image $WORK/layout:pg $WORK/rootfs.tar"),
        vec![
            "umoci".into(),
            "config".into(),
            "--image".into(),
            "$WORK/layout:pg".into(),
            "--config.user".into(),
            "postgres".into(),
            "--config.env".into(),
            format!("PATH={PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"),
        ],
    ]
}

/// The cached OCI layout, built now if this recipe has none yet.
fn image() -> PathBuf {
    let recipe = recipe();
    let key = hex(&Sha256::digest(format!("{recipe:?}").as_bytes())[..8]);
    let done = Path::new(CACHE).join(format!("postgres-{key}"));
    if done.join("layout/index.json").is_file() {
        return done.join("layout");
    }
    fs::create_dir_all(CACHE).unwrap();
    let work = Path::new(CACHE).join(format!(".postgres-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).unwrap();
    for step in &recipe {
        let args: Vec<String> = step.iter().map(|a| a.replace("$WORK", work.to_str().unwrap())).collect();
        let out = Command::new(&args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
            panic!("{}: {e} (the suite installs mmdebstrap and umoci: cargo xtask test)", args[0])
        });
        assert!(out.status.success(), "{args:?}:\n{}", text(&out));
    }
    fs::remove_file(work.join("rootfs.tar")).unwrap();
    // The fixture user's daemon reads the layout.
    let out = Command::new("chmod").args(["-R", "a+rX"]).arg(&work).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&work, &done).unwrap();
    done.join("layout")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Project {
    p: &'static Privileged,
    root: PathBuf,
}

impl Project {
    fn dir(&self) -> PathBuf {
        self.root.join("project")
    }

    fn run(&self, args: &[&str]) -> Output {
        let dir = Some(self.dir()).filter(|d| d.exists()).unwrap_or(self.root.clone());
        self.p
            .as_user(&self.p.bin("locald"))
            .env("HOME", self.root.join("home"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("LOCALD_SHIM", self.p.shim())
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "locald {args:?}: {}\nlogs:\n{}",
            text(&out),
            text(&self.run(&["logs"]))
        );
        text(&out)
    }

    fn port(&self) -> u16 {
        let status: serde_json::Value =
            serde_json::from_slice(&self.run(&["status", "--json"]).stdout).unwrap();
        let db = status[0]["services"].as_array().unwrap().iter().find(|s| s["name"] == "db").unwrap();
        u16::try_from(db["port"].as_u64().unwrap()).unwrap()
    }

    /// `psql` from the host as the database's superuser; its output.
    fn sql(&self, port: u16, query: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-tAc", query])
            .output()
            .expect("psql (postgresql-client)");
        assert!(out.status.success(), "{query}: {}\nlogs:\n{}", text(&out), text(&self.run(&["logs"])));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Healthy by the service's own check, then by `pg_isready` from here.
    fn wait_healthy(&self) -> u16 {
        let port = self.port();
        let ready = wait_for(Duration::from_secs(60), || {
            let status = text(&self.run(&["status"]));
            status.contains("healthy").then_some(())
        });
        assert!(ready.is_some(), "db never healthy:\n{}", text(&self.run(&["logs"])));
        let out =
            Command::new("pg_isready").args(["-h", "127.0.0.1", "-p", &port.to_string()]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        port
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["server", "stop"]);
    }
}

const TOML: &str = r#"[project]
name = "pg"

[services.db]
image = "IMAGE"
command = "test -s /var/lib/pg/data/PG_VERSION || initdb --no-sync -D /var/lib/pg/data -U postgres --auth=trust; exec postgres -D /var/lib/pg/data -k /tmp -c listen_addresses=127.0.0.1 -p $PORT"
volumes = ["./pgdata:/var/lib/pg"]
health_check = { command = "pg_isready -h 127.0.0.1 -p $PORT", interval = "1s", start_period = "90s" }
start_timeout = "120s"
"#;

#[test]
fn postgres_from_debian_runs_as_its_user_keeps_its_data_and_leaves_nothing_root_owned() {
    let Some(p) = privileged() else { return };
    let layout = image();
    let _allocation = Allocation::add(&p.user.name, RANGE);
    let root = p.user_dir("postgres");
    for sub in ["project", "run", "state", "cache", "home"] {
        fs::create_dir(root.join(sub)).unwrap();
    }
    fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(root.join("project/locald.toml"), TOML.replace("IMAGE", layout.to_str().unwrap())).unwrap();
    locald_tests::chown_tree(&root, p.user.uid, p.user.gid);
    let project = Project { p, root };

    project.ok(&["up"]);
    let port = project.wait_healthy();
    project.sql(port, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('across down and up')");
    // initdb ran as postgres inside; through the idmapped volume its files are the user's.
    let version = fs::metadata(project.dir().join("pgdata/data/PG_VERSION")).unwrap();
    assert_eq!((version.uid(), version.gid()), (p.user.uid, p.user.gid));
    // The image's own passwd, in its unpacked copy in the cache (the container's root is an
    // overlay of it: nothing of the image is copied into the bundle).
    let images = project.root.join("cache/locald/images");
    let unpacked = fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path().join("rootfs/etc/passwd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no unpacked image in {}", images.display()));
    assert!(
        !project.dir().join(".locald/containers/db/rootfs/etc").exists(),
        "the image was copied into the bundle"
    );
    let postgres_uid = fs::read_to_string(unpacked)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("postgres:x:")?.split(':').next()?.parse::<u32>().ok())
        .unwrap();
    let server: Vec<i32> = locald_tests::daemon::pids_with_arg(&port.to_string())
        .into_iter()
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .collect();
    assert!(!server.is_empty(), "no postgres with -p {port}");
    let uid = fs::read_to_string(format!("/proc/{}/status", server[0])).unwrap();
    let uid: u32 = uid
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(uid, RANGE.0 + postgres_uid - 1, "postgres runs as its subordinate uid on the host");

    project.ok(&["down"]);
    project.ok(&["up"]);
    let port = project.wait_healthy();
    assert_eq!(project.sql(port, "SELECT v FROM kept"), "across down and up");
    // `down` keeps what the container wrote outside its volumes (files of the user's subordinate
    // ids, which `rm` cannot remove); `--volumes` removes them, without root.
    project.ok(&["down", "--volumes"]);
    assert!(!project.dir().join(".locald/containers").exists(), "down --volumes left the containers' files");

    let rm = p.as_user(Path::new("/bin/rm")).arg("-rf").arg(project.dir()).output().unwrap();
    assert!(rm.status.success(), "the user removes the project: {}", text(&rm));
    assert!(!project.dir().exists());
}
