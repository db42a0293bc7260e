//! `bundle run`: validate a caller's OCI bundle, then run it with the embedded libcontainer in a
//! user namespace mapped to the caller, staying its parent until it exits.
//!
//! libcontainer reads `config.json` by path, so it never sees the caller's file: the shim runs a
//! copy of the validated spec from its own state directory (`/run/locald/<uid>/`), which the
//! caller cannot write.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use locald_shim_protocol::bundle_policy::{self, bind_sources};
use locald_shim_protocol::cgroup_placement;
use locald_shim_protocol::overlay::UNAVAILABLE;
use locald_shim_protocol::protocol::BundleRunRequest;
use locald_shim_protocol::subid;
use locald_shim_protocol::validate::absolute_components;
use locald_shim_protocol::{CONTROL_FD, ShimError};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::cgroup_view;
use crate::privilege::{Caller, Root};
use crate::userns;
use crate::userpath::{AsCaller, is_regular, open_as_caller, own, require_owned_dir, stat};

const STATE_ROOT: &str = "/run/locald";
const MAX_CONFIG_BYTES: u64 = 1 << 20;
const MAX_REQUEST_BYTES: u64 = 64;

pub fn run(root: Root, request: &BundleRunRequest) -> Result<i32, ShimError> {
    let caller = root.caller();
    // Before anything is opened: a closed fd 3 would otherwise be reused by an fd of ours.
    let control = control_channel();
    // First, before the caller has had time to move the shim anywhere: where its cgroups are.
    let placement = cgroup_view::Placement::of_caller(caller.uid.as_raw())?;
    bundle_policy::container_id(&request.id)?;
    let bundle_path = absolute_components(&request.bundle)?;
    let bundle = open_as_caller(caller, &bundle_path, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    require_owned_dir(&bundle, caller, &bundle_path)?;

    let mut spec = read_spec(caller, &bundle)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let (uid_map, gid_map) = (linux.uid_mappings().clone(), linux.gid_mappings().clone());
    // The allocation files are read only when a map asks for more than the caller's own id.
    let allocations =
        if subid::uses_subordinate(uid_map.as_deref()) || subid::uses_subordinate(gid_map.as_deref()) {
            crate::subid_files::of_caller(caller)?
        } else {
            subid::Allocations::default()
        };
    bundle_policy::check_with(&spec, caller.uid.as_raw(), caller.gid.as_raw(), &request.id, &allocations)?;
    let rootfs = open_rootfs(caller, &bundle, &spec)?;
    let layers = crate::overlay::check(caller, &bundle, request)?;
    for source in bind_sources(&spec) {
        // The caller must be able to reach every bind source on their own.
        open_as_caller(caller, &absolute_components(&source)?, OFlag::O_PATH)?;
    }

    let state = state_dir(caller)?;
    // Everything from here on (the sweep of a stale run, libcontainer, the removal after exit)
    // sees the cgroup hierarchies through the caller's cgroups.
    placement.enter()?;
    remove_stale(&state, &request.id);
    clear_stale_cgroups(caller.uid.as_raw(), &request.id);
    cgroup_view::prepare_unified(caller.uid.as_raw(), &request.id)?;
    // The spec libcontainer will read: the validated one, rootfs pinned to the checked directory.
    let rootfs_path = fs::read_link(format!("/proc/self/fd/{}", rootfs.as_raw_fd()))
        .map_err(|e| ShimError::os("resolve rootfs", e))?;
    let mut root_section = spec.root().clone().unwrap_or_default();
    root_section.set_path(rootfs_path);
    spec.set_root(Some(root_section));
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(cgroup_view::spec_path(caller.uid.as_raw(), &request.id)));
    // The user namespace, with the checked maps, made here; libcontainer only joins it.
    let holder = userns::Holder::create(
        uid_map.as_deref().unwrap_or_default(),
        gid_map.as_deref().unwrap_or_default(),
        subid::uses_subordinate(gid_map.as_deref()),
    )?;
    let namespaces = linux.namespaces().clone().unwrap_or_default().into_iter().map(|mut ns| {
        if ns.typ() == LinuxNamespaceType::User {
            ns.set_path(Some(holder.path()));
        }
        ns
    });
    linux.set_namespaces(Some(namespaces.collect()));
    if let Some(layers) = &layers {
        // Inside the shim's private mount namespace: the container's view only.
        // Where the checked rootfs is, as the kernel names it (the pinned path of the spec).
        let pinned = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
        let rootfs_path = absolute_components(&pinned)?;
        if let Err(e) = crate::overlay::mount(caller, layers, &holder.path(), &rootfs, &rootfs_path) {
            if let Some(mut control) = control.as_ref().filter(|_| e.message.starts_with(UNAVAILABLE)) {
                let _ = writeln!(control, "{}", e.message);
            }
            return Err(e);
        }
    }
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    spec.set_linux(Some(linux));
    let copy = Claim::take(&state, caller.uid.as_raw(), &request.id)?;
    // Idmapped volumes, attached in this process's private mount namespace until it ends.
    let _volumes = crate::volume_idmap::stage(
        &mut spec,
        caller,
        &request.id,
        uid_map.as_deref().unwrap_or_default(),
        gid_map.as_deref().unwrap_or_default(),
    )?;
    copy.write(&spec)?;

    // The container is cloned from this process and keeps these groups: a group that denies
    // the caller denies the container too, and without CAP_SETGID it cannot drop them.
    crate::privilege::set_groups(caller.groups)?;
    // The copy is written with the limits the preamble lifted; the container runs with the caller's.
    let result = crate::preamble::restore_caller_limits()
        .and_then(|()| run_container(&state, &copy.dir, caller.uid.as_raw(), &request.id, control, holder));
    drop(copy);
    result
}

