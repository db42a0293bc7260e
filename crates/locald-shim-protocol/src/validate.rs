//! Pure decisions about the shim's inputs: which paths, names and filesystem types a request
//! may carry. The shim applies them before touching anything; the daemon may apply them first
//! to give a better message. Nothing here does I/O.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::path::{Component, Path};

use crate::ShimError;

/// The directory every shim-managed path must pass through.
pub const LOCALD_DIR: &str = ".locald";
/// Loop mounts live in `<project>/.locald/mounts/<name>`.
pub const MOUNTS_DIR: &str = "mounts";
/// Upper bound on names in one `/etc/hosts` block.
pub const MAX_HOSTS_DOMAINS: usize = 2048;
/// Hostname suffixes the shim writes into `/etc/hosts`: the two RFC 6761 names that can never
/// exist outside this machine, so no user can redirect a real host for the machine's other users.
/// `internal` and `home.arpa` are reserved too, but for private networks that do use them
/// (`metadata.google.internal`, `*.ec2.internal`, corporate zones, home routers), so they are not
/// here.
pub const HOSTS_SUFFIXES: &[&str] = &["localhost", "test"];
/// Filesystems `mount-loop` accepts: what `locald mount` needs for data images (ext4, whose
/// driver also mounts ext2/3 images) and read-only images (squashfs, erofs). Each is a kernel
/// parser fed a user-made image; fewer is less of that surface.
pub const LOOP_FSTYPES: &[&str] = &["ext4", "squashfs", "erofs"];

/// The normal components of an absolute path with no `.`, `..` or empty segment.
pub fn absolute_components(path: &Path) -> Result<Vec<OsString>, ShimError> {
    let raw = path.as_os_str().as_encoded_bytes();
    if !path.is_absolute() {
        return Err(ShimError::refused(format!("{} is not an absolute path", path.display())));
    }
    // `Path::components` silently drops `.` and `//`; refuse them instead so what is checked is
    // exactly what was sent.
    if raw.windows(2).any(|w| w == b"//") || raw.split(|b| *b == b'/').any(|seg| seg == b"." || seg == b"..")
    {
        return Err(ShimError::refused(format!("{} contains `.`, `..` or `//`", path.display())));
    }
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => components.push(name.to_owned()),
            _ => return Err(ShimError::refused(format!("{} is not a plain absolute path", path.display()))),
        }
    }
    if components.is_empty() {
        return Err(ShimError::refused("the root directory is not a valid target"));
    }
    Ok(components)
}

/// A path split at its first `.locald` segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchored {
    /// From `/` down to and including the `.locald` directory.
    pub anchor: Vec<OsString>,
    /// Below the `.locald` directory; never empty.
    pub rest: Vec<OsString>,
}

/// `admin cleanup`: strictly inside a `.locald` directory.
pub fn cleanup_path(path: &Path) -> Result<Anchored, ShimError> {
    let components = absolute_components(path)?;
    let Some(at) = components.iter().position(|c| c == LOCALD_DIR) else {
        return Err(ShimError::refused(format!("{} is not inside a {LOCALD_DIR} directory", path.display())));
    };
    let rest = components[at + 1..].to_vec();
    if rest.is_empty() {
        return Err(ShimError::refused(format!("{} is the {LOCALD_DIR} directory itself", path.display())));
    }
    Ok(Anchored { anchor: components[..=at].to_vec(), rest })
}

/// `admin mount-loop` / `unmount-loop` targets: exactly `<project>/.locald/mounts/<name>`.
pub fn mount_target(path: &Path) -> Result<Anchored, ShimError> {
    let anchored = cleanup_path(path)?;
    match anchored.rest.as_slice() {
        [mounts, _name] if mounts == MOUNTS_DIR => Ok(anchored),
        _ => Err(ShimError::refused(format!(
            "{} is not of the form <project>/{LOCALD_DIR}/{MOUNTS_DIR}/<name>",
            path.display()
        ))),
    }
}

pub fn loop_fstype(fstype: &str) -> Result<(), ShimError> {
    if LOOP_FSTYPES.contains(&fstype) {
        Ok(())
    } else {
        Err(ShimError::refused(format!(
            "filesystem type {fstype:?} is not one of {}",
            LOOP_FSTYPES.join(", ")
        )))
    }
}

/// The mount options locald sets whatever the image says. An ext4 superblock chooses what an
/// error does (`tune2fs -e panic`, or `errors=panic` among its stored mount options), and a
/// user-made image must not be able to panic the machine: an explicit `errors=` is parsed after
/// both and wins. squashfs and erofs take no error policy from the image (squashfs panics only
/// when mounted with `errors=panic`, erofs never), so they get nothing an older kernel could
/// refuse.
pub fn loop_mount_data(fstype: &str) -> Option<&'static str> {
    (fstype == "ext4").then_some("errors=remount-ro")
}

/// A lowercase RFC 1123 hostname under one of [`HOSTS_SUFFIXES`].
pub fn hosts_domain(name: &str) -> Result<(), ShimError> {
    let shown = name.escape_debug();
    let refuse = |why: &str| Err(ShimError::refused(format!("hostname \"{shown}\" {why}")));
    if name.is_empty() || name.len() > 253 {
        return refuse("must be 1 to 253 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
        return refuse("may contain only a-z, 0-9, '-' and '.'");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return refuse("has an empty label or one longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("has a label that starts or ends with '-'");
        }
    }
    if name.parse::<Ipv4Addr>().is_ok()
        || name.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return refuse("is an address, not a name");
    }
    if !HOSTS_SUFFIXES.iter().any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}"))) {
        return refuse(&format!("is not under a reserved local suffix ({})", HOSTS_SUFFIXES.join(", ")));
    }
    Ok(())
}

