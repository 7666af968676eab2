//! The node agent (`run` and `sync --once`): a few small parts wired together.
//!
//! - [`caches`]: reflectors over both kinds, this node's pods, Node and grants, plus the
//!   manifest-directory watch; any change wakes the pass.
//! - [`reconcile`]: the pass, desired → plan → act (upgrade with a grant, drift, OTA
//!   announcement).
//! - [`bundles`]: the drop directory and bundle URLs, and applying what they admit.
//! - [`servers`]: the node-local API and metrics.
//!
//! Each part owns its state; what they share are the handles built in [`Agent::start`]: the
//! manifest store, the upgrader, the set of upgrades in flight, what bundles set, the OTA
//! state the local API reads, and the wake-up signal.

mod bundles;
mod caches;
mod node_labels;
mod reconcile;
mod servers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::desired::applied::Applied;
use crate::desired::authority::{Connectivity, probe_interval};
use crate::desired::cache;
use crate::images::Prepull;
use crate::images::cri::Cri;
use crate::manifest::store::{ManifestStore, StoreError};
use crate::ota::{self, Ota, api};
use crate::rollout::events::Recorder;
use crate::rollout::grant::Grants;
use crate::rollout::upgrade::{FailedHashes, InFlight, Upgrader};
use bundles::{BundleApplier, BundleIntake};
use caches::{ReflectedPods, Reflectors, start_reflectors, watch_manifest_dir};
use node_labels::NodeLabels;
use reconcile::{Memory, Reconciler};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("connecting to the API server with {path}: {reason}")]
    Client { path: String, reason: String },
    #[error("{0}")]
    NotConverged(String),
    /// Not converged, and waiting will not change it: only an operator or a new template can
    /// (an OTA upgrade waiting, a hash rolled back here, an edit kept in report mode).
    #[error("{0}")]
    Settled(String),
}

pub struct Agent {
    node: String,
    config: Config,
    store: Arc<ManifestStore>,
    ota: Arc<Ota>,
    intake: BundleIntake,
    reconciler: Reconciler,
    /// Keep the reflectors and the manifest-directory watch alive.
    _reflectors: Reflectors,
    _dir_watch: Option<notify::RecommendedWatcher>,
}

/// Pre-pull through `connected` (a runtime the caller connected), or else the runtime
/// `cri.endpoint` names: a socket given that is missing or not a socket stops the agent; none
/// found (or `""`) turns pre-pull off, saying why.
fn start_prepull(
    config: &Config,
    node: &str,
    connected: Option<Cri>,
    changed: Arc<tokio::sync::Notify>,
) -> Result<Arc<Prepull>, AgentError> {
    let cri = match connected {
        Some(cri) => Some(cri),
        None => match crate::images::cri::resolve(config.cri.endpoint.as_deref())
            .map_err(|e| AgentError::Config(e.to_string()))?
        {
            Ok(socket) => {
                tracing::info!(%node, socket = %socket.display(), "pulling new templates' images before upgrading, through the container runtime");
                Some(Cri::new(&socket))
            }
            Err(why) => {
                tracing::info!(%node, "image pre-pull off: {why}; kubelet pulls images after the manifest is written");
                None
            }
        },
    };
    Ok(Prepull::new(
        cri,
        config.cri.pull_timeout.0,
        usize::try_from(config.cri.pull_concurrency).unwrap_or(1),
        changed,
    ))
}

