//! Which changed paths restart which service: each service's `watch` globs minus its `ignore`
//! globs and the project's `.gitignore`, never anything under `.git/` or `.locald/`; and which
//! directories the watcher must observe for those globs.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::RecursiveMode;

use locald_core::config::{Config, Watch};

/// Never watched: the repository's own database and locald's state.
const NEVER: [&str; 2] = [".git", ".locald"];

/// One service's filter.
pub(crate) struct ServiceFilter {
    pub(crate) service: String,
    paths: GlobSet,
    ignore: GlobSet,
}

/// Every watched service of a project.
pub(crate) struct Filter {
    dir: PathBuf,
    gitignore: Gitignore,
    pub(crate) services: Vec<ServiceFilter>,
}

fn set(globs: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        // Checked when the config was read; one that fails here is skipped, not fatal.
        if let Ok(glob) = globset::GlobBuilder::new(glob).literal_separator(true).build() {
            builder.add(glob);
        }
        // `src` also means everything under it, as a directory name does in compose's watch.
        if !glob.contains(['*', '?', '[', '{'])
            && let Ok(under) = Glob::new(&format!("{}/**", glob.trim_end_matches('/')))
        {
            builder.add(under);
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}

impl Filter {
    pub(crate) fn new(config: &Config) -> Self {
        let dir = config.project.dir.clone();
        let mut builder = GitignoreBuilder::new(&dir);
        // A missing or unreadable .gitignore ignores nothing.
        let _ = builder.add(dir.join(".gitignore"));
        let gitignore = builder.build().unwrap_or_else(|_| Gitignore::empty());
        let services = config
            .services
            .iter()
            .filter_map(|s| {
                let Watch { paths, ignore, .. } = s.watch.as_ref()?;
                Some(ServiceFilter { service: s.name.clone(), paths: set(paths), ignore: set(ignore) })
            })
            .collect();
        Filter { dir, gitignore, services }
    }

    /// The path relative to the project, when a change there may matter at all.
    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let first = rel.components().next()?;
        if NEVER.iter().any(|n| first.as_os_str() == *n) {
            return None;
        }
        let is_dir = path.is_dir();
        if self.gitignore.matched_path_or_any_parents(rel, is_dir).is_ignore() {
            return None;
        }
        Some(rel)
    }

    /// The services a change of `path` restarts.
    pub(crate) fn affected<'a>(&'a self, path: &Path) -> impl Iterator<Item = &'a str> + 'a {
        let rel = self.relative(path).map(Path::to_path_buf);
        self.services
            .iter()
            .filter(move |s| rel.as_ref().is_some_and(|rel| s.paths.is_match(rel) && !s.ignore.is_match(rel)))
            .map(|s| s.service.as_str())
    }
}

/// The directories to observe for a project's globs: for each glob the deepest existing
/// directory its literal prefix names, recursively when the rest can reach below it. A
/// `package.json` watch observes the project directory alone, not all of `node_modules`.
pub(crate) fn roots(config: &Config) -> Vec<(PathBuf, RecursiveMode)> {
    let dir = &config.project.dir;
    let mut roots: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for glob in config.services.iter().filter_map(|s| s.watch.as_ref()).flat_map(|w| &w.paths) {
        let parts: Vec<&str> = glob.trim_end_matches('/').split('/').collect();
        let literal = parts.iter().take_while(|p| !p.contains(['*', '?', '[', '{'])).count();
        let mut base = dir.clone();
        let mut depth = 0;
        for part in &parts[..literal] {
            let next = base.join(part);
            if !next.is_dir() {
                break;
            }
            base = next;
            depth += 1;
        }
        // What remains below `base`: a single file name needs only `base` itself.
        let rest = &parts[depth..];
        let single = rest.len() == 1 && !rest[0].contains("**");
        let mode = if single { RecursiveMode::NonRecursive } else { RecursiveMode::Recursive };
        merge(&mut roots, base, mode);
    }
    roots
}

/// Adds a root unless one that covers it is there; a recursive root replaces those under it.
fn merge(roots: &mut Vec<(PathBuf, RecursiveMode)>, base: PathBuf, mode: RecursiveMode) {
    let covered = roots.iter().any(|(r, m)| {
        *r == base && (*m == RecursiveMode::Recursive || mode == RecursiveMode::NonRecursive)
            || (*m == RecursiveMode::Recursive && base.starts_with(r))
    });
    if covered {
        return;
    }
    if mode == RecursiveMode::Recursive {
        roots.retain(|(r, _)| !r.starts_with(&base));
    } else {
        roots.retain(|(r, _)| *r != base);
    }
    roots.push((base, mode));
}

#[cfg(test)]
mod tests {
    use super::*;
    use locald_core::config;

    fn config(dir: &Path, toml: &str) -> Config {
        std::fs::write(dir.join("locald.toml"), toml).unwrap();
        config::resolve_toml(dir, &dir.join("locald.toml"), toml, &mut Vec::<u16>::new()).unwrap()
    }

    #[test]
    fn globs_ignores_and_gitignore_decide_which_service_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(dir.join("src/deep")).unwrap();
        std::fs::write(dir.join(".gitignore"), "dist/\n*.log\n").unwrap();
        let config = config(
            &dir,
            "[services.web]\ncommand = \"true\"\nwatch = [\"src/**\", \"package.json\"]\nignore = [\"**/*.tmp\"]\n\
             [services.api]\ncommand = \"true\"\nwatch = [\"api\"]\n[services.worker]\ncommand = \"true\"\n",
        );
        let filter = Filter::new(&config);
        let hit = |p: &str| filter.affected(&dir.join(p)).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(hit("src/deep/app.py"), ["web"]);
        assert_eq!(hit("package.json"), ["web"]);
        assert_eq!(hit("api/main.go"), ["api"], "a directory name watches what is under it");
        assert!(hit("src/x.tmp").is_empty(), "the service's ignore");
        assert!(hit("src/debug.log").is_empty(), ".gitignore");
        assert!(hit("dist/src/a.js").is_empty());
        assert!(hit(".git/index").is_empty() && hit(".locald/logs/web.log").is_empty());
        assert!(hit("README.md").is_empty());
        assert!(filter.affected(Path::new("/elsewhere/src/a.py")).next().is_none());
    }

    #[test]
    fn a_file_glob_observes_its_directory_alone_and_a_tree_glob_its_subtree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(dir.join("src/lib")).unwrap();
        let config = config(
            &dir,
            "[services.web]\ncommand = \"true\"\nwatch = [\"package.json\", \"src/lib/**\", \"src/**/*.rs\"]\n",
        );
        let mut found = roots(&config);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [(dir.clone(), RecursiveMode::NonRecursive), (dir.join("src"), RecursiveMode::Recursive)],
            "src/**/*.rs covers src/lib"
        );
        // A directory that is not there yet: its existing parent, with everything below.
        let config = self::config(&dir, "[services.web]\ncommand = \"true\"\nwatch = [\"gone/**\"]\n");
        assert_eq!(roots(&config), [(dir.clone(), RecursiveMode::Recursive)]);
    }
}
