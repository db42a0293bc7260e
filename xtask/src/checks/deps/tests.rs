use super::*;

const MEMBERS: &[&str] = &[
    "locald-shim-protocol",
    "locald-shim",
    "locald-core",
    "locald-ca",
    "locald-image",
    "locald-registry",
    "locald-proxy",
    "locald-daemon",
    "locald",
    "locald-tests",
    "xtask",
];

/// The workspace as it is meant to be, with a few of the crates.io crates the rules are about.
const CLEAN: &[(&str, &str)] = &[
    ("locald-shim-protocol", "libc"),
    ("locald-shim", "locald-shim-protocol"),
    ("locald-shim", "clap"),
    ("locald-shim", "nix"),
    ("locald-shim", "libcontainer"),
    ("libcontainer", "nix"),
    ("libcontainer", "libcgroups"),
    ("locald-core", "serde"),
    ("locald-core", "toml"),
    ("toml", "toml_parser"),
    ("locald-ca", "locald-core"),
    ("locald-ca", "rustls"),
    ("rustls", "ring"),
    ("locald-image", "locald-core"),
    ("locald-image", "locald-shim-protocol"),
    ("locald-image", "tar"),
    ("locald-registry", "locald-core"),
    ("locald-registry", "locald-image"),
    ("locald-registry", "tokio"),
    ("locald-proxy", "locald-core"),
    ("locald-proxy", "locald-ca"),
    ("locald-proxy", "hyper"),
    ("locald-proxy", "tokio"),
    ("hyper", "h2"),
    ("hyper", "tokio"),
    ("h2", "tokio-util"),
    ("tokio", "mio"),
    ("tokio", "tokio-macros"),
    ("locald-daemon", "locald-core"),
    ("locald-daemon", "locald-ca"),
    ("locald-daemon", "locald-image"),
    ("locald-daemon", "locald-proxy"),
    ("locald-daemon", "locald-shim-protocol"),
    ("locald-daemon", "tokio"),
    ("locald-daemon", "locald-registry"),
    ("locald", "locald-daemon"),
    ("locald", "locald-core"),
    ("locald-tests", "locald-daemon"),
    ("locald-tests", "locald-shim-protocol"),
    ("xtask", "serde_json"),
];

