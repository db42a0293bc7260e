//! Image services of `locald.toml` end to end: the daemon runs as a throwaway user, finds the
//! setuid shim through `LOCALD_SHIM`, prepares bundles from real images and runs them, stops
//! them through the shim's control fd, and leaves nothing behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use locald_tests::daemon::{pids_with_arg, pids_with_env};
use locald_tests::{Privileged, privileged, text, wait_for};

/// A project owned by the throwaway user, with that user's own daemon.
struct UserProject {
    p: &'static Privileged,
    root: PathBuf,
    dir: PathBuf,
}

impl UserProject {
    fn new(p: &'static Privileged, name: &str, toml: &str) -> Self {
        let root = p.user_dir(name);
        let dir = root.join("project");
        for sub in ["project", "run", "state", "cache", "home"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::set_permissions(root.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        fs::write(dir.join("locald.toml"), toml).unwrap();
        let project = Self { p, root, dir };
        project.chown();
        project
    }

    fn chown(&self) {
        locald_tests::chown_tree(&self.root, self.p.user.uid, self.p.user.gid);
    }

    fn locald(&self) -> Command {
        let mut command = self.p.as_user(&self.p.bin("locald"));
        command
            .env("HOME", self.root.join("home"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("XDG_STATE_HOME", self.root.join("state"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("LOCALD_SHIM", self.p.shim())
            .current_dir(&self.dir);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.locald().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "locald {args:?} failed:\n{}\nlogs:\n{}", text(&out), self.logs());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs"]);
        text(&out)
    }

    fn daemon_pid(&self) -> Option<i32> {
        pids_with_env("XDG_STATE_HOME", &self.root.join("state")).into_iter().next()
    }
}

impl Drop for UserProject {
    fn drop(&mut self) {
        let _ = self.run(&["server", "stop"]);
    }
}

const APPLETS: &[&str] = &["sh", "httpd", "id", "echo", "sleep", "cat", "test", "touch"];

/// A `docker save`-style archive of a busybox image whose own command is `cmd`.
fn busybox_archive(path: &Path, cmd: &[&str]) {
    let mut layer = tar::Builder::new(Vec::new());
    let busybox = fs::read("/bin/busybox").expect("busybox-static is needed for the container suite");
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    layer.append_data(&mut header, "bin/busybox", busybox.as_slice()).unwrap();
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        layer.append_link(&mut header, format!("bin/{applet}"), "busybox").unwrap();
    }
    for dir in ["proc", "dev", "sys", "tmp", "etc", "www"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        header.set_cksum();
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "config": { "Cmd": cmd, "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/www" },
    });
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

/// A plain rootfs directory with busybox.
fn busybox_dir(path: &Path) {
    locald_tests::busybox_rootfs(path, APPLETS, &["proc", "dev", "sys", "tmp", "etc"]);
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status[0]["services"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

/// The value of a cgroup file for the container `id`, from whichever hierarchy has it.
/// The container's cgroups: below this test process's own in each hierarchy, since the daemon it
/// starts, and so the shim, inherit them.
fn container_cgroups(uid: u32, id: &str) -> Vec<PathBuf> {
    use locald_shim_protocol::cgroup_placement as place;
    let memberships = place::parse_memberships(&fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
    let mounts = place::parse_cgroup_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap()).unwrap();
    let hierarchies = place::hierarchies(&memberships, &mounts).unwrap();
    hierarchies.iter().map(|h| place::container_dir(&h.caller, uid, id).unwrap()).collect()
}

fn cgroup_value(uid: u32, id: &str, files: &[&str]) -> Option<String> {
    container_cgroups(uid, id)
        .iter()
        .find_map(|dir| files.iter().find_map(|file| fs::read_to_string(dir.join(file)).ok()))
        .map(|value| value.trim().to_owned())
}

fn container_dirs(uid: u32, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let state = PathBuf::from(format!("/run/locald/{uid}/{id}"));
    if state.exists() {
        found.push(state);
    }
    found.extend(container_cgroups(uid, id).into_iter().filter(|dir| dir.exists()));
    found
}

fn process_uid(pid: i32) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The container id the daemon used, from its log note.
fn container_id(project: &UserProject, service: &str) -> String {
    let logs = project.logs();
    logs.lines()
        .filter(|l| l.starts_with(&format!("{service} |")))
        .find_map(|l| l.split("running container ").nth(1))
        .map(|rest| rest.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("no container note for {service} in:\n{logs}"))
}

#[test]
fn an_image_archive_runs_with_its_own_command_volumes_and_limits() {
    let Some(p) = privileged() else { return };
    let project = UserProject::new(
        p,
        "svc-archive",
        r#"[project]
name = "shop"

[services.web]
image = "./busybox.tar"
volumes = ["./site:/www:ro"]
memory = "64M"
pids = 32
stop_timeout = "1s"
health_check = { http = "/index.html" }

[services.job]
image = "./busybox.tar"
command = "id -u > /data/uid; echo \"$FROM_IMAGE $PORT\" > /data/env; pwd > /data/cwd; echo \"$NODE_EXTRA_CA_CERTS $SSL_CERT_FILE\" > /data/ca-env; cat \"$NODE_EXTRA_CA_CERTS\" > /data/ca; cat \"$SSL_CERT_FILE\" > /data/bundle"
volumes = ["./data:/data"]
restart = "no"
trust_local_ca = true
"#,
    );
    // No command for web: the image's own Cmd (busybox httpd) runs, on $PORT from locald.
    busybox_archive(&project.dir.join("busybox.tar"), &["sh", "-c", "exec httpd -f -p $PORT -h /www"]);
    fs::create_dir(project.dir.join("site")).unwrap();
    fs::write(project.dir.join("site/index.html"), "served from the host volume\n").unwrap();
    project.chown();

    project.ok(&["up"]);
    // `up` returns once job has started; its completion is only in the status.
    let status = wait_for(Duration::from_secs(10), || {
        let status: serde_json::Value = serde_json::from_str(&project.ok(&["status", "--json"])).unwrap();
        (service(&status, "job")["state"] == "completed").then_some(status)
    })
    .unwrap_or_else(|| panic!("job did not complete:\n{}", project.logs()));
    assert_eq!(service(&status, "web")["state"], "healthy", "{status}");

    // The service answers on its port with the file from the read-only volume.
    let port = service(&status, "web")["port"].as_u64().unwrap();
    let out =
        Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/index.html")]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served from the host volume\n", "{}", text(&out));

    // Root inside, the user outside; image env and locald's PORT both present; image WorkingDir.
    let data = project.dir.join("data");
    assert_eq!(fs::read_to_string(data.join("uid")).unwrap().trim(), "0");
    let meta = fs::metadata(data.join("uid")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (p.user.uid, p.user.gid), "written as the user on the host");
    let job_port = service(&status, "job")["port"].as_u64().unwrap();
    assert_eq!(fs::read_to_string(data.join("env")).unwrap().trim(), format!("yes {job_port}"));
    assert_eq!(fs::read_to_string(data.join("cwd")).unwrap().trim(), "/www");
    // trust_local_ca: the user's CA and the bundle are mounted read-only into the container.
    assert_eq!(
        fs::read_to_string(data.join("ca-env")).unwrap().trim(),
        "/etc/ssl/locald/ca.pem /etc/ssl/locald/ca-bundle.pem"
    );
    let ca = fs::read_to_string(project.ok(&["ca"]).trim()).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(fs::read_to_string(data.join("ca")).unwrap(), ca, "the CA inside is the user's");
    assert!(fs::read_to_string(data.join("bundle")).unwrap().contains(&ca), "the bundle holds the CA");
    let httpd = pids_with_arg(&port.to_string());
    assert_eq!(httpd.len(), 1, "one httpd with -p {port}");
    assert_eq!(process_uid(httpd[0]), p.user.uid, "the container's process is the user on the host");

    // Limits from locald.toml on the container's cgroup.
    let id = container_id(&project, "web");
    let memory = cgroup_value(p.user.uid, &id, &["memory.max", "memory.limit_in_bytes"]);
    assert_eq!(memory.as_deref(), Some("67108864"), "memory limit of {id}");
    assert_eq!(cgroup_value(p.user.uid, &id, &["pids.max"]).as_deref(), Some("32"), "pids limit of {id}");

    // The bundle lives in the project, beside a .gitignore; the image was unpacked once.
    let bundle = project.dir.join(".locald/containers/web");
    // An overlay root: the image's files stay in the cache, the bundle holds only the writes.
    assert!(bundle.join("upper").is_dir(), "no upper directory in {}", bundle.display());
    assert!(!bundle.join("rootfs/bin/busybox").exists(), "the image was copied into the bundle");
    assert_eq!(fs::read_to_string(project.dir.join(".locald/.gitignore")).unwrap(), "*\n");
    assert_eq!(fs::read_dir(project.root.join("cache/locald/images")).unwrap().count(), 1);

    // down: nothing of the containers remains.
    project.ok(&["down"]);
    assert!(pids_with_arg(&port.to_string()).is_empty(), "httpd survived down");
    assert_eq!(container_dirs(p.user.uid, &id), Vec::<PathBuf>::new(), "state or cgroup left behind");

    // up again keeps what the container wrote instead of starting from the image again.
    fs::write(bundle.join("upper/kept"), "").unwrap();
    project.ok(&["up"]);
    assert!(bundle.join("upper/kept").exists(), "the container's writes were dropped");
    assert!(project.logs().contains("keeping the container's files"));
    project.ok(&["down"]);
}

#[test]
fn the_stop_signal_reaches_the_container_through_the_shim() {
    let Some(p) = privileged() else { return };
    let project = UserProject::new(
        p,
        "svc-stop",
        r#"[services.worker]
image = "./rootfs"
command = "trap 'echo term > /data/stopped; exit 0' TERM; touch /data/ready; while :; do sleep 5 & wait $!; done"
volumes = ["./data:/data"]
stop_timeout = "30s"
health_check = { command = "test -f data/ready", interval = "100ms" }
"#,
    );
    busybox_dir(&project.dir.join("rootfs"));
    project.chown();
    project.ok(&["up"]);
    let id = container_id(&project, "worker");
    let started = Instant::now();
    project.ok(&["down"]);
    // The trap ran: SIGTERM got in, and well before the 30 s after which SIGKILL would come.
    assert_eq!(fs::read_to_string(project.dir.join("data/stopped")).unwrap().trim(), "term");
    assert!(started.elapsed() < Duration::from_secs(20), "down waited for the SIGKILL timeout");
    assert!(!project.logs().contains("sending SIGKILL"), "{}", project.logs());
    assert_eq!(container_dirs(p.user.uid, &id), Vec::<PathBuf>::new());
}

#[test]
fn a_killed_daemon_takes_its_containers_with_it() {
    let Some(p) = privileged() else { return };
    let token = format!("{}", 4000 + std::process::id() % 1000);
    let project = UserProject::new(
        p,
        "svc-orphan",
        &format!(
            "[services.sleeper]\nimage = \"./rootfs\"\ncommand = [\"sleep\", \"{token}\"]\nport = false\n"
        ),
    );
    busybox_dir(&project.dir.join("rootfs"));
    project.chown();
    project.ok(&["up"]);
    let sleeper = locald_tests::daemon::wait_pids(&token, 1)[0];
    assert_eq!(process_uid(sleeper), p.user.uid);
    let id = container_id(&project, "sleeper");
    let daemon = project.daemon_pid().expect("the user's daemon runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The shim sees EOF on its control fd and kills the container.
    let gone = wait_for(Duration::from_secs(10), || {
        (pids_with_arg(&token).is_empty() && container_dirs(p.user.uid, &id).is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "the container outlived its daemon: pids {:?}, dirs {:?}",
        pids_with_arg(&token),
        container_dirs(p.user.uid, &id)
    );
}

#[test]
fn root_owned_leftovers_in_an_old_bundle_are_removed_through_the_shim() {
    let Some(p) = privileged() else { return };
    let project = UserProject::new(
        p,
        "svc-leftovers",
        "[services.once]\nimage = \"./rootfs\"\ncommand = \"echo ran > /data/ran\"\nvolumes = [\"./data:/data\"]\nrestart = \"no\"\n",
    );
    busybox_dir(&project.dir.join("rootfs"));
    // What a crashed runtime can leave: a root-owned directory the user cannot empty.
    let stale = project.dir.join(".locald/containers/once/rootfs/var/lib/stale");
    fs::create_dir_all(&stale).unwrap();
    project.chown();
    fs::write(stale.join("root-file"), "").unwrap();
    std::os::unix::fs::chown(&stale, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(stale.join("root-file"), Some(0), Some(0)).unwrap();

    project.ok(&["up"]);
    assert!(!stale.exists(), "the old bundle was replaced");
    let completed = wait_for(Duration::from_secs(10), || {
        let status: serde_json::Value = serde_json::from_str(&project.ok(&["status", "--json"])).unwrap();
        (service(&status, "once")["state"] == "completed").then_some(())
    });
    assert!(completed.is_some(), "{}", project.logs());
    assert_eq!(fs::read_to_string(project.dir.join("data/ran")).unwrap().trim(), "ran");
    project.ok(&["down"]);
}