fn read_spec(caller: Caller, bundle: &OwnedFd) -> Result<Spec, ShimError> {
    let file = {
        let _identity = AsCaller::enter(caller);
        openat(
            Some(bundle.as_raw_fd()),
            "config.json",
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(own)
        .map_err(|e| ShimError::refused(format!("cannot open the bundle's config.json as the caller: {e}")))?
    };
    if !is_regular(&stat(&file)?) {
        return Err(ShimError::refused("config.json is not a regular file"));
    }
    let mut bytes = Vec::new();
    fs::File::from(file)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ShimError::os("read config.json", e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ShimError::refused("config.json is larger than 1 MiB"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ShimError::usage(format!("config.json: {e}")))
}

fn open_rootfs(caller: Caller, bundle: &OwnedFd, spec: &Spec) -> Result<OwnedFd, ShimError> {
    let relative = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    let _identity = AsCaller::enter(caller);
    let mut dir = bundle.try_clone().map_err(|e| ShimError::os("dup", e))?;
    for name in relative.iter() {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        dir = own(openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()).map_err(|e| {
            ShimError::refused(format!("rootfs {}: {e} (symlinks are not followed)", relative.display()))
        })?);
    }
    drop(_identity);
    let shown: Vec<OsString> = vec![relative.clone().into_os_string()];
    require_owned_dir(&dir, caller, &shown)?;
    Ok(dir)
}

/// `/run/locald/<uid>`: root-owned 0700, chosen by the shim, never by the caller.
fn state_dir(caller: Caller) -> Result<PathBuf, ShimError> {
    let base = Path::new(STATE_ROOT);
    let dir = base.join(caller.uid.to_string());
    for (path, mode) in [(base, 0o755), (dir.as_path(), 0o700), (&dir.join("bundles"), 0o700)] {
        match fs::DirBuilder::new().mode(mode).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ShimError::os(&format!("create {}", path.display()), e)),
        }
        let meta = fs::symlink_metadata(path).map_err(|e| ShimError::os(&path.display().to_string(), e))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(ShimError::refused(format!("{} is not a root-owned directory", path.display())));
        }
    }
    Ok(dir)
}

/// A container of the same id left by a killed shim: delete it (and its cgroup) first.
fn remove_stale(state: &Path, id: &str) {
    let dir = state.join(id);
    if dir.exists() {
        if let Ok(mut container) = Container::load(dir.clone()) {
            let _ = container.delete(true);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Cgroups at this container's path left by a killed run, or by another tool at our path. A
/// frozen one would freeze the new container forever, so each is thawed, emptied and removed.
/// True when none is left. Run inside the view of [`cgroup_view::Placement::enter`], where each
/// mount point shows the caller's cgroup, so this reaches nothing outside it.
fn clear_stale_cgroups(uid: u32, id: &str) -> bool {
    let relative = PathBuf::from(cgroup_placement::container_leaf(uid, id));
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let mounts = mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split(' ').next()?;
        let mount_point = left.split(' ').nth(4)?;
        (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    });
    let mut cleared = true;
    for mount in mounts {
        let dir = mount.join(&relative);
        if dir.is_dir() {
            cleared &= clear_cgroup(&dir);
        }
    }
    cleared
}

/// True when `dir` is gone.
fn clear_cgroup(dir: &Path) -> bool {
    // The usual case after a run: no task and no child left, so rmdir alone succeeds (it fails
    // with EBUSY otherwise, and then the cgroup is emptied below).
    if fs::remove_dir(dir).is_ok() {
        return true;
    }
    // Children first: a cgroup with children cannot be removed.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                clear_cgroup(&entry.path());
            }
        }
    }
    // A frozen task cannot die: thaw before killing (v1 freezer, then v2).
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    // Killed tasks leave the cgroup asynchronously; rmdir succeeds once they are gone.
    for _ in 0..600 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// This run's bundle copy, `bundles/<id>`, flocked for as long as the shim runs it. A copy whose