/// Validates every name and the count; returns them sorted and deduplicated.
pub fn hosts_domains(names: &[String]) -> Result<Vec<String>, ShimError> {
    if names.len() > MAX_HOSTS_DOMAINS {
        return Err(ShimError::refused(format!(
            "{} hostnames given; at most {MAX_HOSTS_DOMAINS}",
            names.len()
        )));
    }
    names.iter().try_for_each(|n| hosts_domain(n))?;
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Display helper for component lists.
pub fn join(components: &[OsString]) -> String {
    let mut out = String::new();
    for c in components {
        out.push('/');
        out.push_str(&OsStr::new(c).to_string_lossy());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitClass;

    fn refused<T: std::fmt::Debug>(r: Result<T, ShimError>) -> bool {
        matches!(r, Err(ShimError { class: ExitClass::Refused, .. }))
    }

    #[test]
    fn cleanup_paths_must_be_absolute_plain_and_inside_dot_locald() {
        let ok = cleanup_path(Path::new("/home/u/p/.locald/run/x")).unwrap();
        assert_eq!(join(&ok.anchor), "/home/u/p/.locald");
        assert_eq!(join(&ok.rest), "/run/x");
        for bad in [
            "relative/.locald/x",
            "/home/u/p/.locald/../../etc",
            "/home/u/p/.locald/./x",
            "/home/u//p/.locald/x",
            "/etc/passwd",
            "/home/u/p/.locald",
            "/home/u/p/.locald/",
            "/",
            "/home/u/p/.localdx/y",
        ] {
            assert!(refused(cleanup_path(Path::new(bad))), "{bad}");
        }
    }

    #[test]
    fn mount_targets_are_exactly_dot_locald_mounts_name() {
        assert!(mount_target(Path::new("/p/.locald/mounts/data")).is_ok());
        for bad in [
            "/p/.locald/mounts",
            "/p/.locald/data",
            "/p/.locald/mounts/a/b",
            "/p/mounts/a",
            "/p/.locald/x/mounts/a",
        ] {
            assert!(refused(mount_target(Path::new(bad))), "{bad}");
        }
    }

    #[test]
    fn only_allow_listed_filesystems() {
        assert!(loop_fstype("ext4").is_ok());
        assert!(loop_fstype("squashfs").is_ok());
        assert!(loop_fstype("erofs").is_ok());
        // ext2/3 images mount through the ext4 driver; vfat is no image format locald needs.
        for bad in ["", "EXT4", "nfs", "fuse", "proc", "overlay", "ext4,nosuid", "ext2", "ext3", "vfat"] {
            assert!(refused(loop_fstype(bad)), "{bad}");
        }
    }

    #[test]
    fn every_allowed_ext_mount_overrides_the_images_error_policy() {
        for fstype in LOOP_FSTYPES {
            let data = loop_mount_data(fstype);
            assert_eq!(data.is_some(), fstype.starts_with("ext"), "{fstype}");
            assert!(data.is_none_or(|d| d.contains("errors=remount-ro") && !d.contains("panic")), "{fstype}");
        }
    }

    #[test]
    fn hostnames_are_lowercase_rfc1123_under_a_reserved_suffix() {
        for ok in ["web.shop.localhost", "localhost", "a-b.test", "test"] {
            assert!(hosts_domain(ok).is_ok(), "{ok}");
        }
        let long_label = format!("{}.localhost", "a".repeat(64));
        let long_name = format!("{}localhost", "abcdefghi.".repeat(25));
        for bad in [
            "",
            "a.localhost\n6.6.6.6 bank.com",
            "a.localhost 6.6.6.6",
            "a\t.localhost",
            "A.localhost",
            "127.0.0.1",
            "::1",
            "1.2.3.4",
            "-a.localhost",
            "a-.localhost",
            "a..localhost",
            ".localhost",
            "bank.com",
            "localhost.evil.com",
            "evillocalhost",
            long_label.as_str(),
            long_name.as_str(),
            "a.localhost\0",
            "a#b.localhost",
            // Reserved, but real hosts on cloud and home networks.
            "metadata.google.internal",
            "db.corp.internal",
            "internal",
            "nas.home.arpa",
            "home.arpa",
            "test.internal",
            "localhost.home.arpa",
        ] {
            assert!(refused(hosts_domain(bad)), "{bad:?}");
        }
        assert!(long_name.len() > 253);
    }

    #[test]
    fn the_domain_list_is_bounded_and_deduplicated() {
        let names = vec!["b.localhost".to_owned(), "a.localhost".to_owned(), "b.localhost".to_owned()];
        assert_eq!(hosts_domains(&names).unwrap(), vec!["a.localhost", "b.localhost"]);
        let too_many: Vec<String> = (0..=MAX_HOSTS_DOMAINS).map(|i| format!("n{i}.localhost")).collect();
        assert!(refused(hosts_domains(&too_many)));
        assert!(hosts_domains(&[]).unwrap().is_empty());
    }
}
