//! Pre-pull: when a member's desired hash changes, the images of the new template are checked
//! and the missing ones pulled (bounded concurrency, retries with backoff, a deadline), so the
//! upgrade that follows stops the pod only for its restart. One pull per manifest: a newer
//! hash replaces the pull of an older one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::cri::{Cri, CriError};
use crate::metrics;

/// Where the images of one manifest's desired hash stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// Being checked or pulled.
    Pulling,
    /// Every image is on the node.
    Ready,
    /// An image could not be pulled (after retries, or by the deadline): why.
    Failed(String),
}

struct Entry {
    hash: String,
    /// Where the pull stands; [`Prepull::ready`] waits on it.
    state: watch::Sender<PullState>,
    started: Instant,
    task: Option<tokio::task::AbortHandle>,
}

/// A pull still running this long after it started is reported as one; a shorter one (the
/// images were there) costs no `Pulling` condition or Event.
pub const REPORT_AFTER: Duration = Duration::from_secs(3);

/// The pulls of this node's agent.
pub struct Prepull {
    /// None: pre-pull is off (no container runtime); every template counts as ready.
    cri: Option<Cri>,
    timeout: Duration,
    concurrency: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken when a pull ends, so the reconcile pass acts on it at once.
    changed: Arc<Notify>,
}

impl Prepull {
    pub fn new(
        cri: Option<Cri>,
        timeout: Duration,
        concurrency: usize,
        changed: Arc<Notify>,
    ) -> Arc<Prepull> {
        Arc::new(Prepull {
            cri,
            timeout,
            concurrency: concurrency.max(1),
            entries: Mutex::new(HashMap::new()),
            changed,
        })
    }

