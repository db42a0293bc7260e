//! Image files with their real owners (issue 20). A layer's files belong to the container's
//! users: uid 101 in the layer must be uid 101 inside the container, which is the caller's
//! subordinate uid `start + 100` on the host. The caller cannot chown to those ids, but root of
//! a user namespace mapped like the caller's containers can. So unpacking, copying and removing
//! such trees runs in a helper: this process's own binary (the daemon enables it with
//! [`enable`]), started with [`HELPER_ARG`], which unshares a user namespace and waits while
//! Debian's setuid `newuidmap`/`newgidmap` (package `uidmap`, as rootless Podman and Buildah use)
//! write its maps after checking them against `/etc/subuid` and `/etc/subgid`. Nothing here is
//! privileged; the maps are exactly the ones the shim later allows the container.
//!
//! A user without an allocation, or without usable tools ([`crate::mapper`]: not installed, or
//! neither setuid root nor given `cap_setuid`/`cap_setgid`), and a process that never enabled the
//! helper (unit tests) unpack as before: every file the user's, container root's inside, so an
//! image whose `User` must own some of its files fails at run time. `locald doctor` says which
//! (`subid.tools`).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::identity::{Range, Subordinate};
use crate::layer::{Owners, Skipped};

/// The first argument that makes the binary enabled with [`enable`] run [`helper_main`].
pub const HELPER_ARG: &str = "__locald-userns-helper";

static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Lets this process run its unpacks, copies and removals of image trees in the helper `exe`
/// (a binary whose `main` hands [`HELPER_ARG`] to [`helper_main`]).
pub fn enable(exe: PathBuf) {
    let _ = HELPER.set(exe);
}

/// The user namespace a helper gets: `0 → the user` and `1… → the allocation`, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub uid: u32,
    pub gid: u32,
    pub uids: Range,
    pub gids: Range,
}

impl Mapping {
    /// A short name of the mapping, for cache keys: trees unpacked under another mapping hold
    /// other host ids.
    pub fn key(&self) -> String {
        format!("u{}-{}-g{}-{}", self.uids.start, self.uids.count, self.gids.start, self.gids.count)
    }
}

/// The helper and its mapping, when trees keep their owners: the helper is enabled, the user
/// has an allocation on both sides, and `newuidmap`/`newgidmap` are usable.
pub fn mapping() -> Option<(PathBuf, Mapping)> {
    let exe = HELPER.get()?;
    // Judged once: trees unpacked by one process all have the same owners (and cache key).
    static TOOLS: OnceLock<bool> = OnceLock::new();
    if !*TOOLS.get_or_init(|| crate::mapper::both().is_some()) {
        return None;
    }
    let uid = nix::unistd::getuid().as_raw();
    let sub = Subordinate::of_host_user(uid);
    let mapping = Mapping { uid, gid: nix::unistd::getgid().as_raw(), uids: sub.uids?, gids: sub.gids? };
    Some((exe.clone(), mapping))
}

/// How trees made now are owned.
pub fn owners() -> Owners {
    if mapping().is_some() { Owners::Kept } else { Owners::Caller }
}

/// Runs helper operation `args` in a user namespace with `mapping`; its stdout.
pub(crate) fn run(exe: &Path, mapping: &Mapping, args: &[&OsStr]) -> io::Result<Vec<u8>> {
    let mut child = Command::new(exe)
        .arg(HELPER_ARG)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::other(format!("starting the unpack helper {}: {e}", exe.display())))?;
    let pid = child.id().to_string();
    let mut stdout = child.stdout.take().expect("piped");
    let mut ready = [0u8; 1];
    // The helper writes one byte once it is in its new user namespace.
    let mapped = match stdout.read(&mut ready) {
        Ok(1) => map("newuidmap", &pid, mapping.uid, mapping.uids)
            .and_then(|()| map("newgidmap", &pid, mapping.gid, mapping.gids)),
        Ok(_) => Err(io::Error::other("the unpack helper ended before its user namespace was made")),
        Err(e) => Err(e),
    };
    if let Err(e) = mapped {
        let _ = child.kill();
        let output = child.wait_with_output()?;
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(match said.lines().last() {
            Some(line) => io::Error::other(format!("{e}: {line}")),
            None => e,
        });
    }
    child.stdin.take().expect("piped").write_all(b"g")?;
    let mut out = Vec::new();
    stdout.read_to_end(&mut out)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let line = said.lines().last().unwrap_or("no message").trim().to_owned();
        return Err(io::Error::other(line));
    }
    Ok(out)
}