/// lock is free belongs to a shim that is gone (a caller may SIGKILL their own shim), so the
/// caller's root-owned data under `/run/locald/<uid>` is bounded by their live shims, each at most
/// [`MAX_CONFIG_BYTES`] of copy.
struct Claim {
    dir: PathBuf,
    lock: OwnedFd,
}

impl Claim {
    /// Under the caller's lock (the `bundles` directory itself, flocked): removes every copy and
    /// container state of the caller that no live shim holds, then claims `id`'s copy.
    fn take(state: &Path, uid: u32, id: &str) -> Result<Self, ShimError> {
        let bundles = state.join("bundles");
        let guard = locked_dir(&bundles, false)?.ok_or_else(|| ShimError::os("lock", "no lock"))?;
        sweep(state, &bundles, uid, id);
        let dir = bundles.join(id);
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| ShimError::os("create bundle copy", e))?;
        let lock = locked_dir(&dir, true)?
            .ok_or_else(|| ShimError::os("lock bundle copy", "held by another shim"))?;
        drop(guard);
        Ok(Claim { dir, lock })
    }

    fn write(&self, spec: &Spec) -> Result<(), ShimError> {
        let json = serde_json::to_vec(spec).map_err(|e| ShimError::os("serialize spec", e))?;
        if json.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ShimError::refused("config.json is larger than 1 MiB once validated"));
        }
        fs::write(self.dir.join("config.json"), json).map_err(|e| ShimError::os("write bundle copy", e))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Only the copy this run made: a later run of the same id may have replaced it.
        let ours = |st: nix::sys::stat::FileStat| {
            nix::sys::stat::stat(&self.dir)
                .is_ok_and(|now| (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino))
        };
        if nix::sys::stat::fstat(self.lock.as_raw_fd()).is_ok_and(ours) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `dir` opened and flocked exclusively; `None` when `try_only` and another process holds it.
fn locked_dir(dir: &Path, try_only: bool) -> Result<Option<OwnedFd>, ShimError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(dir, flags, Mode::empty())
        .map(own)
        .map_err(|e| ShimError::os(&dir.display().to_string(), e))?;
    let operation = if try_only { libc::LOCK_EX | libc::LOCK_NB } else { libc::LOCK_EX };
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(fd.as_raw_fd(), operation) } == 0 {
            return Ok(Some(fd));
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            nix::errno::Errno::EWOULDBLOCK if try_only => return Ok(None),
            other => return Err(ShimError::os(&format!("flock {}", dir.display()), other)),
        }
    }
}

/// Copies no live shim holds, and container states without a copy: left by killed shims. Their
/// containers (orphans nobody can stop any more) are deleted with them.
fn sweep(state: &Path, bundles: &Path, uid: u32, id: &str) {
    // Their processes are killed through the cgroup (libcontainer's delete leaves a running
    // orphan alive), then the state goes.
    let remove = |name: &str| {
        clear_stale_cgroups(uid, name);
        remove_stale(state, name);
    };
    let names = |dir: &Path| -> Vec<OsString> {
        fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name()).filter(|n| n != id).collect()
    };
    for name in names(bundles) {
        let copy = bundles.join(&name);
        // Held while we look: a live shim's (it unlocks only when it is done with the copy).
        if matches!(locked_dir(&copy, true), Ok(None)) {
            continue;
        }
        if let Some(name) = name.to_str() {
            remove(name);
        }
        let _ = fs::remove_dir_all(&copy);
    }
    for name in names(state) {
        if name != "bundles"
            && !bundles.join(&name).exists()
            && let Some(name) = name.to_str()
        {
            remove(name);
        }
    }
}