    pub fn enabled(&self) -> bool {
        self.cri.is_some()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where `hash`'s images for `manifest` stand, starting their pull when the hash is new
    /// for the manifest (stopping the pull of an older one). `images` lists them; it is
    /// called only to start a pull.
    pub fn ensure(
        self: &Arc<Self>,
        manifest: &str,
        hash: &str,
        images: impl FnOnce() -> Vec<String>,
    ) -> PullState {
        let Some(cri) = self.cri.clone() else {
            return PullState::Ready;
        };
        let mut entries = self.entries();
        if let Some(e) = entries.get(manifest).filter(|e| e.hash == hash) {
            return e.state.borrow().clone();
        }
        if let Some(task) = entries.get(manifest).and_then(|e| e.task.clone()) {
            tracing::info!(%manifest, %hash, "a newer template: the pull of the previous one stops");
            task.abort();
        }
        let this = self.clone();
        let (manifest_owned, hash_owned, images) =
            (manifest.to_string(), hash.to_string(), images());
        let task = tokio::spawn(async move {
            let pulling = pull_all(&cri, &images, this.concurrency, this.timeout);
            tokio::pin!(pulling);
            let result = tokio::select! {
                r = &mut pulling => r,
                () = tokio::time::sleep(REPORT_AFTER) => {
                    // Long enough to be reported: wake the pass to say so.
                    this.changed.notify_one();
                    pulling.await
                }
            };
            let state = match result {
                Ok(()) => PullState::Ready,
                Err(reason) => PullState::Failed(reason),
            };
            tracing::info!(manifest = %manifest_owned, hash = %hash_owned, ?state, "image pull ended");
            if let Some(e) = this
                .entries()
                .get_mut(&manifest_owned)
                .filter(|e| e.hash == hash_owned)
            {
                e.state.send_replace(state);
                e.task = None;
            }
            this.changed.notify_one();
        });
        entries.insert(
            manifest.to_string(),
            Entry {
                hash: hash.to_string(),
                state: watch::Sender::new(PullState::Pulling),
                started: Instant::now(),
                task: Some(task.abort_handle()),
            },
        );
        PullState::Pulling
    }

    /// Whether `hash`'s pull for `manifest` has run long enough to be reported.
    pub fn long_running(&self, manifest: &str, hash: &str) -> bool {
        self.entries()
            .get(manifest)
            .is_some_and(|e| e.hash == hash && e.started.elapsed() >= REPORT_AFTER)
    }

    /// Pull `hash`'s images again (YurtHub's imagepull request): a failure is forgotten.
    pub fn retry(
        self: &Arc<Self>,
        manifest: &str,
        hash: &str,
        images: impl FnOnce() -> Vec<String>,
    ) -> PullState {
        {
            let mut entries = self.entries();
            if entries.get(manifest).is_some_and(|e| {
                e.hash == hash && matches!(*e.state.borrow(), PullState::Failed(_))
            }) {
                entries.remove(manifest);
            }
        }
        self.ensure(manifest, hash, images)
    }

    /// Where `hash`'s images for `manifest` stand, if a pull was asked for.
    pub fn state(&self, manifest: &str, hash: &str) -> Option<PullState> {
        if !self.enabled() {
            return Some(PullState::Ready);
        }
        self.entries()
            .get(manifest)
            .filter(|e| e.hash == hash)
            .map(|e| e.state.borrow().clone())
    }

    /// Pull `hash`'s images if needed and wait until they are on the node (an OTA upgrade
    /// pulls first); the error is the pull's, or that a newer template replaced it.
    pub async fn ready(
        self: &Arc<Self>,
        manifest: &str,
        hash: &str,
        images: impl FnOnce() -> Vec<String>,
    ) -> Result<(), String> {
        if self.ensure(manifest, hash, images) == PullState::Ready {
            return Ok(());
        }
        let Some(mut state) = self
            .entries()
            .get(manifest)
            .filter(|e| e.hash == hash)
            .map(|e| e.state.subscribe())
        else {
            return Err(format!("a newer template replaced the pull of {hash}"));
        };
        let ended = state
            .wait_for(|s| *s != PullState::Pulling)
            .await
            .map(|s| s.clone());
        match ended {
            Ok(PullState::Failed(reason)) => Err(reason),
            Ok(_) => Ok(()),
            // The entry (and its sender) went: a newer hash took the manifest's pull.
            Err(_) => Err(format!("a newer template replaced the pull of {hash}")),
        }
    }
}

/// Check every image and pull the missing ones, `concurrency` at once, by `timeout`.
async fn pull_all(
    cri: &Cri,
    images: &[String],
    concurrency: usize,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let results: Vec<Result<(), String>> = futures::stream::iter(images.to_vec())
        .map(|image| async move { pull_one(cri, &image, deadline).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Pull `image` unless it is on the node already; true when it was pulled.
async fn check_and_pull(cri: &Cri, image: &str) -> Result<bool, CriError> {
    if cri.present(image).await? {
        return Ok(false);
    }
    cri.pull(image).await.map(|_| true)
}

async fn pull_one(cri: &Cri, image: &str, deadline: Instant) -> Result<(), String> {
    let started = std::time::Instant::now();
    let retried = (|| check_and_pull(cri, image))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .with_max_times(8),
        )
        .when(|e: &CriError| !e.permanent())
        .notify(|e, wait| tracing::warn!(%image, error = %e, ?wait, "pulling an image; retrying"));
    match tokio::time::timeout_at(deadline, retried).await {
        Ok(Ok(pulled)) => {
            let result = if pulled { "pulled" } else { "present" };
            metrics::inc("staticpod_puller_image_pulls_total", &[("result", result)]);
            if pulled {
                metrics::observe(
                    "staticpod_puller_image_pull_seconds",
                    started.elapsed().as_secs_f64(),
                );
            }
            Ok(())
        }
        Ok(Err(e)) => {
            metrics::inc(
                "staticpod_puller_image_pulls_total",
                &[("result", "failed")],
            );
            Err(e.to_string())
        }
        Err(_) => {
            metrics::inc(
                "staticpod_puller_image_pulls_total",
                &[("result", "failed")],
            );
            Err(format!(
                "pulling {image}: not done within the pull timeout (cri.pullTimeout)"
            ))
        }
    }
}
