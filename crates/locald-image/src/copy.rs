//! Copying a cached rootfs into a bundle: the container writes into its own copy, never into
//! the cache other services and projects share.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

/// Copies the tree at `from` to `to` (which must not exist): directories, regular files with
/// their modes, and symlinks as links (never followed). Anything else — device nodes, fifos,
/// sockets — has no place in a rootfs the user owns and is left out. Where trees keep their
/// owners ([`crate::owned`]) the copy is made in the helper and keeps owners and hard links too.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    match crate::owned::mapping() {
        None => copy_as_user(from, to),
        Some((exe, mapping)) => {
            crate::owned::run(&exe, &mapping, &["copy-tree".as_ref(), from.as_os_str(), to.as_os_str()])
                .map(drop)
        }
    }
}

/// The copy inside the helper's user namespace: owners, groups, exact modes (set after the
/// chown, which clears setuid bits) and hard links as in the source.
pub(crate) fn copy_tree_kept(from: &Path, to: &Path) -> io::Result<()> {
    copy_kept(from, to, &mut HashMap::new())
}

fn copy_kept(from: &Path, to: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", from.display())));
    }
    fs::create_dir(to)?;
    lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_kept(&source, &target, links)?;
            continue;
        }
        let file = fs::symlink_metadata(&source)?;
        if kind.is_symlink() {
            symlink(fs::read_link(&source)?, &target)?;
            lchown(&target, Some(file.uid()), Some(file.gid()))?;
        } else if kind.is_file() {
            let inode = (file.dev(), file.ino());
            if let Some(first) = links.get(&inode).filter(|_| file.nlink() > 1) {
                fs::hard_link(first, &target)?;
                continue;
            }
            fs::copy(&source, &target)?;
            lchown(&target, Some(file.uid()), Some(file.gid()))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(file.mode() & 0o7777))?;
            if file.nlink() > 1 {
                links.insert(inode, target);
            }
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
}

fn copy_as_user(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", from.display())));
    }
    fs::create_dir(to)?;
    // Owner-writable while filling; the real mode is set once the contents are in.
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_as_user(&source, &target)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            let mode = fs::copy(&source, &target).and_then(|_| fs::symlink_metadata(&source))?.mode();
            // Again once the data is in: writing it cleared setuid and setgid bits.
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))?;
        }
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn files_links_and_modes_are_copied_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs::create_dir_all(from.join("bin")).unwrap();
        fs::write(from.join("bin/busybox"), "elf").unwrap();
        fs::set_permissions(from.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("busybox", from.join("bin/sh")).unwrap();
        // A link pointing out of the tree stays a link: copying it must not copy /etc/passwd.
        symlink("/etc/passwd", from.join("escape")).unwrap();
        fs::create_dir(from.join("ro")).unwrap();
        fs::write(from.join("ro/file"), "x").unwrap();
        fs::set_permissions(from.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let to = dir.path().join("to");
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("bin/busybox")).unwrap(), "elf");
        assert_eq!(fs::metadata(to.join("bin/busybox")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read_link(to.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(fs::read_link(to.join("escape")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(fs::read_to_string(to.join("ro/file")).unwrap(), "x");
        assert_eq!(fs::metadata(to.join("ro")).unwrap().mode() & 0o777, 0o555);
        assert!(!to.join("fifo").exists(), "a fifo is not copied");
        // Writing to the copy leaves the source alone.
        fs::write(to.join("bin/busybox"), "changed").unwrap();
        assert_eq!(fs::read_to_string(from.join("bin/busybox")).unwrap(), "elf");
        fs::set_permissions(from.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(to.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
