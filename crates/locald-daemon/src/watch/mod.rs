//! `locald up --watch`: a file watcher per project that restarts the services whose `watch`
//! globs a change touched, after running their `on_change` build step. Changes are coalesced
//! twice: `notify`'s debouncer merges the events of one file, and a batch is only acted on once
//! the project has been quiet for [`QUIET`], so a `git checkout` of 500 files is one restart.
//! The project's config is read again for every batch, so a reloaded `locald.toml` applies.

mod build;
mod filter;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;

use crate::supervisor::service::Control;
use crate::supervisor::{Supervisor, control};

/// How long a project must be quiet before a batch of changes is acted on.
const QUIET: Duration = Duration::from_millis(300);
/// The debouncer's own window for one file's events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The last restart a change caused, for `status`.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) path: String,
    pub(crate) more: usize,
    pub(crate) at: Instant,
}

/// A project's watcher: dropping it stops the watch and its task.
struct Watching {
    _debouncer:
        notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>,
    task: tokio::task::JoinHandle<()>,
    changes: Arc<Mutex<HashMap<String, Change>>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every watched project of the daemon, by project directory; the list is kept in the state
/// directory so a daemon started after a crash watches the same projects again.
pub(crate) struct Watchers {
    by_dir: Mutex<HashMap<PathBuf, Watching>>,
    file: PathBuf,
}

/// Why a project cannot be watched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("no project running in {0}")]
    NotRunning(PathBuf),
    #[error("no service of {0} has watch = [...] in its locald.toml")]
    NothingToWatch(PathBuf),
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: notify::Error },
}

impl Watchers {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Watchers { by_dir: Mutex::default(), file: state_dir.join("watched.json") }
    }

    /// Watches again what was watched when the last daemon stopped, of the projects that are
    /// running now.
    pub(crate) fn restore(&self, supervisor: &Arc<Supervisor>) {
        let dirs: Vec<PathBuf> =
            std::fs::read(&self.file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        for dir in dirs {
            if let Err(e) = self.start(supervisor, &dir) {
                tracing::warn!("not watching {} again: {e}", dir.display());
            }
        }
        self.persist(&self.lock());
    }

    fn persist(&self, watching: &HashMap<PathBuf, Watching>) {
        let dirs: Vec<&PathBuf> = watching.keys().collect();
        let json = serde_json::to_vec(&dirs).unwrap_or_default();
        if locald_core::atomic_file::write(&self.file, &json, 0o600).is_err() {
            tracing::warn!("cannot record the watched projects in {}", self.file.display());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Watching>> {
        self.by_dir.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching the running project in `dir` (again: the roots follow its config now).
    /// Returns each watched service with its globs.
    pub(crate) fn start(
        &self,
        supervisor: &Arc<Supervisor>,
        dir: &Path,
    ) -> Result<Vec<(String, Vec<String>)>, WatchError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let project = supervisor.get(&dir).ok_or_else(|| WatchError::NotRunning(dir.clone()))?;
        let watched: Vec<(String, Vec<String>)> = project
            .config
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.watch.as_ref()?.paths.clone())))
            .collect();
        if watched.is_empty() {
            return Err(WatchError::NothingToWatch(dir));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = move |result: DebounceEventResult| {
            if let Ok(events) = result {
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
                    .flat_map(|e| e.event.paths)
                    .collect();
                if !paths.is_empty() {
                    let _ = tx.send(paths);
                }
            }
        };
        let watch_error = |path: &Path, source| WatchError::Watch { path: path.to_owned(), source };
        let mut debouncer = new_debouncer(DEBOUNCE, None, handler).map_err(|e| watch_error(&dir, e))?;
        for (root, mode) in filter::roots(&project.config) {
            debouncer.watch(&root, mode).map_err(|e| watch_error(&root, e))?;
        }
        let changes = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(run(dir.clone(), supervisor.clone(), rx, changes.clone()));
        let mut watching = self.lock();
        watching.insert(dir, Watching { _debouncer: debouncer, task, changes });
        self.persist(&watching);
        Ok(watched)
    }

    /// Stops watching `dir`; true if it was watched.
    pub(crate) fn stop(&self, dir: &Path) -> bool {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let mut watching = self.lock();
        let was = watching.remove(&dir).is_some();
        self.persist(&watching);
        was
    }

    /// At `server stop`: nothing is watched by the next daemon either, as nothing runs.
    pub(crate) fn stop_all(&self) {
        let mut watching = self.lock();
        watching.clear();
        self.persist(&watching);
    }

    /// Whether `dir` is watched, and the last restart a change caused per service.
    pub(crate) fn of(&self, dir: &Path) -> Option<HashMap<String, Change>> {
        let watching = self.lock();
        let w = watching.get(dir)?;
        let changes = w.changes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(changes)
    }
}

/// Acts on batches of changed paths until the watch is dropped or the project goes.
async fn run(
    dir: PathBuf,
    supervisor: Arc<Supervisor>,
    mut events: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    changes: Arc<Mutex<HashMap<String, Change>>>,
) {
    while let Some(first) = events.recv().await {
        let mut batch = first;
        // Until the project is quiet: one checkout, one restart.
        loop {
            match tokio::time::timeout(QUIET, events.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        let Some(project) = supervisor.get(&dir) else { return };
        let filter = filter::Filter::new(&project.config);
        // Per service, the changed paths in the order they came, each once.
        let mut touched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        // A new directory is followed by the files made in it; those are what a note should name.
        for path in batch.iter().filter(|p| !p.is_dir()) {
            for service in filter.affected(path) {
                let shown = path.strip_prefix(&dir).unwrap_or(path).display().to_string();
                let paths = touched.entry(service).or_default();
                if !paths.contains(&shown) {
                    paths.push(shown);
                }
            }
        }
        // In start order, so a dependency is back before what needs it restarts.
        for handle in &project.services {
            let Some(paths) = touched.get(handle.service.name.as_str()) else { continue };
            let what = describe(paths);
            if let Some(on_change) = handle.service.watch.as_ref().and_then(|w| w.on_change.as_ref()) {
                handle.sink.note(format!("{what} changed: running on_change"));
                if let Err(failure) = build::run(on_change, &handle.service, &handle.sink).await {
                    handle.sink.note(format!("on_change failed ({failure}); the running copy stays up"));
                    continue;
                }
            }
            handle.sink.note(format!("{what} changed: restarting"));
            control(handle, Control::Restart).await;
            let change = Change { path: paths[0].clone(), more: paths.len() - 1, at: Instant::now() };
            changes.lock().unwrap_or_else(|e| e.into_inner()).insert(handle.service.name.clone(), change);
        }
    }
}

/// `src/app.py`, or `src/app.py and 299 more`.
fn describe(paths: &[String]) -> String {
    match paths.len() {
        1 => paths[0].clone(),
        n => format!("{} and {} more", paths[0], n - 1),
    }
}