/// A graph in which each name is one package.
fn graph(members: &[&str], edges: &[(&str, &str)]) -> Graph {
    let mut names: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    for (from, to) in edges {
        for name in [from, to] {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    let mut deps = vec![Vec::new(); names.len()];
    for (from, to) in edges {
        deps[at(from)].push(at(to));
    }
    let mut graph = Graph { members: members.iter().map(|m| at(m)).collect(), deps, names };
    graph.sort();
    graph
}

/// The workspace with `extra` edges added: the deliberate violations.
fn workspace_with(extra: &[(&str, &str)]) -> Vec<String> {
    let edges: Vec<_> = CLEAN.iter().chain(extra).copied().collect();
    lines(&violations(&graph(MEMBERS, &edges), RULES))
}

/// Forbidden paths as `a -> b -> c`, missing crates as `missing: name`.
fn lines(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| match p {
            Problem::Forbidden { path, .. } => path.join(" -> "),
            Problem::NoSuchCrate { name } => format!("missing: {name}"),
        })
        .collect()
}

fn sorted(mut lines: Vec<&str>) -> Vec<String> {
    lines.sort();
    lines.into_iter().map(str::to_owned).collect()
}

#[test]
fn the_intended_layering_passes() {
    assert_eq!(workspace_with(&[]), Vec::<String>::new());
}

#[test]
fn only_the_shim_may_reach_libcontainer_even_through_the_shim() {
    // The daemon taking the shim crate for one of its types, instead of the protocol crate.
    assert_eq!(
        workspace_with(&[("locald-daemon", "locald-shim")]),
        sorted(vec![
            "locald -> locald-daemon -> locald-shim -> libcontainer",
            "locald-daemon -> locald-shim -> libcontainer",
            "locald-tests -> locald-daemon -> locald-shim -> libcontainer",
        ])
    );
}

#[test]
fn the_shim_links_no_async_runtime() {
    // Families: tokio-util is caught as tokio*, and so is the tokio it brings in.
    assert_eq!(
        workspace_with(&[("locald-shim", "tokio-util"), ("tokio-util", "tokio")]),
        sorted(vec![
            "locald-shim -> tokio-util",
            "locald-shim -> tokio-util -> tokio",
            "locald-shim -> tokio-util -> tokio -> mio",
            "locald-shim -> tokio-util -> tokio -> tokio-macros",
        ])
    );
}

#[test]
fn the_protocol_crate_carries_no_toml_into_the_shim() {
    assert_eq!(
        workspace_with(&[("locald-shim-protocol", "toml")]),
        sorted(vec![
            "locald-shim -> locald-shim-protocol -> toml",
            "locald-shim -> locald-shim-protocol -> toml -> toml_parser",
            "locald-shim-protocol -> toml",
            "locald-shim-protocol -> toml -> toml_parser",
        ])
    );
}

#[test]
fn the_proxy_does_not_reach_up_into_the_daemon() {
    // A cycle, as cargo would refuse it, but the search must still end and report.
    assert_eq!(
        workspace_with(&[("locald-proxy", "locald-daemon")]),
        sorted(vec!["locald-proxy -> locald-daemon", "locald-proxy -> locald-daemon -> locald-image"])
    );
}

#[test]
fn image_unpacking_has_no_runtime_under_it() {
    assert_eq!(
        workspace_with(&[("locald-image", "tokio")]),
        sorted(vec!["locald-image -> tokio", "locald-image -> tokio -> tokio-macros"])
    );
}

#[test]
fn the_core_depends_on_no_other_locald_crate() {
    assert_eq!(
        workspace_with(&[("locald-core", "locald-shim-protocol")]),
        vec!["locald-core -> locald-shim-protocol"]
    );
}

#[test]
fn every_rule_is_shown_failing() {
    // Each test above breaks one rule; this keeps a new rule from going in untested.
    let broken = [
        ("locald-daemon", "locald-shim"),
        ("locald-shim", "tokio"),
        ("locald-shim-protocol", "toml"),
        ("locald-proxy", "locald-daemon"),
        ("locald-image", "tokio"),
        ("locald-registry", "locald-proxy"),
        ("locald-shim", "locald-registry"),
        ("locald-core", "locald-shim-protocol"),
    ];
    assert_eq!(broken.len(), RULES.len());
    for (rule, edge) in RULES.iter().zip(broken) {
        let edges: Vec<_> = CLEAN.iter().copied().chain([edge]).collect();
        let found = violations(&graph(MEMBERS, &edges), std::slice::from_ref(rule));
        assert!(!found.is_empty(), "{edge:?} breaks no rule for {:?}", rule.subject);
    }
}

#[test]
fn a_crate_the_workspace_lacks_is_reported() {
    let without = |gone: &str| {
        let members: Vec<_> = MEMBERS.iter().copied().filter(|m| *m != gone).collect();
        let edges: Vec<_> = CLEAN.iter().copied().filter(|(a, b)| *a != gone && *b != gone).collect();
        lines(&violations(&graph(&members, &edges), RULES))
    };
    // A rule's subject, and a workspace crate a rule forbids.
    assert_eq!(without("locald-image"), vec!["missing: locald-image"]);
    assert_eq!(without("locald-daemon"), vec!["missing: locald-daemon"]);
    // The one crate rule 1 exempts.
    assert_eq!(without("locald-shim"), vec!["missing: locald-shim"]);
}

#[test]
fn families_stop_at_a_separator_and_plain_names_are_exact() {
    assert!(matches("tokio*", "tokio"));
    assert!(matches("tokio*", "tokio-util"));
    assert!(matches("toml*", "toml_parser"));
    assert!(!matches("tokio*", "tokiofoo"));
    assert!(!matches("toml*", "tomlette"));
    assert!(matches("locald*", "locald"));
    assert!(!matches("locald-shim", "locald-shim-protocol"));
}

#[test]
fn the_message_names_crate_dependency_and_path() {
    let problem = Problem::Forbidden {
        path: vec!["locald".into(), "locald-daemon".into(), "libcontainer".into()],
        why: "because",
    };
    assert_eq!(
        problem.to_string(),
        "locald must not depend on libcontainer: locald -> locald-daemon -> libcontainer (because)"
    );
}

#[test]
fn metadata_counts_normal_dependencies_only() {
    let json = r#"{
        "packages": [
            {"id": "path+file:///w/shim#locald-shim@0.1.0", "name": "locald-shim"},
            {"id": "registry+x#tokio@1.0.0", "name": "tokio"},
            {"id": "registry+x#cc@1.0.0", "name": "cc"},
            {"id": "registry+x#toml@0.9.0", "name": "toml"},
            {"id": "registry+x#serde@1.0.0", "name": "serde"},
            {"id": "registry+x#hyper@1.0.0", "name": "hyper"}
        ],
        "workspace_members": ["path+file:///w/shim#locald-shim@0.1.0"],
        "resolve": {"root": null, "nodes": [
            {"id": "path+file:///w/shim#locald-shim@0.1.0", "deps": [
                {"name": "tokio", "pkg": "registry+x#tokio@1.0.0",
                 "dep_kinds": [{"kind": "dev", "target": null}]},
                {"name": "cc", "pkg": "registry+x#cc@1.0.0",
                 "dep_kinds": [{"kind": "build", "target": null}]},
                {"name": "toml", "pkg": "registry+x#toml@0.9.0",
                 "dep_kinds": [{"kind": null, "target": "cfg(target_os = \"linux\")"}]},
                {"name": "serde", "pkg": "registry+x#serde@1.0.0",
                 "dep_kinds": [{"kind": "dev", "target": null}, {"kind": null, "target": null}]}
            ]},
            {"id": "registry+x#cc@1.0.0", "deps": [
                {"name": "hyper", "pkg": "registry+x#hyper@1.0.0",
                 "dep_kinds": [{"kind": null, "target": null}]}
            ]},
            {"id": "registry+x#tokio@1.0.0", "deps": []},
            {"id": "registry+x#toml@0.9.0", "deps": []},
            {"id": "registry+x#serde@1.0.0", "deps": []},
            {"id": "registry+x#hyper@1.0.0", "deps": []}
        ]}
    }"#;
    let graph = Graph::from_metadata(json).unwrap();
    let rule = Rule {
        subject: Subject::Crate("locald-shim"),
        forbidden: &["tokio*", "cc", "hyper", "toml", "serde"],
        why: "test",
    };
    // Not tokio (dev), not cc (build) nor what cc brings in.
    assert_eq!(lines(&violations(&graph, &[rule])), vec!["locald-shim -> serde", "locald-shim -> toml"]);
    assert!(Graph::from_metadata(r#"{"packages": [], "workspace_members": [], "resolve": null}"#).is_err());
}
