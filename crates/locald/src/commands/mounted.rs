//! The loop mounts `locald mount` made in a project (`<project>/.locald/mounts/<name>`), read
//! back from the kernel's mount table so `status` shows what is really mounted.

use std::path::{Path, PathBuf};

use locald_core::ipc::MountStatus;
use locald_shim_protocol::mountinfo;

/// The live list for `project` on this machine (empty where there is no /proc).
pub fn list(project: &Path) -> Vec<MountStatus> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let backing = |source: &str| {
        let device = source.strip_prefix("/dev/")?;
        let file = std::fs::read_to_string(format!("/sys/block/{device}/loop/backing_file")).ok()?;
        Some(PathBuf::from(file.trim_end()))
    };
    parse(&text, project, &backing)
}

/// The loop mounts directly under `<project>/.locald/mounts/` in a `/proc/self/mountinfo` text;
/// `backing` maps a `/dev/loopN` source to its image file.
fn parse(text: &str, project: &Path, backing: &dyn Fn(&str) -> Option<PathBuf>) -> Vec<MountStatus> {
    let base = project.join(".locald").join("mounts");
    let mut mounts: Vec<MountStatus> = mountinfo::entries(text)
        .filter(|m| m.point.parent() == Some(&base) && m.source.starts_with("/dev/loop"))
        .filter_map(|m| {
            Some(MountStatus {
                name: m.point.file_name()?.to_string_lossy().into_owned(),
                image: backing(&m.source),
                read_only: m.has_option("ro"),
            })
        })
        .collect();
    mounts.sort_by(|a, b| a.name.cmp(&b.name));
    mounts.dedup_by(|a, b| a.name == b.name);
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 7:0 / /p/.locald/mounts/data ro,nosuid,nodev,noexec - ext4 /dev/loop0 ro
41 22 7:1 / /p/.locald/mounts/my\\040disk rw,nosuid,nodev,noexec - ext4 /dev/loop1 rw
42 22 0:50 / /p/.locald/mounts/tmp rw - tmpfs tmpfs rw
43 22 7:2 / /other/.locald/mounts/x ro - ext4 /dev/loop2 ro
44 40 7:3 / /p/.locald/mounts/data/nested ro - ext4 /dev/loop3 ro
";

    #[test]
    fn only_this_projects_loop_mounts_are_listed() {
        let backing = |s: &str| (s == "/dev/loop0").then(|| PathBuf::from("/p/data.ext4"));
        let mounts = parse(INFO, Path::new("/p"), &backing);
        assert_eq!(
            mounts,
            [
                MountStatus { name: "data".into(), image: Some("/p/data.ext4".into()), read_only: true },
                MountStatus { name: "my disk".into(), image: None, read_only: false },
            ]
        );
    }
}
