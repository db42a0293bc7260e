//! Applying one image layer (a tar stream) onto a rootfs directory, safely: every path is
//! resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink planted by an earlier entry or layer
//! resolves inside the rootfs, never on the host; `..` is refused; device nodes are skipped.
//! Whiteouts (`.wh.<name>`) and opaque directories (`.wh..wh..opq`) follow the OCI image spec.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, symlinkat, unlinkat};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry {path:?} escapes the image root")]
    Escape { path: String },
    #[error("layer entry {path:?}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("reading the layer: {0}")]
    Tar(std::io::Error),
}

/// What was left out of a layer on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub devices: Vec<String>,
    /// Entries whose owner lies beyond the user's allocation: left to container root.
    #[serde(default)]
    pub unmapped: Vec<String>,
}

/// What to do with whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Remove what they hide: the layer is applied onto the layers below it.
    Apply,
    /// Keep them in overlayfs' own form, so the layer directory can be a lower as it is: a
    /// whiteout becomes a 0:0 character device of the hidden name (which any user may make since
    /// Linux 5.8; where the kernel refuses, an empty `.wh.<name>` marker file stays instead), an
    /// opaque directory gets `user.overlay.opaque=y` (read with the `userxattr` mount option).
    Keep,
}

/// Whose files the unpacked tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// Every file the unpacking user's, each kept owner-writable (and directories owner-rwx) so
    /// that user can always replace and remove them: unpacking outside any user namespace.
    Caller,
    /// The owners, groups and exact modes (setuid bits included) the layer says: unpacking as
    /// root of a user namespace mapped like the user's containers, where the layer's ids are
    /// the container's.
    Kept,
}

/// Applies a (decompressed) tar layer onto `root`. Directory modes are returned, to be applied
/// once all layers are in place (a 0555 directory must stay writable while unpacking).
pub fn apply(
    root: &OwnedFd,
    layer: impl Read,
    modes: &mut HashMap<PathBuf, u32>,
    owners: Owners,
) -> Result<Skipped, LayerError> {
    apply_with(root, layer, modes, Whiteouts::Apply, owners)
}

