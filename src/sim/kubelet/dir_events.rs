//! One inotify watch over the manifest directories of all of a dev cluster's kubelets, so each
//! reacts to a change at once, as kubelet does, instead of reading its directory every few
//! milliseconds: thousands of kubelets in one process would spend the machine on that. One
//! watch for all, because the per-user limit on inotify instances is small (128 by default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

type Wakers = Arc<RwLock<HashMap<PathBuf, Arc<Notify>>>>;

/// Changes in the watched directories, each told to the kubelet that reads it.
pub struct DirEvents {
    wakers: Wakers,
    /// None: inotify is not available; the kubelets find changes by polling alone.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl DirEvents {
    pub fn new() -> Arc<DirEvents> {
        let wakers: Wakers = Arc::default();
        let watcher = start_watcher(&wakers).ok();
        Arc::new(DirEvents {
            wakers,
            watcher: Mutex::new(watcher),
        })
    }

    /// Wake the returned signal on every change in `dir` (never, if it cannot be watched: the
    /// kubelet's poll still finds the change).
    pub(super) fn watch(&self, dir: &Path) -> Arc<Notify> {
        use notify::Watcher as _;
        let waker = Arc::new(Notify::new());
        self.wakers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dir.to_path_buf(), waker.clone());
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        // Instances may have been freed since (the per-user limit is shared with every agent).
        if watcher.is_none() {
            match start_watcher(&self.wakers) {
                Ok(w) => *watcher = Some(w),
                Err(e) => {
                    tracing::debug!(error = %e, "simulated kubelets cannot watch their manifest directories; they poll")
                }
            }
        }
        if let Some(w) = watcher.as_mut()
            && let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive)
        {
            tracing::debug!(dir = %dir.display(), error = %e, "watching a simulated kubelet's manifest directory; it polls");
        }
        waker
    }

    pub(super) fn unwatch(&self, dir: &Path) {
        use notify::Watcher as _;
        self.wakers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            // A directory removed meanwhile is no longer watched: nothing to undo.
            let _ = w.unwatch(dir);
        }
    }
}

/// An inotify watch whose events wake the kubelet of the directory they happen in.
fn start_watcher(wakers: &Wakers) -> notify::Result<notify::RecommendedWatcher> {
    let wakers = wakers.clone();
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads are not changes: the kubelet's own would wake it again, for ever.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let wakers = wakers.read().unwrap_or_else(|e| e.into_inner());
        for path in &event.paths {
            // A file in a watched directory, or the directory itself.
            let dir = path.parent().filter(|d| wakers.contains_key(*d));
            if let Some(waker) = wakers.get(dir.unwrap_or(path)) {
                waker.notify_one();
            }
        }
    })
}