/// `newuidmap PID 0 UID 1 1 START COUNT` (or newgidmap): the tools check the ranges themselves.
fn map(tool: &str, pid: &str, own: u32, range: Range) -> io::Result<()> {
    let output = Command::new(tool)
        .args([pid, "0", &own.to_string(), "1", "1", &range.start.to_string(), &range.count.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::other(format!(
                "{tool}: {e} — image files keep their owners through it: install Debian's `uidmap` package"
            ))
        })?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(io::Error::other(format!("{tool} refused: {}", said.trim())));
    }
    Ok(())
}

/// Removes the tree at `path`, in the helper when trees keep their owners (the user cannot remove
/// files of their subordinate ids themselves). A missing tree is fine.
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
        Err(_) => {}
    }
    let Some((exe, mapping)) = mapping() else {
        return std::fs::remove_dir_all(path);
    };
    run(&exe, &mapping, &[OsStr::new("remove"), path.as_os_str()]).map(drop)
}

/// The helper's side: called first thing in `main` (while the process has one thread, which
/// `unshare(CLONE_NEWUSER)` needs) with the arguments after [`HELPER_ARG`]. Returns the exit code.
pub fn helper_main(args: &[OsString]) -> i32 {
    match helper(args) {
        Ok(out) => {
            let mut stdout = io::stdout();
            let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
            0
        }
        Err(e) => {
            eprintln!("unpack helper: {e}");
            1
        }
    }
}

/// A user namespace of its own; only Linux has them (macOS runs containers in the Lima VM).
#[cfg(target_os = "linux")]
fn unshare_user() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| format!("a user namespace: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn unshare_user() -> Result<(), String> {
    Err("user namespaces need Linux".into())
}

fn helper(args: &[OsString]) -> Result<Vec<u8>, String> {
    unshare_user()?;
    let mut stdout = io::stdout();
    stdout.write_all(b"r").and_then(|()| stdout.flush()).map_err(|e| e.to_string())?;
    let mut go = [0u8; 1];
    if !matches!(io::stdin().read(&mut go), Ok(1)) || go[0] != b'g' {
        return Err("no maps were written".into());
    }
    let arg = |i: usize| args.get(i).map(PathBuf::from).ok_or_else(|| format!("argument {i} missing"));
    let op = args.first().and_then(|a| a.to_str()).unwrap_or_default();
    let skipped = match op {
        "unpack-layer" => {
            let digest = arg(2)?.to_string_lossy().into_owned();
            crate::unpack_layer_as(&arg(1)?, &digest, &arg(3)?, Owners::Kept).map_err(|e| e.to_string())?
        }
        "unpack-image" => {
            let (source, rootfs) = (arg(1)?, arg(2)?);
            let blobs = args[3..]
                .chunks(2)
                .map(|pair| match pair {
                    [path, digest] => Ok(crate::Blob {
                        path: PathBuf::from(path),
                        digest: Some(digest.to_string_lossy().into_owned()).filter(|d| d != "-"),
                    }),
                    _ => Err("blobs come with digests".to_owned()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            crate::unpack_layers_as(&source, &rootfs, &blobs, Owners::Kept).map_err(|e| e.to_string())?
        }
        "copy-tree" => {
            crate::copy::copy_tree_kept(&arg(1)?, &arg(2)?).map_err(|e| e.to_string())?;
            Skipped::default()
        }
        "remove" => {
            let path = arg(1)?;
            std::fs::remove_dir_all(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
            Skipped::default()
        }
        other => return Err(format!("unknown operation {other:?}")),
    };
    Ok(serde_json::to_vec(&skipped).expect("serializes"))
}