/// [`apply`], with the choice of what whiteouts do.
pub fn apply_with(
    root: &OwnedFd,
    layer: impl Read,
    modes: &mut HashMap<PathBuf, u32>,
    whiteouts: Whiteouts,
    owners: Owners,
) -> Result<Skipped, LayerError> {
    let mut archive = tar::Archive::new(layer);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut skipped = Skipped::default();
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(path) = normalize(&raw).map_err(|()| LayerError::Escape { path: shown.clone() })? else {
            continue;
        };
        let io = |source: std::io::Error| LayerError::Io { path: shown.clone(), source };
        let errno = |e: Errno| LayerError::Io { path: shown.clone(), source: e.into() };
        let (parent, name) = split(&path);
        let name_str = name.to_string_lossy();

        if whiteouts == Whiteouts::Keep && name_str == OPAQUE {
            let dir = ensure_dir(root, &parent).map_err(errno)?;
            mark_opaque(&dir).map_err(io)?;
            continue;
        }
        if whiteouts == Whiteouts::Keep
            && let Some(hidden) = name_str.strip_prefix(WHITEOUT)
        {
            let dir = ensure_dir(root, &parent).map_err(errno)?;
            let hidden = OsStr::new(hidden);
            remove_entry(&dir, hidden).map_err(io)?;
            if overlay_whiteout(&dir, hidden) {
                created.insert(parent.join(hidden));
                continue;
            }
            remove_entry(&dir, name).map_err(io)?;
            let flags =
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::from_bits_truncate(0o600))
                .map_err(errno)?;
            // SAFETY: fd was just returned by openat and is owned by no one else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            created.insert(path);
            continue;
        }
        if name_str == OPAQUE {
            let dir = ensure_dir(root, &parent).map_err(errno)?;
            clear_dir(&dir, &parent, &created).map_err(io)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            let dir = ensure_dir(root, &parent).map_err(errno)?;
            remove_entry(&dir, OsStr::new(hidden)).map_err(io)?;
            continue;
        }

        let dir = ensure_dir(root, &parent).map_err(errno)?;
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let owner = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        match header.entry_type() {
            tar::EntryType::Directory => {
                match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) if is_dir(&dir, name) => {}
                    Err(Errno::EEXIST) => {
                        remove_entry(&dir, name).map_err(io)?;
                        mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755))
                            .map_err(errno)?;
                    }
                    Err(e) => return Err(errno(e)),
                }
                if owners == Owners::Kept {
                    chown_entry(&dir, name, owner, &mut skipped, &shown).map_err(errno)?;
                }
                modes.insert(path.clone(), mode);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_entry(&dir, name).map_err(io)?;
                let flags =
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd =
                    nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::from_bits_truncate(0o600))
                        .map_err(errno)?;
                // SAFETY: fd was just returned by openat and is owned by no one else.
                let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                std::io::copy(&mut entry, &mut file).map_err(io)?;
                let mode = match owners {
                    // Owner keeps write access while later layers may replace the file.
                    Owners::Caller => mode | 0o600,
                    Owners::Kept => {
                        chown_entry(&dir, name, owner, &mut skipped, &shown).map_err(errno)?;
                        mode
                    }
                };
                // After the chown, which clears setuid and setgid bits.
                let mode = Mode::from_bits_truncate(mode as nix::libc::mode_t);
                nix::sys::stat::fchmod(file.as_raw_fd(), mode).map_err(errno)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| io(std::io::Error::other("symlink without target")))?;
                remove_entry(&dir, name).map_err(io)?;
                // Stored verbatim: it is only ever resolved inside the container (or IN_ROOT here).
                symlinkat(OsStr::from_bytes(&target), Some(dir.as_raw_fd()), name).map_err(errno)?;
                if owners == Owners::Kept {
                    chown_entry(&dir, name, owner, &mut skipped, &shown).map_err(errno)?;
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| io(std::io::Error::other("hard link without target")))?;
                let target = normalize(&target)
                    .map_err(|()| LayerError::Escape { path: shown.clone() })?
                    .ok_or_else(|| LayerError::Escape { path: shown.clone() })?;
                let (target_parent, target_name) = split(&target);
                let target_dir = open_in_root(root, &target_parent).map_err(errno)?;
                remove_entry(&dir, name).map_err(io)?;
                linkat(
                    Some(target_dir.as_raw_fd()),
                    target_name,
                    Some(dir.as_raw_fd()),
                    name,
                    AtFlags::empty(),
                )
                .map_err(errno)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Never created: the container gets its /dev from the runtime.
                skipped.devices.push(shown);
                continue;
            }
            _ => continue,
        }
        created.insert(path);
    }
    Ok(skipped)
}

/// Gives `name` in `dir` the layer's owner, never following a symlink. An id the namespace does
/// not map (beyond the user's allocation) leaves the entry with container root, noted.
fn chown_entry(
    dir: &OwnedFd,
    name: &OsStr,
    (uid, gid): (u64, u64),
    skipped: &mut Skipped,
    shown: &str,
) -> Result<(), Errno> {
    let id = |n: u64| u32::try_from(n).ok();
    let (Some(uid), Some(gid)) = (id(uid), id(gid)) else {
        skipped.unmapped.push(shown.to_owned());
        return Ok(());
    };
    match nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            skipped.unmapped.push(shown.to_owned());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Applies the recorded directory modes, deepest first.
pub fn apply_dir_modes(
    root: &OwnedFd,
    modes: &HashMap<PathBuf, u32>,
    owners: Owners,
) -> Result<(), LayerError> {
    let mut dirs: Vec<(&PathBuf, &u32)> = modes.iter().collect();
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mode) in dirs {
        let (parent, name) = split(path);
        let Ok(dir) = open_in_root(root, &parent) else { continue };
        let mode = match owners {
            // Keep the owner's rwx so the user can always remove their own cache.
            Owners::Caller => *mode | 0o700,
            Owners::Kept => *mode,
        };
        let mode = Mode::from_bits_truncate(mode as nix::libc::mode_t);
        match fchmodat(Some(dir.as_raw_fd()), name, mode, FchmodatFlags::NoFollowSymlink) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(LayerError::Io { path: path.display().to_string(), source: e.into() }),
        }
    }
    Ok(())
}