/// fd 3 when the daemon passed one: a unix socket. Anything else a caller happened to leave open
/// there (a file, a terminal) is not a control channel; tests and benchmarks run without one.
fn control_channel() -> Option<fs::File> {
    let st = nix::sys::stat::fstat(CONTROL_FD).ok()?;
    let is_socket = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
        == nix::sys::stat::SFlag::S_IFSOCK;
    if !is_socket {
        let _ = nix::unistd::close(CONTROL_FD);
        return None;
    }
    // SAFETY: fd 3 was kept open by the preamble for this subcommand and nothing else owns it.
    Some(fs::File::from(unsafe { OwnedFd::from_raw_fd(CONTROL_FD) }))
}

fn run_container(
    state: &Path,
    bundle: &Path,
    uid: u32,
    id: &str,
    control: Option<fs::File>,
    holder: userns::Holder,
) -> Result<i32, ShimError> {
    fn lc(what: &'static str) -> impl Fn(libcontainer::error::LibcontainerError) -> ShimError {
        move |e| ShimError::os(what, e)
    }
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(state)
        .map_err(lc("container state root"))?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(false)
        .build()
        .map_err(lc("create container"))?;
    // The container's init is in the user namespace now and keeps it alive.
    drop(holder);
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(ShimError::os("start container", e));
    }
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return Err(ShimError::os("start container", "no pid"));
    };
    if let Some(mut control) = control {
        // Pinned before anything can reap it (only this thread's wait_for does).
        let init = match Init::open(pid) {
            Ok(init) => init,
            Err(e) => {
                let _ = container.delete(true);
                return Err(e);
            }
        };
        let _ = writeln!(control, "started {pid}");
        let reader = control.try_clone().map_err(|e| ShimError::os("dup control fd", e))?;
        std::thread::spawn(move || relay_stop_requests(reader, init));
        let status = wait_for(pid);
        remove_exited(&mut container, state, uid, id);
        let _ = writeln!(control, "exited {status}");
        return Ok(status);
    }
    let status = wait_for(pid);
    remove_exited(&mut container, state, uid, id);
    Ok(status)
}

/// Once the container's init is reaped: its cgroups (anything still in them is killed) and its
/// state. This is what `Container::delete` does for a stopped container without hooks (the
/// policy allows none), but done over the one cgroup path the policy allowed: libcontainer's
/// cgroup v1 manager re-reads mountinfo and `/proc/self/cgroup` through a fresh procfs handle
/// for every controller, ~2 ms of every run on a hybrid host. Anything left over goes through
/// `delete` after all.
fn remove_exited(container: &mut Container, state: &Path, uid: u32, id: &str) {
    let dir = state.join(id);
    if !clear_stale_cgroups(uid, id) || (fs::remove_dir_all(&dir).is_err() && dir.exists()) {
        let _ = container.delete(true);
    }
}

/// Exit code of the container's init: its status, or 128 + the signal that killed it.
fn wait_for(pid: nix::unistd::Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// `SIGTERM`, `TERM` or `15`.
fn parse_signal(name: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(number) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    nix::sys::signal::Signal::from_str(&full).ok()
}

/// The container's init held by a pidfd: a signal through it can never reach a process that
/// got the pid after init was reaped.
struct Init(OwnedFd);

impl Init {
    fn open(pid: nix::unistd::Pid) -> Result<Self, ShimError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return Err(ShimError::os("pidfd_open of the container's init", std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        Ok(Init(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        // SAFETY: pidfd_send_signal with an open pidfd, a signal number, no siginfo and no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as i32,
                std::ptr::null::<u8>(),
                0,
            )
        };
    }
}

/// Lines on the control fd name signals for the container's init (as `docker stop` does: the
/// service's main process decides how to end its children). SIGKILL of init ends the container's
/// whole pid namespace; whatever else is left in its cgroup is swept by [`remove_exited`]. EOF means
/// the daemon is gone, and nothing may outlive it unnoticed, so the container is killed.
///
/// libcontainer's own `kill` is not used here: it freezes the cgroup around the signal and records
/// the container as stopped after any signal, and on a v1 hierarchy a request could be dropped
/// without the signal being sent.
fn relay_stop_requests(control: fs::File, init: Init) {
    let mut reader = BufReader::new(control);
    loop {
        // A request is a signal name; a line longer than that is cut, so a caller cannot make
        // this root process buffer without bound.
        let mut line = Vec::new();
        let name = match (&mut reader).take(MAX_REQUEST_BYTES).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => "SIGKILL".to_owned(),
            Ok(_) => String::from_utf8_lossy(&line).trim().to_owned(),
        };
        let Some(signal) = parse_signal(&name) else { continue };
        init.signal(signal);
        if signal == nix::sys::signal::Signal::SIGKILL {
            return;
        }
    }
}
