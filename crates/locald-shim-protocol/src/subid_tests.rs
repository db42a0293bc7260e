//! The subordinate-range rule, each refusal against a map that is otherwise accepted.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use super::{MAX_MAPPINGS, Range, check_map, ranges_of, user_name};

const CALLER: u32 = 1000;
const ALLOWED: &[Range] = &[Range { start: 100_000, count: 65_536 }];

fn map(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default().container_id(container).host_id(host).size(size).build().unwrap()
}

fn check(mappings: &[LinuxIdMapping]) -> Result<(), String> {
    check_map("uid", Some(mappings), CALLER, ALLOWED)
}

#[test]
fn the_own_id_alone_and_a_range_inside_the_allocation_pass() {
    check(&[map(0, CALLER, 1)]).unwrap();
    check(&[map(0, CALLER, 1), map(1, 100_000, 65_536)]).unwrap();
    check(&[map(0, CALLER, 1), map(1, 100_000, 100), map(500, 100_200, 10)]).unwrap();
}

#[test]
fn the_first_entry_must_be_the_caller_as_container_root() {
    for first in [map(0, 0, 1), map(0, CALLER, 2), map(1, CALLER, 1), map(0, 100_000, 1)] {
        let err = check(&[first, map(1, 100_000, 10)]).unwrap_err();
        assert!(err.contains("must start with exactly 0 -> 1000"), "{first:?}: {err}");
    }
    assert!(check(&[]).is_err());
    assert!(check_map("uid", None, CALLER, ALLOWED).is_err());
}

#[test]
fn a_range_outside_the_allocation_is_refused() {
    for (host, size) in [(99_999, 10), (100_000, 65_537), (165_535, 2), (0, 1), (1, 1), (200_000, 1)] {
        let err = check(&[map(0, CALLER, 1), map(1, host, size)]).unwrap_err();
        assert!(err.contains("not inside the caller's allocation") || err.contains("host id 0"), "{err}");
    }
    // Another user's range, with an allocation of one's own elsewhere.
    let err = check(&[map(0, CALLER, 1), map(1, 300_000, 100)]).unwrap_err();
    assert!(err.contains("100000-165535"), "{err}");
    // No allocation at all: nothing beyond the caller's own id.
    let err = check_map("gid", Some(&[map(0, CALLER, 1), map(1, 100_000, 1)]), CALLER, &[]).unwrap_err();
    assert!(err.contains("/etc/subgid (none)"), "{err}");
}

#[test]
fn host_id_0_is_never_mapped_even_when_allocated() {
    let err = check_map(
        "uid",
        Some(&[map(0, CALLER, 1), map(1, 0, 10)]),
        CALLER,
        &[Range { start: 0, count: 100 }],
    )
    .unwrap_err();
    assert!(err.contains("maps host id 0"), "{err}");
}

#[test]
fn overlapping_or_repeated_ranges_are_refused() {
    let host = check(&[map(0, CALLER, 1), map(1, 100_000, 10), map(20, 100_005, 10)]).unwrap_err();
    assert!(host.contains("overlaps another mapping's host ids"), "{host}");
    let repeated = check(&[map(0, CALLER, 1), map(1, 100_000, 10), map(20, 100_000, 10)]).unwrap_err();
    assert!(repeated.contains("host ids"), "{repeated}");
    let container = check(&[map(0, CALLER, 1), map(1, 100_000, 10), map(5, 100_100, 10)]).unwrap_err();
    assert!(container.contains("overlaps another mapping's container ids"), "{container}");
    let zero = check(&[map(0, CALLER, 1), map(0, 100_000, 10)]).unwrap_err();
    assert!(zero.contains("container ids"), "{zero}");
    // The caller's own id a second time, inside an allocation that happens to hold it.
    let own = check_map(
        "uid",
        Some(&[map(0, CALLER, 1), map(1, CALLER, 1)]),
        CALLER,
        &[Range { start: 900, count: 200 }],
    )
    .unwrap_err();
    assert!(own.contains("host ids"), "{own}");
}

#[test]
fn empty_overflowing_and_too_many_ranges_are_refused() {
    assert!(check(&[map(0, CALLER, 1), map(1, 100_000, 0)]).unwrap_err().contains("is empty"));
    let wide = [Range { start: 1, count: u32::MAX }];
    let err = check_map("uid", Some(&[map(0, CALLER, 1), map(u32::MAX, 100, 2)]), CALLER, &wide).unwrap_err();
    assert!(err.contains("past the last id"), "{err}");
    let mut many = vec![map(0, CALLER, 1)];
    for i in 0..MAX_MAPPINGS as u32 {
        many.push(map(1 + i * 10, 100_000 + i * 10, 10));
    }
    assert!(check(&many).unwrap_err().contains("more than"));
    many.pop();
    check(&many).unwrap();
}

#[test]
fn adjacent_allocations_join() {
    let split = [Range { start: 100_000, count: 10 }, Range { start: 100_010, count: 10 }];
    check_map("uid", Some(&[map(0, CALLER, 1), map(1, 100_005, 10)]), CALLER, &split).unwrap();
    let gap = [Range { start: 100_000, count: 10 }, Range { start: 100_011, count: 10 }];
    assert!(check_map("uid", Some(&[map(0, CALLER, 1), map(1, 100_005, 10)]), CALLER, &gap).is_err());
}

#[test]
fn a_subuid_file_gives_the_ranges_of_the_name_and_of_the_uid_only() {
    let file = "# comment\nalice:100000:65536\nbob:165536:65536\n1000:300000:10\nalice:bad:1\n\
                alice:1:0\nalice:4294967295:2\nalicex:500000:1\n alice:400000:5 \nalice:1:2:3\n";
    assert_eq!(
        ranges_of(file, Some("alice"), 1000),
        [
            Range { start: 100_000, count: 65_536 },
            Range { start: 300_000, count: 10 },
            Range { start: 400_000, count: 5 }
        ]
    );
    assert_eq!(ranges_of(file, None, 1000), [Range { start: 300_000, count: 10 }]);
    assert!(ranges_of(file, Some("carol"), 1001).is_empty());
}

#[test]
fn the_user_name_comes_from_passwd() {
    let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbad:x:zz:1::/:/\n";
    assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
    assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
    assert_eq!(user_name(passwd, 1001), None);
}
