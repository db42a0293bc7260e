//! A cgroup v2 per service, when the user has a delegated subtree (their own cgroup directory
//! is theirs to write, e.g. a systemd user service with `Delegate=yes`). Then a stop also kills
//! processes that left the process group (`setsid`, double fork) through `cgroup.kill`.
//! Without delegation everything still works with process groups alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `<own cgroup>/locald-<owner>`: one subtree per daemon state dir.
pub struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// `None` unless cgroup v2 is mounted, our cgroup is ours to write, and `cgroup.kill` exists.
    pub fn detect(owner: &str) -> Option<Self> {
        if std::env::var_os("LOCALD_NO_CGROUP").is_some() {
            return None;
        }
        let mount = cgroup2_mount()?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))?;
        let dir = mount.join(own.trim_start_matches('/'));
        let meta = fs::metadata(&dir).ok()?;
        let writable = nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok();
        if meta.uid() != nix::unistd::getuid().as_raw() || !writable {
            return None;
        }
        let base = dir.join(format!("locald-{owner}"));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        // cgroup.kill (Linux 5.14) is what makes a cgroup worth having here.
        base.join("cgroup.kill").exists().then_some(Self { base })
    }

    pub fn create(&self, name: &str) -> io::Result<ServiceCgroup> {
        let dir = self.base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        ServiceCgroup::open(dir)
    }

    /// At daemon exit, with every service stopped: the subtree goes too.
    pub fn remove(&self) {
        self.kill_leftovers();
        let _ = fs::remove_dir(&self.base);
    }

    /// Kills and removes every service cgroup left by a previous daemon on this state dir.
    pub fn kill_leftovers(&self) {
        for entry in fs::read_dir(&self.base).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                kill_dir(&entry.path());
                remove_dir(&entry.path());
            }
        }
    }
}

pub struct ServiceCgroup {
    dir: PathBuf,
    /// The directory itself, open: what `clone3(CLONE_INTO_CGROUP)` creates a child in.
    fd: File,
}

impl ServiceCgroup {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        let fd = File::open(&dir)?;
        Ok(ServiceCgroup { dir, fd })
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// For a child that joins between fork and exec: writing "0" to it moves the writer.
    pub fn open_procs(&self) -> io::Result<File> {
        OpenOptions::new().write(true).open(self.dir.join("cgroup.procs"))
    }

    pub fn kill(&self) {
        kill_dir(&self.dir);
    }

    /// Best effort: a cgroup can only be removed once its last process is gone.
    pub async fn remove(&self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn kill_dir(dir: &Path) {
    if let Ok(mut file) = OpenOptions::new().write(true).open(dir.join("cgroup.kill")) {
        let _ = file.write_all(b"1");
    }
}

fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    locald_shim_protocol::mountinfo::entries(&mountinfo).find(|m| m.fstype == "cgroup2").map(|m| m.point)
}