impl Agent {
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let client = crate::kubeclient::from_kubeconfig(&config.kubeconfig)
            .await
            .map_err(|reason| AgentError::Client {
                path: config.kubeconfig.display().to_string(),
                reason,
            })?;
        Agent::start_with_client(config, client, None).await
    }

    /// As [`Agent::start`], with a client made by the caller instead of one from
    /// `config.kubeconfig`, and, if given, a container runtime the caller connected instead of
    /// the one `cri.endpoint` names (the demo's agent tasks reach the dev cluster and their
    /// nodes' runtimes without sockets).
    pub async fn start_with_client(
        config: Config,
        client: kube::Client,
        cri: Option<Cri>,
    ) -> Result<Agent, AgentError> {
        let node = config.resolved_node_name().map_err(AgentError::Config)?;
        let store = Arc::new(ManifestStore::open(
            &config.manifest_dir,
            &config.state_dir,
        )?);
        let (caches, reflectors) = start_reflectors(&client, &config, &node);
        let dir_watch = watch_manifest_dir(&config.manifest_dir, caches.changed.clone());
        let grants = Arc::new(Grants::new(
            client.clone(),
            caches.leases.clone(),
            &config.agent_namespace,
            &node,
        ));
        let events = Recorder::new(client.clone(), &node);
        let upgrader = Arc::new(Upgrader {
            node: node.clone(),
            store: store.clone(),
            mirrors: Arc::new(ReflectedPods {
                pods: caches.pods.clone(),
                node: caches.node.clone(),
                changed: caches.pods_changed.clone(),
            }),
            events: events.clone(),
            failed: Arc::new(FailedHashes::load(&store)),
            progress_deadline: config.rollout.progress_deadline.0,
            lease_duration: config.rollout.lease_duration.0,
        });
        let last_cached = cache::load(&store).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the desired-state cache");
            BTreeMap::new()
        });
        tracing::info!(node = %node, manifests = %config.manifest_dir.display(), cached_objects = last_cached.len(), "agent started");
        let running = Arc::new(InFlight::default());
        let kubelet_token = match &config.ota.kubelet_token_file {
            Some(path) => {
                Some(api::read_token(path).map_err(|e| AgentError::Config(e.to_string()))?)
            }
            None => None,
        };
        let offline = ota::Offline {
            allow: config.ota.allow_offline,
            kubelet_pods_url: config.ota.kubelet_pods_url.clone(),
            kubelet_token,
        };
        let applied = Arc::new(Applied::load(store.clone()));
        let node_labels = Arc::new(NodeLabels::new(&node, caches.node.clone(), store.clone()));
        // Reachability matters only to bundles: without a bundle source nothing probes.
        let connectivity = if config.bundle.urls.is_empty() && config.bundle.drop_dir.is_empty() {
            Connectivity::fixed(true)
        } else {
            let changed = caches.changed.clone();
            Connectivity::start(
                client.clone(),
                probe_interval(config.bundle.offline_after.0),
                &node,
                move |_| changed.notify_one(),
            )
        };
        let prepull = start_prepull(&config, &node, cri, caches.changed.clone())?;
        let ota = Arc::new(Ota::new(
            &node,
            client.clone(),
            offline,
            caches.pods.clone(),
            caches.leases.clone(),
            store.clone(),
            upgrader.clone(),
            running.clone(),
            caches.changed.clone(),
            applied.clone(),
            prepull.clone(),
        ));
        ota.seed_desired(last_cached.clone());
        let template_policy = if config.trust.require_signed_templates {
            Some(
                crate::bundle::TrustPolicy::load(
                    &config.trust.trusted_keys,
                    config.trust.threshold,
                )
                .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?,
            )
        } else {
            None
        };
        let intake = BundleIntake {
            node: node.clone(),
            config: config.clone(),
            node_labels,
            connectivity: connectivity.clone(),
            ota: ota.clone(),
            applier: BundleApplier {
                node: node.clone(),
                upgrader: upgrader.clone(),
                running: running.clone(),
                store: store.clone(),
                changed: caches.changed.clone(),
                applied: applied.clone(),
                prepull: prepull.clone(),
                kubelet: (
                    config.ota.kubelet_pods_url.clone(),
                    ota.offline.kubelet_token.clone(),
                ),
            },
        };
        let reconciler = Reconciler {
            node: node.clone(),
            config: config.clone(),
            client,
            store: store.clone(),
            caches,
            grants,
            upgrader,
            events,
            running,
            ota: ota.clone(),
            prepull,
            template_policy,
            connectivity,
            applied,
            last_cached,
            selected: None,
            memory: Memory::default(),
        };
        Ok(Agent {
            node,
            config,
            store,
            ota,
            intake,
            reconciler,
            _reflectors: reflectors,
            _dir_watch: dir_watch,
        })
    }

    /// Watch `bundle.dropDir` (see [`bundles`]).
    pub fn watch_drop_dir(&self) -> Result<(), AgentError> {
        self.intake.watch_drop_dir()
    }

    /// Poll `bundle.urls` (see [`bundles`]).
    pub fn watch_bundle_urls(&self) -> Result<(), AgentError> {
        self.intake.watch_bundle_urls()
    }

    /// Serve Prometheus metrics on `metrics.listen`, and write the bound address to
    /// `stateDir/metrics.addr`.
    pub async fn serve_metrics(&self) -> Result<(), AgentError> {
        servers::serve_metrics(&self.node, &self.config, &self.store, self.ota.clone()).await
    }

    /// Start the node-local API (`localApi.listen`), and write the address it bound to
    /// `stateDir/local-api.addr`.
    pub async fn serve_local_api(&self) -> Result<(), AgentError> {
        servers::serve_local_api(&self.node, &self.config, &self.store, self.ota.clone()).await
    }

    /// The daemon: resume journaled upgrades, then reconcile on every change (and every
    /// second, for deadlines).
    pub async fn run(mut self) -> Result<(), AgentError> {
        while !self.reconciler.caches.ready(Duration::from_secs(30)).await {
            tracing::warn!(node = %self.node, "API server not reachable yet; keeping the node as it is");
        }
        self.reconciler.resume_journal().await;
        loop {
            self.reconciler.pass().await;
            tokio::select! {
                _ = self.reconciler.caches.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// `sync --once`: reconcile until converged or `timeout`; Ok when converged.
    pub async fn sync_once(mut self, timeout: Duration) -> Result<String, AgentError> {
        let deadline = Instant::now() + timeout;
        if !self.reconciler.caches.ready(timeout).await {
            return Err(AgentError::NotConverged(
                "the API server did not answer in time".into(),
            ));
        }
        self.reconciler.resume_journal().await;
        loop {
            let pending = self.reconciler.pass().await;
            let upgrading = !self.reconciler.running.is_empty();
            if pending.is_empty() && !upgrading {
                return Ok(format!("node {} converged", self.node));
            }
            // A held-back hash, a kept hand edit or an OTA upgrade waiting for its operator
            // will not change by waiting: say so now rather than at the timeout.
            let settled = !upgrading && pending.iter().all(|p| p.settled);
            if settled || Instant::now() > deadline {
                let reasons: Vec<&str> = pending.iter().map(|p| p.what.as_str()).collect();
                let message = format!("not converged: {}", reasons.join("; "));
                return Err(if settled {
                    AgentError::Settled(message)
                } else {
                    AgentError::NotConverged(message)
                });
            }
            tokio::select! {
                _ = self.reconciler.caches.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
