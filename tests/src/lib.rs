//! Fixtures for the black-box suites: where the built binaries are, and for the privileged suite
//! a throwaway user plus the shim installed setuid root in a root-owned directory.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub mod daemon;
pub mod dashboard;
pub mod proxy;
pub mod registry;
pub mod subid;
pub mod webdriver;

/// Set by `.ci/run`: a privileged suite that cannot run fails instead of skipping.
pub const REQUIRE_PRIVILEGED: &str = "LOCALD_REQUIRE_PRIVILEGED";
/// Installed setuid shims live under here (root-owned chain: /, /var, /var/lib).
const INSTALL_ROOT: &str = "/var/lib/locald-tests";

/// `target/debug` (or release) of this build: the integration test binary runs from `deps/`.
pub fn built_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    let dir = if deps.ends_with("deps") { deps.parent().expect("target dir") } else { deps };
    dir.to_owned()
}

pub fn built_bin(name: &str) -> PathBuf {
    let path = built_bin_dir().join(name);
    assert!(path.is_file(), "{} is not built: run `cargo build --workspace --bins` first", path.display());
    path
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Everything a privileged test needs, set up once per test binary.
#[derive(Debug)]
pub struct Privileged {
    /// Root-owned 0755 directory holding the setuid shim and copies of the other binaries, so the
    /// throwaway user can execute them whatever the permissions of the checkout.
    pub dir: PathBuf,
    pub user: User,
    pub other_user: User,
}

impl Privileged {
    pub fn shim(&self) -> PathBuf {
        self.dir.join("locald-shim")
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh root-owned 0755 directory inside the install dir, for per-test shim variants.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// A directory owned by the throwaway user under the root-owned install dir: a project.
    pub fn user_dir(&self, name: &str) -> PathBuf {
        let dir = self.scratch_dir(name);
        chown(&dir, Some(self.user.uid), Some(self.user.gid)).unwrap();
        dir
    }

    /// A command running `program` as the throwaway user, with an empty environment.
    pub fn as_user(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.env_clear().env("PATH", "/usr/bin:/bin");
        std::os::unix::process::CommandExt::uid(&mut command, self.user.uid);
        std::os::unix::process::CommandExt::gid(&mut command, self.user.gid);
        command
    }

    /// `locald` as the throwaway user in `dir`, with every per-user directory under `home`
    /// (`home/`, `run/`, `state/`, `cache/`) and the suite's shim.
    pub fn locald_in(&self, home: &Path, dir: &Path) -> Command {
        let mut command = self.as_user(&self.bin("locald"));
        command
            .env("HOME", home.join("home"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("LOCALD_SHIM", self.shim())
            .current_dir(dir);
        command
    }

    /// `shim-caller` as the throwaway user: it drops privileges itself (after entering a fresh
    /// network namespace when asked), so it starts as root.
    pub fn caller(&self, netns: bool) -> Command {
        let mut command = Command::new(self.bin("shim-caller"));
        command.env_clear().env("LOCALD_SHIM", self.shim());
        if netns {
            command.arg("--netns");
        }
        command.args(["--uid", &self.user.uid.to_string(), "--gid", &self.user.gid.to_string()]);
        command
    }
}

/// The privileged fixture, or `None` (with a loud message) when not root and not required.
pub fn privileged() -> Option<&'static Privileged> {
    static FIXTURE: OnceLock<Privileged> = OnceLock::new();
    if !nix::unistd::geteuid().is_root() {
        if std::env::var(REQUIRE_PRIVILEGED).as_deref() == Ok("1") {
            panic!("the privileged suite must run as root ({REQUIRE_PRIVILEGED}=1) but euid is not 0");
        }
        eprintln!("SKIPPED: privileged test needs root (set {REQUIRE_PRIVILEGED}=1 to make this a failure)");
        return None;
    }
    Some(FIXTURE.get_or_init(set_up))
}

fn set_up() -> Privileged {
    let user = ensure_user("locald-test");
    let other_user = ensure_user("locald-test2");
    let root = Path::new(INSTALL_ROOT);
    fs::create_dir_all(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    remove_stale_runs(root);
    let dir = root.join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["locald", "locald-shim", "shim-caller"] {
        install(&built_bin(name), &dir.join(name), 0o755);
    }
    install(&built_bin("locald-shim"), &dir.join("locald-shim"), 0o4755);
    Privileged { dir, user, other_user }
}

/// Copies `source` to `target` as root:root with `mode` (set after chown, which clears setuid).
pub fn install(source: &Path, target: &Path, mode: u32) {
    fs::copy(source, target)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", source.display(), target.display()));
    chown(target, Some(0), Some(0)).unwrap();
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs from earlier test processes that are gone.
fn remove_stale_runs(root: &Path) {
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("run-").and_then(|p| p.parse::<i32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn ensure_user(name: &str) -> User {
    if lookup_user(name).is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd (package passwd) is needed for the privileged suite");
        // 9 = the user appeared meanwhile (another test binary created it).
        assert!(status.success() || status.code() == Some(9), "useradd {name}: {status}");
    }
    lookup_user(name).unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

fn lookup_user(name: &str) -> Option<User> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| User {
            name: name.to_owned(),
            uid: fields[2].parse().unwrap(),
            gid: fields[3].parse().unwrap(),
        })
    })
}

/// Brings up `lo` in the current (fresh) network namespace. Only socket and ioctl calls, so it
/// may run between fork and exec.
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a zeroed ifreq is a valid "no name, no flags" request; the name is copied within
    // bounds; the socket is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &request);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if result < 0 { Err(err) } else { Ok(()) }
    }
}

/// Gives `path` and everything below it to `uid:gid` (links themselves, never their targets).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A container rootfs at `rootfs`: Debian's static busybox, a link for each applet, and the
/// empty directories named.
pub fn busybox_rootfs(rootfs: &Path, applets: &[&str], dirs: &[&str]) {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is needed for the container suites");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for dir in dirs {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
}

/// stdout and stderr of a finished command, for assertion messages.
/// The stdout of `locald {args}` that gave `out`, which must have succeeded; else a failure
/// showing it and the project's logs.
pub fn succeeded(
    args: &[&str],
    out: std::process::Output,
    logs: impl FnOnce() -> std::process::Output,
) -> String {
    assert!(out.status.success(), "locald {args:?} failed:\n{}\nlogs:\n{}", text(&out), text(&logs()));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The value of a `key=value` line in a command's stdout.
pub fn field(out: &std::process::Output, key: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in output:\n{}", text(out)))
        .to_owned()
}

/// Polls `probe` until it yields, for states that have no notification (a process blocking in a
/// syscall, the kernel detaching a loop device); `None` after `timeout`.
/// `<shim> bundle run --bundle <bundle> --id <id>` (also after `shim-caller … exec`).
pub fn bundle_run<'c>(command: &'c mut Command, bundle: &Path, id: &str) -> &'c mut Command {
    command.args(["bundle", "run", "--bundle"]).arg(bundle).args(["--id", id])
}

/// Started with stdout and stderr piped, for a test that watches a container while it runs.
pub fn spawn_piped(command: &mut Command) -> Child {
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

pub fn wait_for<T>(timeout: std::time::Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
