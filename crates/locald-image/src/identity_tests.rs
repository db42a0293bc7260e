//! The image's `User`, resolved in the image's files against the mapped ranges.

use super::{ProcessUser, Range, Subordinate, resolve};

const RANGE: Range = Range { start: 100_000, count: 65_536 };
const MAPPED: Subordinate = Subordinate { uids: Some(RANGE), gids: Some(RANGE) };

fn image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\npostgres:x:101:103::/var/lib/postgresql:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\nssl-cert:x:104:postgres\npostgres:x:103:\n")
        .unwrap();
    dir
}

#[test]
fn a_name_resolves_with_its_primary_and_supplementary_groups() {
    let dir = image();
    let user = resolve(dir.path(), "postgres", &MAPPED).unwrap();
    assert_eq!(user, ProcessUser { uid: 101, gid: 103, additional_gids: vec![104] });
    assert_eq!(resolve(dir.path(), "101", &MAPPED).unwrap().gid, 103);
}

#[test]
fn an_explicit_group_by_name_or_id_replaces_the_primary_one() {
    let dir = image();
    let user = resolve(dir.path(), "postgres:ssl-cert", &MAPPED).unwrap();
    assert_eq!(user, ProcessUser { uid: 101, gid: 104, additional_gids: vec![] });
    assert_eq!(resolve(dir.path(), "101:7", &MAPPED).unwrap().gid, 7);
}

#[test]
fn numeric_ids_need_no_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        resolve(dir.path(), "1234:55", &MAPPED).unwrap(),
        ProcessUser { uid: 1234, gid: 55, additional_gids: vec![] }
    );
    assert_eq!(resolve(dir.path(), "0", &Subordinate::default()).unwrap().uid, 0);
}

#[test]
fn unknown_names_and_unmapped_ids_are_one_line_errors() {
    let dir = image();
    let err = resolve(dir.path(), "nobody", &MAPPED).unwrap_err();
    assert!(err.contains("\"nobody\" is not in the image's /etc/passwd"), "{err}");
    let err = resolve(dir.path(), "postgres:wheel", &MAPPED).unwrap_err();
    assert!(err.contains("group \"wheel\""), "{err}");
    let err = resolve(dir.path(), "postgres", &Subordinate::default()).unwrap_err();
    assert!(err.contains("container uid 101") && err.contains("usermod --add-subuids"), "{err}");
    assert!(!err.contains('\n'));
    let err = resolve(dir.path(), "70000", &MAPPED).unwrap_err();
    assert!(err.contains("uid 70000"), "{err}");
    let gids_only = Subordinate { uids: Some(RANGE), gids: None };
    assert!(resolve(dir.path(), "postgres", &gids_only).unwrap_err().contains("gid 103"));
}

#[test]
fn a_symlinked_passwd_is_not_followed_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
    let err = resolve(dir.path(), "root", &MAPPED).unwrap_err();
    assert!(err.contains("symlink"), "{err}");
}
