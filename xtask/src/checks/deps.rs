//! Which workspace crate may depend on which: one table of rules and a pure check of a resolved
//! dependency graph against it. Running cargo is `checks.rs`'s business; everything here works on
//! a [`Graph`] so the tests can build graphs that break each rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use anyhow::Context;
use serde::Deserialize;

/// The crates a rule is about.
#[derive(Debug, Clone, Copy)]
pub enum Subject {
    /// One workspace crate.
    Crate(&'static str),
    /// Every workspace crate but these (which must exist, like any crate a rule names).
    AllBut(&'static [&'static str]),
}

/// `subject` must not reach any of `forbidden` through normal (non-dev, non-build) dependencies,
/// directly or transitively. A name ending in `*` stands for a family: `tokio*` is `tokio`,
/// `tokio-util`, `tokio_x`…, but not `tokiofoo`. A plain name is that crate only, so forbidding
/// `locald-shim` leaves `locald-shim-protocol` allowed.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub subject: Subject,
    pub forbidden: &'static [&'static str],
    pub why: &'static str,
}

/// The layering of the workspace (DESIGN §3, ARCHITECTURE.md). Every crate named here must be in
/// the workspace, so a rename cannot turn a rule into one that silently holds.
pub const RULES: &[Rule] = &[
    Rule {
        subject: Subject::AllBut(&["locald-shim"]),
        forbidden: &["libcontainer"],
        why: "only the setuid shim runs containers; the others speak to it through the protocol crate",
    },
    Rule {
        subject: Subject::Crate("locald-shim"),
        forbidden: &[
            "tokio*",
            "mio",
            "hyper*",
            "h2",
            "rustls*",
            "ring*",
            "aws-lc*",
            "openssl*",
            "native-tls",
            "toml*",
        ],
        why: "the setuid binary links no async runtime, HTTP, TLS or TOML code: attack surface it does not need",
    },
    Rule {
        subject: Subject::Crate("locald-shim-protocol"),
        forbidden: &["libcontainer", "tokio*", "hyper*", "rustls*", "toml*"],
        why: "the protocol is linked into the setuid shim, so it carries nothing the shim may not",
    },
    Rule {
        subject: Subject::Crate("locald-proxy"),
        forbidden: &["locald-daemon", "locald-image", "libcontainer"],
        why: "the proxy sits below the daemon that wires it up, and knows nothing of images or containers",
    },
    Rule {
        subject: Subject::Crate("locald-image"),
        forbidden: &["tokio*", "hyper*", "rustls*"],
        why: "unpacking images and writing bundles is synchronous file work",
    },
    Rule {
        subject: Subject::Crate("locald-registry"),
        forbidden: &["locald-daemon", "locald-proxy", "locald-shim", "libcontainer", "aws-lc*"],
        why: "pulls and the image store sit beside the image crate, below the daemon; TLS through ring, no C toolchain",
    },
    Rule {
        subject: Subject::Crate("locald-shim"),
        forbidden: &["locald-registry"],
        why: "the setuid binary never speaks to registries",
    },
    Rule {
        subject: Subject::Crate("locald-core"),
        forbidden: &["locald*", "tokio*"],
        why: "config, ipc and paths are the bottom layer the others build on",
    },
];

/// Package names, which workspace crates there are, and each package's normal dependencies.
/// Packages are indices; two versions of one crate are two packages with the same name.
#[derive(Debug, Default)]
pub struct Graph {
    names: Vec<String>,
    members: Vec<usize>,
    deps: Vec<Vec<usize>>,
}

/// One thing wrong with the workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// `path` runs from a rule's subject to a crate it must not depend on (the last element).
    Forbidden { path: Vec<String>, why: &'static str },
    /// The table names a crate the workspace does not have.
    NoSuchCrate { name: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Forbidden { path, why } => write!(
                f,
                "{} must not depend on {}: {} ({why})",
                path[0],
                path[path.len() - 1],
                path.join(" -> ")
            ),
            Problem::NoSuchCrate { name } => write!(
                f,
                "the dependency rules name {name}, which is not a crate in the workspace: update the table in xtask/src/checks/deps.rs"
            ),
        }
    }
}

