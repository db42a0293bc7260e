//! Which git checkout a project is in. A project in a linked worktree (`git worktree add`) gets
//! names of its own, `<branch>.<project>.localhost`, so it runs beside the repository's main
//! checkout; everything else about it (ports, state, logs) already follows its directory. Found
//! from the files git writes, without running git: a linked worktree's `.git` is a file
//! `gitdir: <repo>/.git/worktrees/<name>`, whose `HEAD` names the branch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// The branch (the worktree's name when HEAD is detached) as a DNS label: the first label of
    /// every name the project gets.
    pub label: String,
    /// The branch as git names it; `None` when HEAD is detached.
    pub branch: Option<String>,
    /// The repository's main checkout (its git directory for a bare repository).
    pub main: PathBuf,
}

impl Checkout {
    /// `<label>.<domain>`.
    pub fn name(&self, domain: &str) -> String {
        format!("{}.{domain}", self.label)
    }

    /// One line for `status`: `worktree of /src/shop, branch feature/login`.
    pub fn describe(&self) -> String {
        match &self.branch {
            Some(branch) => format!("worktree of {}, branch {branch}", self.main.display()),
            None => format!("worktree of {}, detached ({})", self.main.display(), self.label),
        }
    }
}

/// The linked worktree `dir` is in, if it is in one: the nearest `.git` above it decides (a
/// directory is a main checkout; a file pointing elsewhere than `…/worktrees/<name>` is a
/// submodule).
pub fn linked_worktree(dir: &Path) -> Option<Checkout> {
    let dot_git = dir.ancestors().map(|d| d.join(".git")).find(|p| p.exists())?;
    if !dot_git.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let gitdir = Path::new(text.lines().next()?.strip_prefix("gitdir:")?.trim());
    let gitdir = dot_git.parent()?.join(gitdir);
    let name = gitdir.file_name()?.to_str()?.to_owned();
    let worktrees = gitdir.parent()?;
    if worktrees.file_name()? != "worktrees" {
        return None;
    }
    let common = worktrees.parent()?;
    let main = match common.file_name() {
        Some(n) if n == ".git" => common.parent()?.to_owned(),
        _ => common.to_owned(),
    };
    let head = std::fs::read_to_string(gitdir.join("HEAD")).unwrap_or_default();
    let branch = head
        .trim()
        .strip_prefix("ref:")
        .map(|r| r.trim())
        .map(|r| r.strip_prefix("refs/heads/").unwrap_or(r).to_owned());
    let label = branch.as_deref().map(label).filter(|l| !l.is_empty()).unwrap_or_else(|| {
        let from_name = label(&name);
        if from_name.is_empty() { "worktree".into() } else { from_name }
    });
    Some(Checkout { label, branch, main: main.canonicalize().unwrap_or(main) })
}

/// A branch as a DNS label: lowercase letters and digits, every run of anything else one '-',
/// at most 63 characters, no '-' at either end (`Feature/Login_v2` → `feature-login-v2`).
pub fn label(branch: &str) -> String {
    let mut out = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(63).collect();
    trimmed.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_becomes_a_dns_label() {
        assert_eq!(label("Feature/Login_v2"), "feature-login-v2");
        assert_eq!(label("--fix//ünïcode--"), "fix-n-code");
        assert_eq!(label(&"x".repeat(80)).len(), 63);
        assert_eq!(label("///"), "");
    }

    /// `<root>/repo/.git/worktrees/<name>` with `HEAD`, and `<root>/wt/.git` pointing at it.
    fn layout(head: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let gitdir = root.path().join("repo/.git/worktrees/wt-1");
        std::fs::create_dir_all(&gitdir).unwrap();
        std::fs::write(gitdir.join("HEAD"), head).unwrap();
        std::fs::create_dir_all(root.path().join("wt/app")).unwrap();
        std::fs::write(root.path().join("wt/.git"), format!("gitdir: {}\n", gitdir.display())).unwrap();
        root
    }

    #[test]
    fn a_linked_worktree_is_found_from_a_subdirectory_with_its_branch_and_main_checkout() {
        let root = layout("ref: refs/heads/feature/Login\n");
        let found = linked_worktree(&root.path().join("wt/app")).expect("a linked worktree");
        assert_eq!(found.label, "feature-login");
        assert_eq!(found.branch.as_deref(), Some("feature/Login"));
        assert_eq!(found.main, root.path().join("repo").canonicalize().unwrap());
        assert_eq!(found.name("shop.localhost"), "feature-login.shop.localhost");
    }

    #[test]
    fn a_detached_worktree_is_named_after_the_worktree() {
        let root = layout("0123456789abcdef0123456789abcdef01234567\n");
        let found = linked_worktree(&root.path().join("wt")).expect("a linked worktree");
        assert_eq!((found.label.as_str(), found.branch.as_deref()), ("wt-1", None));
    }

    #[test]
    fn a_main_checkout_and_a_submodule_are_not_worktrees() {
        let root = layout("ref: refs/heads/x\n");
        assert_eq!(linked_worktree(&root.path().join("repo")), None, "main checkout");
        let sub = root.path().join("repo/sub");
        std::fs::create_dir_all(root.path().join("repo/.git/modules/sub")).unwrap();
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(".git"), "gitdir: ../.git/modules/sub\n").unwrap();
        assert_eq!(linked_worktree(&sub), None, "submodule");
    }
}
