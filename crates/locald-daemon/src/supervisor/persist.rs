//! Which projects are up, written down after every change so that a daemon started after a
//! crash clears the old processes and brings the same projects up again.

use std::path::PathBuf;

use super::{Supervisor, UpError, process};

impl Supervisor {
    fn projects_file(&self) -> PathBuf {
        self.state_dir.join("projects.json")
    }

    /// After a crash of the previous daemon: kill what it left running, then bring its projects
    /// up again. Returns the projects that could not be restored, with why.
    pub fn recover(&self) -> Vec<(PathBuf, UpError)> {
        if let Some(cgroups) = &self.cgroups {
            cgroups.kill_leftovers();
        }
        let killed = process::kill_leftovers(&self.owner);
        if killed > 0 {
            tracing::info!("stopped {killed} process(es) left by a previous daemon");
        }
        let dirs: Vec<PathBuf> = std::fs::read(self.projects_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut failed = Vec::new();
        for dir in dirs {
            if let Err(e) = self.up(&dir) {
                failed.push((dir, e));
            }
        }
        self.persist();
        failed
    }

    pub(super) fn persist(&self) {
        let dirs: Vec<PathBuf> =
            self.projects.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let tmp = self.state_dir.join("projects.json.tmp");
        let json = serde_json::to_vec(&dirs).expect("paths serialize");
        if std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, self.projects_file())).is_err() {
            tracing::warn!("cannot record the running projects in {}", self.state_dir.display());
        }
    }
}