/// `./a/b/` → `a/b`; `None` for the root itself; `Err` for `..` anywhere.
fn normalize(raw: &[u8]) -> Result<Option<PathBuf>, ()> {
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn split(path: &Path) -> (PathBuf, &OsStr) {
    (
        path.parent().map(Path::to_owned).unwrap_or_default(),
        path.file_name().expect("normalized paths have a name"),
    )
}

/// Opens the directory `path` below `dir` as if `dir` were `/`.
#[cfg(target_os = "linux")]
fn open_dir_in_root(dir: &OwnedFd, path: &Path) -> Result<OwnedFd, Errno> {
    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir.as_raw_fd(), path, how)?;
    // SAFETY: fd was just returned by openat2 and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Without `RESOLVE_IN_ROOT` a layer cannot be unpacked safely, so it is not unpacked at all:
/// containers run only on Linux (macOS runs them in the Lima VM), and `up` refuses image
/// services before any image is opened.
#[cfg(not(target_os = "linux"))]
fn open_dir_in_root(_dir: &OwnedFd, _path: &Path) -> Result<OwnedFd, Errno> {
    Err(Errno::ENOSYS)
}

fn open_in_root(root: &OwnedFd, path: &Path) -> Result<OwnedFd, Errno> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    open_dir_in_root(root, path)
}

/// Opens `path` under the root, creating missing directories on the way.
fn ensure_dir(root: &OwnedFd, path: &Path) -> Result<OwnedFd, Errno> {
    match open_in_root(root, path) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let mut dir = open_in_root(root, Path::new(""))?;
    for component in path.components() {
        let name = component.as_os_str();
        match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        dir = open_dir_in_root(&dir, Path::new(name))?;
    }
    Ok(dir)
}

fn is_dir(dir: &OwnedFd, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
}

/// Makes `name` in `dir` overlayfs' whiteout, a 0:0 character device; false where the kernel
/// refuses it.
#[cfg(target_os = "linux")]
fn overlay_whiteout(dir: &OwnedFd, name: &OsStr) -> bool {
    let device = nix::sys::stat::SFlag::S_IFCHR;
    nix::sys::stat::mknodat(Some(dir.as_raw_fd()), name, device, Mode::empty(), 0).is_ok()
}

/// Overlay roots are Linux's: elsewhere whiteouts stay marker files.
#[cfg(not(target_os = "linux"))]
fn overlay_whiteout(_dir: &OwnedFd, _name: &OsStr) -> bool {
    false
}

/// `user.overlay.opaque=y` on `dir`: overlayfs (with `userxattr`) shows nothing of the layers
/// below it there.
#[cfg(target_os = "linux")]
fn mark_opaque(dir: &OwnedFd) -> std::io::Result<()> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).expect("no NUL");
    // SAFETY: setxattr with NUL-terminated strings and a value buffer that outlive the call.
    let done = unsafe {
        nix::libc::setxattr(path.as_ptr(), c"user.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0)
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn mark_opaque(_dir: &OwnedFd) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "opaque layer directories need Linux"))
}

/// Removes `name` in `dir` whatever it is; a symlink is removed, not followed.
fn remove_entry(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    if is_dir(dir, name) {
        // std's remove_dir_all never follows symlinks below the top; the magic link names the
        // directory we resolved in the root.
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        return std::fs::remove_dir_all(path);
    }
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An opaque directory hides everything from lower layers, but not what this layer put there.
fn clear_dir(dir: &OwnedFd, dir_path: &Path, created: &HashSet<PathBuf>) -> std::io::Result<()> {
    let names: Vec<OsString> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    for name in names {
        if !created.contains(&dir_path.join(&name)) {
            remove_entry(dir, &name)?;
        }
    }
    Ok(())
}
