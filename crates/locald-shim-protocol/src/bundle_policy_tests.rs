//! The bundle policy's rules on capabilities, supplementary groups and idmapped mounts, each
//! against an otherwise acceptable bundle.

use oci_spec::runtime::{Capability, LinuxIdMappingBuilder, MountBuilder, Spec};

use super::{ALLOWED_CAPABILITIES, check};

const UID: u32 = 1000;
const ID: &str = "web-1";

/// What the daemon's generator produces, in its essentials.
fn good() -> Spec {
    let mut spec = Spec::rootless(UID, UID);
    let mut process = spec.process().clone().unwrap();
    process.set_rlimits(None);
    spec.set_process(Some(process));
    // No cgroupsPath: the shim places the container below its caller's cgroup itself.
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(None);
    spec.set_linux(Some(linux));
    spec
}

fn refused(spec: &Spec) -> String {
    check(spec, UID, UID, ID).expect_err("must be refused").message
}

fn edit_json(spec: &Spec, edit: impl FnOnce(&mut serde_json::Value)) -> Spec {
    let mut json = serde_json::to_value(spec).unwrap();
    edit(&mut json);
    serde_json::from_value(json).unwrap()
}

#[test]
fn the_baseline_passes() {
    check(&good(), UID, UID, ID).unwrap();
}

#[test]
fn a_missing_process_or_capabilities_section_is_refused() {
    let mut spec = good();
    spec.set_process(None);
    assert!(refused(&spec).contains("no process section"));

    let mut spec = good();
    let mut process = spec.process().clone().unwrap();
    process.set_capabilities(None);
    spec.set_process(Some(process));
    assert!(refused(&spec).contains("process.capabilities is missing"));
}

#[test]
fn each_missing_capability_set_is_refused() {
    for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
        let spec = edit_json(&good(), |json| {
            json["process"]["capabilities"].as_object_mut().unwrap().remove(set);
        });
        let message = refused(&spec);
        assert!(message.contains(&format!("process.capabilities.{set} is missing")), "{set}: {message}");
    }
    // Empty sets are explicit and fine: the container gets no capability at all.
    let spec = edit_json(&good(), |json| {
        for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
            json["process"]["capabilities"][set] = serde_json::json!([]);
        }
    });
    check(&spec, UID, UID, ID).unwrap();
}

#[test]
fn capabilities_beyond_the_allowed_set_are_refused_in_every_set() {
    for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
        for cap in ["CAP_SYS_ADMIN", "CAP_SETGID"] {
            let spec = edit_json(&good(), |json| {
                json["process"]["capabilities"][set].as_array_mut().unwrap().push(cap.into());
            });
            let message = refused(&spec);
            assert!(
                message.contains("beyond the allowed set") && message.contains(set),
                "{set} {cap}: {message}"
            );
        }
    }
    // The whole allowed set, in all five sets, passes.
    let all: Vec<String> =
        ALLOWED_CAPABILITIES.iter().map(|c| format!("CAP_{}", snake(&format!("{c:?}")))).collect();
    let spec = edit_json(&good(), |json| {
        for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
            json["process"]["capabilities"][set] = serde_json::json!(all);
        }
    });
    check(&spec, UID, UID, ID).unwrap();
    assert!(!ALLOWED_CAPABILITIES.contains(&Capability::Setgid));
}

/// `NetBindService` -> `NET_BIND_SERVICE`, the spec's spelling.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn additional_gids_are_refused() {
    let mut spec = good();
    let mut process = spec.process().clone().unwrap();
    let mut user = process.user().clone();
    user.set_additional_gids(Some(vec![0]));
    process.set_user(user);
    spec.set_process(Some(process));
    assert!(refused(&spec).contains("additionalGids"));
}