/// Everything in `graph` that breaks `rules`: for each subject and each forbidden crate it
/// reaches, one problem with the shortest path to it; and each crate the rules name that the
/// workspace lacks. Sorted, so the output is stable.
pub fn violations(graph: &Graph, rules: &[Rule]) -> Vec<Problem> {
    let members: BTreeMap<&str, usize> =
        graph.members.iter().map(|&i| (graph.names[i].as_str(), i)).collect();
    let mut problems = BTreeSet::new();
    // Whether the workspace has `name`; when not, that is a problem of its own.
    let mut exists = |name: &str| {
        let found = members.contains_key(name);
        if !found {
            problems.insert(Problem::NoSuchCrate { name: name.to_owned() });
        }
        found
    };
    let mut checks: Vec<(usize, &Rule)> = Vec::new();
    for rule in rules {
        // Forbidden workspace crates are named exactly (families aside), so they must exist too.
        for name in rule.forbidden.iter().filter(|n| n.starts_with("locald") && !n.ends_with('*')) {
            exists(name);
        }
        match rule.subject {
            Subject::Crate(name) => {
                if exists(name) {
                    checks.push((members[name], rule));
                }
            }
            Subject::AllBut(except) => {
                for name in except {
                    exists(name);
                }
                checks.extend(members.iter().filter(|(n, _)| !except.contains(n)).map(|(_, &i)| (i, rule)));
            }
        }
    }
    for (root, rule) in checks {
        for path in graph.forbidden_paths(root, rule.forbidden) {
            problems.insert(Problem::Forbidden { path, why: rule.why });
        }
    }
    problems.into_iter().collect()
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(family) => {
            name.strip_prefix(family).is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '_']))
        }
        None => name == pattern,
    }
}

impl Graph {
    /// The resolve graph of `cargo metadata --format-version 1` (run with `--filter-platform`, so
    /// cargo has already dropped the dependencies no declaration of which applies to the
    /// platform). An edge counts when any of its declarations is a normal dependency; cargo does
    /// not say which declaration matched the platform, so one that is normal only on another
    /// platform and dev or build here still counts — an error on the strict side.
    pub fn from_metadata(json: &str) -> anyhow::Result<Graph> {
        let metadata: Metadata = serde_json::from_str(json).context("cannot parse cargo metadata")?;
        let resolve =
            metadata.resolve.context("cargo metadata has no resolve graph (was --no-deps given?)")?;
        let index: BTreeMap<&str, usize> =
            metadata.packages.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
        let lookup = |id: &str| {
            index.get(id).copied().with_context(|| format!("cargo metadata: unknown package {id}"))
        };
        let mut graph = Graph {
            names: metadata.packages.iter().map(|p| p.name.clone()).collect(),
            members: metadata.workspace_members.iter().map(|id| lookup(id)).collect::<anyhow::Result<_>>()?,
            deps: vec![Vec::new(); metadata.packages.len()],
        };
        for node in &resolve.nodes {
            let from = lookup(&node.id)?;
            for dep in node.deps.iter().filter(|d| d.dep_kinds.iter().any(|k| k.kind.is_none())) {
                graph.deps[from].push(lookup(&dep.pkg)?);
            }
        }
        graph.sort();
        Ok(graph)
    }

    /// The shortest path from `root` to each crate (by name) matching one of `forbidden`, found
    /// breadth-first. The search goes on through forbidden crates: what they bring in is reported
    /// too, since removing one edge may not remove the other.
    fn forbidden_paths(&self, root: usize, forbidden: &[&str]) -> Vec<Vec<String>> {
        let mut parent: Vec<Option<usize>> = vec![None; self.names.len()];
        let mut seen = vec![false; self.names.len()];
        let mut reported = BTreeSet::new();
        let mut paths = Vec::new();
        let mut queue = VecDeque::from([root]);
        seen[root] = true;
        while let Some(at) = queue.pop_front() {
            let name = &self.names[at];
            if at != root && forbidden.iter().any(|p| matches(p, name)) && reported.insert(name) {
                let mut path = vec![name.clone()];
                let mut step = at;
                while let Some(up) = parent[step] {
                    path.push(self.names[up].clone());
                    step = up;
                }
                path.reverse();
                paths.push(path);
            }
            for &next in &self.deps[at] {
                if !seen[next] {
                    seen[next] = true;
                    parent[next] = Some(at);
                    queue.push_back(next);
                }
            }
        }
        paths
    }

    /// Dependencies in name order, so which of two equally short paths is reported does not
    /// depend on the order cargo listed them in.
    fn sort(&mut self) {
        let names = &self.names;
        for deps in &mut self.deps {
            deps.sort_by(|&a, &b| names[a].cmp(&names[b]).then(a.cmp(&b)));
            deps.dedup();
        }
    }
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
    resolve: Option<Resolve>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    /// `null` for a normal dependency, `"dev"` or `"build"` otherwise.
    kind: Option<String>,
}

#[cfg(test)]
mod tests;
