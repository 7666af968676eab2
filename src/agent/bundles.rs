//! Bundle intake: the drop directory and the bundle URLs, and applying what they admit to
//! this node's members (without grants, readiness from kubelet's pod list, since bundles must
//! work with the API server away).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::AgentError;
use super::node_labels::NodeLabels;
use crate::config::Config;
use crate::desired::DesiredObject;
use crate::desired::applied::{Application, Applied};
use crate::desired::authority::Connectivity;
use crate::desired::drop::{DropDir, Dropped};
use crate::desired::http::{FetchSettings, Fetcher, HttpSource, Polled, Released};
use crate::manifest::store::ManifestStore;
use crate::ota::Ota;
use crate::rollout::plan::{Plan, plan};
use crate::rollout::upgrade::{InFlight, Outcome, Upgrader};
use crate::rules::jittered;

/// What bundle intake needs from the agent; each watch runs in its own task.
pub(super) struct BundleIntake {
    pub(super) node: String,
    pub(super) config: Config,
    pub(super) node_labels: Arc<NodeLabels>,
    pub(super) connectivity: Arc<Connectivity>,
    pub(super) ota: Arc<Ota>,
    pub(super) applier: BundleApplier,
}

impl BundleIntake {
    /// Watch `bundle.dropDir` (when set): verify each complete file, move it to processed/ or
    /// rejected/, and apply accepted bundles' items to this node's members at once, with
    /// readiness from kubelet's pod list (they must work with the API server away).
    pub(super) fn watch_drop_dir(&self) -> Result<(), AgentError> {
        let settings = &self.config.bundle;
        if settings.drop_dir.is_empty() {
            return Ok(());
        }
        let trust = &self.config.trust;
        let policy = crate::bundle::TrustPolicy::load(&trust.trusted_keys, trust.threshold)
            .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?;
        let mut drop_dir = DropDir::open(
            std::path::Path::new(&settings.drop_dir),
            policy,
            &self.config.state_dir,
        )
        .map_err(|e| AgentError::Config(e.to_string()))?;
        let (node, node_labels) = (self.node.clone(), self.node_labels.clone());
        let applier = self.applier.clone();
        tracing::info!(node = %node, dir = %settings.drop_dir, "watching the bundle drop directory");
        tokio::spawn(async move {
            loop {
                let labels = node_labels.current();
                for result in drop_dir.scan(&node, &labels, Instant::now()) {
                    match result {
                        Err(e) => tracing::error!(node = %node, error = %e, "drop directory"),
                        Ok(Dropped::Rejected {
                            file,
                            reason,
                            message,
                        }) => {
                            crate::metrics::inc(
                                "staticpod_puller_bundle_refusals_total",
                                &[("reason", reason), ("source", "drop")],
                            );
                            tracing::warn!(node = %node, file = %file.display(), reason, %message, "bundle rejected")
                        }
                        Ok(Dropped::Accepted {
                            file,
                            sequence,
                            objects,
                            refused,
                        }) => {
                            tracing::info!(node = %node, file = %file.display(), sequence, objects = objects.len(), "bundle accepted");
                            for r in refused {
                                tracing::warn!(node = %node, sequence, item = %r, "bundle item refused; nothing written for it");
                            }
                            let origin = Origin {
                                sequence,
                                source: file.display().to_string(),
                            };
                            apply_bundle(&applier, &origin, objects);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(())
    }

    /// Poll `bundle.urls` (when set): verify what they serve and hold it while the cluster is
    /// authoritative; once the API server has been unreachable for `bundle.offlineAfter`, admit
    /// the held bundles for good and apply their items as dropped ones are (see
    /// [`crate::desired::http`] and [`crate::desired::authority`]).
    pub(super) fn watch_bundle_urls(&self) -> Result<(), AgentError> {
        let settings = self.config.bundle.clone();
        if settings.urls.is_empty() {
            return Ok(());
        }
        let trust = &self.config.trust;
        let policy = crate::bundle::TrustPolicy::load(&trust.trusted_keys, trust.threshold)
            .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?;
        let cap = policy.limits().envelope.max_envelope_bytes;
        let fetcher = Fetcher::new(FetchSettings::new(settings.ca_file.clone(), cap))
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let mut source = HttpSource::new(&settings.urls, fetcher, policy, &self.config.state_dir);
        let (node, node_labels) = (self.node.clone(), self.node_labels.clone());
        let (connectivity, ota, applier) = (
            self.connectivity.clone(),
            self.ota.clone(),
            self.applier.clone(),
        );
        let (poll_interval, offline_after) = (settings.poll_interval.0, settings.offline_after.0);
        tracing::info!(node = %node, urls = ?settings.urls, poll_interval = %settings.poll_interval, offline_after = %settings.offline_after, "polling bundle URLs");
        tokio::spawn(async move {
            let mut next_poll = Instant::now();
            // URLs whose last fetch failed (said once until one succeeds).
            let mut failing: HashSet<String> = HashSet::new();
            loop {
                let labels = node_labels.current();
                if Instant::now() >= next_poll {
                    let authoritative = !connectivity
                        .reach()
                        .fetched_bundles_apply(Instant::now(), offline_after);
                    for polled in source
                        .poll(&node, &labels, k8s_openapi::jiff::Timestamp::now())
                        .await
                    {
                        report_polled(&node, polled, authoritative, &mut failing);
                    }
                    ota.set_held_bundles(source.held());
                    next_poll = Instant::now() + jittered(poll_interval);
                }
                if !source.held().is_empty()
                    && connectivity
                        .reach()
                        .fetched_bundles_apply(Instant::now(), offline_after)
                {
                    for released in
                        source.release(&node, &labels, k8s_openapi::jiff::Timestamp::now())
                    {
                        match released {
                            Released::Accepted {
                                url,
                                sequence,
                                objects,
                                refused,
                            } => {
                                tracing::info!(node = %node, %url, sequence, objects = objects.len(), "API server unreachable for bundle.offlineAfter: applying the fetched bundle");
                                for r in refused {
                                    tracing::warn!(node = %node, sequence, item = %r, "bundle item refused; nothing written for it");
                                }
                                let origin = Origin {
                                    sequence,
                                    source: url,
                                };
                                apply_bundle(&applier, &origin, objects);
                            }
                            Released::Refused {
                                url,
                                sequence,
                                reason,
                                message,
                            } => {
                                crate::metrics::inc(
                                    "staticpod_puller_bundle_refusals_total",
                                    &[("reason", reason), ("source", "http")],
                                );
                                tracing::warn!(node = %node, %url, sequence, reason, %message, "fetched bundle refused; nothing written");
                            }
                        }
                    }
                    ota.set_held_bundles(source.held());
                }
                let until_poll = next_poll.saturating_duration_since(Instant::now());
                tokio::time::sleep(until_poll.min(Duration::from_secs(1))).await;
            }
        });
        Ok(())
    }
}

/// Where an accepted bundle came from, for the record of what bundles set.
struct Origin {
    sequence: u64,
    /// Its URL, or the dropped file.
    source: String,
}

/// What applying bundles needs from the agent (cloned into the drop-directory and URL tasks).
#[derive(Clone)]
pub(super) struct BundleApplier {
    pub(super) node: String,
    pub(super) upgrader: Arc<Upgrader>,
    pub(super) running: Arc<InFlight>,
    pub(super) store: Arc<ManifestStore>,
    pub(super) changed: Arc<Notify>,
    pub(super) applied: Arc<Applied>,
    /// The item's images are pulled before its manifest is written.
    pub(super) prepull: Arc<crate::images::Prepull>,
    /// kubelet's pod list URL and token (readiness without the API server).
    pub(super) kubelet: (String, Option<String>),
}

/// Upgrade each member of a bundle's objects that is behind, without grants, reading readiness
/// from kubelet's pod list; record what succeeded (see [`Applied`]).
fn apply_bundle(applier: &BundleApplier, origin: &Origin, objects: Vec<DesiredObject>) {
    let BundleApplier {
        node,
        upgrader,
        running,
        store,
        changed,
        applied,
        prepull,
        kubelet: (url, token),
    } = applier;
    let failed = upgrader.failed.snapshot();
    for d in objects {
        let local = match store.read(&d.manifest) {
            Ok(Some(local)) => local,
            Ok(None) => {
                tracing::info!(object = %d.key, "bundle item: this node is not a member");
                continue;
            }
            Err(e) => {
                tracing::warn!(object = %d.key, error = %e, "bundle item: reading the manifest");
                continue;
            }
        };
        match plan(&d, Some(&local), None, &failed) {
            Plan::Upgrade { .. } | Plan::UpgradeAvailable | Plan::Drifted => {}
            other => {
                tracing::info!(object = %d.key, plan = ?other, "bundle item: nothing to do");
                continue;
            }
        }
        let Some(latest) = running.begin(&d.manifest, &d.hash) else {
            tracing::warn!(object = %d.key, "bundle item: an upgrade of it is running; skipped");
            continue;
        };
        let kubelet = match crate::ota::kubelet::KubeletPods::start(url, token.clone()) {
            Ok(k) => k,
            Err(e) => {
                running.end(&d.manifest);
                tracing::error!(object = %d.key, error = %e, "bundle item: cannot read readiness");
                continue;
            }
        };
        applied.begin(&d.manifest, origin.sequence);
        let offline_upgrader = upgrader.with_mirrors(kubelet);
        let (running, changed, applied) = (running.clone(), changed.clone(), applied.clone());
        let (node, sequence, source) = (node.clone(), origin.sequence, origin.source.clone());
        let prepull = prepull.clone();
        tokio::spawn(async move {
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            // Offline too the images come first; a node with a local mirror pulls them.
            let pulled = prepull
                .ready(&d.manifest, &d.hash, || {
                    crate::images::images_of(&d.rendered)
                })
                .await;
            let upgraded = match pulled {
                Ok(()) => offline_upgrader
                    .upgrade(&d, None, superseded, || {})
                    .await
                    .map_err(|e| e.to_string()),
                Err(reason) => Err(format!("the images could not be pulled: {reason}")),
            };
            let succeeded = match upgraded {
                Ok(outcome) => {
                    tracing::info!(object = %d.key, node = %node, sequence, ?outcome, "bundle item applied");
                    matches!(outcome, Outcome::Succeeded { .. }).then(|| Application {
                        object: d.key.clone(),
                        manifest: d.manifest.clone(),
                        sequence,
                        source,
                        hash: d.hash.clone(),
                        applied_at: k8s_openapi::jiff::Timestamp::now(),
                    })
                }
                Err(e) => {
                    tracing::error!(object = %d.key, node = %node, sequence, error = %e, "bundle item failed");
                    None
                }
            };
            applied.end(&d.manifest, succeeded);
            running.end(&d.manifest);
            changed.notify_one();
        });
    }
}

/// Log (and count) what one poll of a bundle URL found. `authoritative`: the cluster is, so a
/// new bundle is held back.
fn report_polled(node: &str, polled: Polled, authoritative: bool, failing: &mut HashSet<String>) {
    let result = match polled {
        Polled::Unchanged { url } => {
            failing.remove(&url);
            "unchanged"
        }
        Polled::Held {
            url,
            sequence,
            items,
        } => {
            failing.remove(&url);
            if authoritative {
                tracing::info!(node = %node, %url, sequence, items, "fetched bundle verified; held back: the cluster is authoritative while the API server is reachable");
            } else {
                tracing::info!(node = %node, %url, sequence, items, "fetched bundle verified");
            }
            "changed"
        }
        Polled::Refused {
            url,
            reason,
            message,
        } => {
            failing.remove(&url);
            crate::metrics::inc(
                "staticpod_puller_bundle_refusals_total",
                &[("reason", reason), ("source", "http")],
            );
            tracing::warn!(node = %node, %url, reason, %message, "fetched bundle refused; nothing from it is used");
            "changed"
        }
        Polled::Failed { url, error } => {
            if failing.insert(url.clone()) {
                tracing::warn!(node = %node, %url, error = %error, "fetching a bundle URL failed (retried with backoff; polled again later)");
            } else {
                tracing::debug!(node = %node, %url, error = %error, "fetching a bundle URL failed again");
            }
            "error"
        }
    };
    crate::metrics::inc(
        "staticpod_puller_bundle_fetches_total",
        &[("result", result)],
    );
}