#[test]
fn idmapped_mount_options_and_mappings_beyond_the_one_form_are_refused() {
    let (spec, allocations) = with_subordinate(&good());
    let entry = |container: u32, host: u32, size: u32| {
        LinuxIdMappingBuilder::default().container_id(container).host_id(host).size(size).build().unwrap()
    };
    let onto = |base: &Spec, mount: oci_spec::runtime::Mount| {
        let mut spec = base.clone();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(mount);
        spec.set_mounts(Some(mounts));
        spec
    };
    let bind = |options: Vec<&str>| {
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/home/u/data")
            .options(options.into_iter().map(String::from).collect::<Vec<_>>())
    };
    let with = |mount| onto(&spec, mount);
    let mapped = |uids: Vec<_>, gids: Vec<_>| {
        with(bind(vec!["rbind"]).uid_mappings(uids).gid_mappings(gids).build().unwrap())
    };
    let verdict = |spec: &Spec| super::check_with(spec, UID, UID, ID, &allocations).map_err(|e| e.message);

    // The one form: the container's uid 101 (host 100100) onto the caller.
    let good_map = mapped(vec![entry(101, UID, 1)], vec![entry(102, UID, 1)]);
    verdict(&good_map).unwrap();
    let idmap = crate::volume_idmap::check(
        good_map.mounts().as_ref().unwrap().last().unwrap(),
        true,
        (UID, UID),
        good_map.linux().as_ref().unwrap().uid_mappings().as_deref().unwrap(),
        good_map.linux().as_ref().unwrap().gid_mappings().as_deref().unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!((idmap.kernel_uid, idmap.kernel_gid, idmap.host_uid), (100_100, 100_101, UID));

    for (what, uids, gids, why) in [
        // Files written by the container would land as root on the host.
        ("onto root", vec![entry(101, 0, 1)], vec![entry(102, UID, 1)], "onto host id 0"),
        // ... or as another user.
        ("onto another user", vec![entry(101, 1001, 1)], vec![entry(102, UID, 1)], "onto host id 1001"),
        ("gid onto root", vec![entry(101, UID, 1)], vec![entry(102, 0, 1)], "gid mapping onto host id 0"),
        ("a range", vec![entry(101, UID, 2)], vec![entry(102, UID, 1)], "size 2"),
        ("two entries", vec![entry(101, UID, 1), entry(5, UID, 1)], vec![entry(102, UID, 1)], "one entry"),
        ("container root", vec![entry(0, UID, 1)], vec![entry(102, UID, 1)], "container id 0"),
        (
            "an unmapped id",
            vec![entry(70_000, UID, 1)],
            vec![entry(102, UID, 1)],
            "uid 70000 is not one of your",
        ),
    ] {
        let message = verdict(&mapped(uids, gids)).expect_err(what);
        assert!(message.contains(why), "{what}: {message}");
    }
    // Without subordinate ids in the container, no container id but 0 is mapped.
    let plain = |mount| onto(&good(), mount);
    let message = check(
        &plain(
            bind(vec!["rbind"])
                .uid_mappings(vec![entry(101, UID, 1)])
                .gid_mappings(vec![entry(102, UID, 1)])
                .build()
                .unwrap(),
        ),
        UID,
        UID,
        ID,
    )
    .unwrap_err()
    .message;
    assert!(message.contains("not one of your subordinate ids"), "{message}");
    // One without the other (the builder refuses that shape; a config.json need not).
    let one_side = edit_json(&with(bind(vec!["rbind"]).build().unwrap()), |json| {
        let last = json["mounts"].as_array_mut().unwrap().last_mut().unwrap();
        last["gidMappings"] = serde_json::json!([{"containerID": 102, "hostID": UID, "size": 1}]);
    });
    assert!(verdict(&one_side).unwrap_err().contains("come together"));
    // Not on a mount that is no bind.
    let tmpfs = edit_json(&good_map, |json| {
        let last = json["mounts"].as_array_mut().unwrap().last_mut().unwrap();
        last["type"] = "tmpfs".into();
        last["options"] = serde_json::json!([]);
    });
    assert!(verdict(&tmpfs).unwrap_err().contains("only for bind mounts"));
    for option in ["idmap", "ridmap", "idmap=uids=0-0-1", "X-mount.idmap=0:0:1"] {
        let message = refused(&plain(bind(vec!["rbind", option]).build().unwrap()));
        assert!(message.contains("idmapped mounts are not allowed"), "{option}: {message}");
    }
    // The same bind without them is fine.
    check(&plain(bind(vec!["rbind", "ro"]).build().unwrap()), UID, UID, ID).unwrap();
}

/// `good()` with container ids 1..=65536 mapped to the caller's allocation, on both sides.
fn with_subordinate(spec: &Spec) -> (Spec, crate::subid::Allocations) {
    let range = crate::subid::Range { start: 100_000, count: 65_536 };
    let allocations = crate::subid::Allocations { uids: vec![range], gids: vec![range] };
    let map = |host| {
        vec![
            LinuxIdMappingBuilder::default().container_id(0u32).host_id(host).size(1u32).build().unwrap(),
            LinuxIdMappingBuilder::default()
                .container_id(1u32)
                .host_id(100_000u32)
                .size(65_536u32)
                .build()
                .unwrap(),
        ]
    };
    let mut spec = spec.clone();
    let mut linux = spec.linux().clone().unwrap();
    linux.set_uid_mappings(Some(map(UID)));
    linux.set_gid_mappings(Some(map(UID)));
    spec.set_linux(Some(linux));
    (spec, allocations)
}

fn with_user(spec: &Spec, uid: u32, gid: u32, additional: Option<Vec<u32>>) -> Spec {
    let mut spec = spec.clone();
    let mut process = spec.process().clone().unwrap();
    let mut user = process.user().clone();
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids(additional);
    process.set_user(user);
    spec.set_process(Some(process));
    spec
}

#[test]
fn subordinate_ranges_pass_only_with_the_callers_allocation() {
    let (spec, allocations) = with_subordinate(&good());
    super::check_with(&spec, UID, UID, ID, &allocations).unwrap();
    assert!(refused(&spec).contains("not inside the caller's allocation"));
    let gid_only = crate::subid::Allocations { uids: allocations.uids.clone(), gids: vec![] };
    let message = super::check_with(&spec, UID, UID, ID, &gid_only).unwrap_err().message;
    assert!(message.contains("gid mapping 1 -> 100000"), "{message}");
}

#[test]
fn the_process_user_must_be_mapped() {
    let message = check(&with_user(&good(), 101, 0, None), UID, UID, ID).unwrap_err().message;
    assert!(message.contains("process.user.uid 101 is not mapped"), "{message}");
    let (spec, allocations) = with_subordinate(&good());
    super::check_with(&with_user(&spec, 101, 101, None), UID, UID, ID, &allocations).unwrap();
    let message = super::check_with(&with_user(&spec, 70_000, 0, None), UID, UID, ID, &allocations)
        .unwrap_err()
        .message;
    assert!(message.contains("uid 70000 is not mapped"), "{message}");
}

#[test]
fn additional_gids_and_setgid_need_subordinate_gids() {
    let message = check(&with_user(&good(), 0, 0, Some(vec![0])), UID, UID, ID).unwrap_err().message;
    assert!(message.contains("additionalGids need subordinate gids"), "{message}");
    let (spec, allocations) = with_subordinate(&good());
    super::check_with(&with_user(&spec, 101, 101, Some(vec![5, 101])), UID, UID, ID, &allocations).unwrap();
    let message =
        super::check_with(&with_user(&spec, 101, 101, Some(vec![70_000])), UID, UID, ID, &allocations)
            .unwrap_err()
            .message;
    assert!(message.contains("additional gid 70000 is not mapped"), "{message}");

    let add_setgid = |spec: &Spec| {
        edit_json(spec, |json| {
            json["process"]["capabilities"]["bounding"].as_array_mut().unwrap().push("CAP_SETGID".into());
        })
    };
    assert!(refused(&add_setgid(&good())).contains("Setgid in bounding"));
    super::check_with(&add_setgid(&spec), UID, UID, ID, &allocations).unwrap();
}
