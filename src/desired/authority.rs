//! Who is authoritative for this node's manifests.
//!
//! While the API server is reachable the cluster is: bundles fetched over HTTP are verified but
//! held back, and a manifest a bundle set is reconciled to the cluster's template as usual
//! (with an Event saying so, see [`super::applied`]). Once the API server has been unreachable
//! for `bundle.offlineAfter`, verified fetched bundles apply. Dropped bundles apply at once
//! either way: whoever dropped the file is at the device.
//!
//! Reachability is what [`Connectivity`] last saw: it asks the API server for `/version`
//! (2 s timeout, the OTA probe's) every [`probe_interval`]. The reflectors' watch errors are
//! not used: a quiet watch says nothing either way, and kube retries a failed one by itself.
//! "Unreachable for" counts from the first failed probe after a success (or after start), so
//! it never overstates how long the node has been cut off: a fetched bundle applies at most one
//! probe interval after `offlineAfter`, never before. An agent (re)started while the API server
//! is away counts from its own first failed probe.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How long the API server has to answer before an upgrade request is handled offline (and
/// before a connectivity probe counts it unreachable).
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the API server is probed: a quarter of `offlineAfter`, within 250 ms..10 s.
pub fn probe_interval(offline_after: Duration) -> Duration {
    (offline_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
}

/// What the probes have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// The last probe's answer; `None` before the first.
    pub reachable: Option<bool>,
    /// The first failed probe of the current outage.
    pub unreachable_since: Option<Instant>,
}

impl Reach {
    /// Record a probe's answer at `now`; true when reachability changed.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        let changed = self.reachable != Some(ok);
        self.reachable = Some(ok);
        if ok {
            self.unreachable_since = None;
        } else if self.unreachable_since.is_none() {
            self.unreachable_since = Some(now);
        }
        changed
    }

    /// How long the API server has been unreachable; `None` while it answers (or before the
    /// first probe).
    pub fn unreachable_for(&self, now: Instant) -> Option<Duration> {
        self.unreachable_since
            .map(|since| now.duration_since(since))
    }

    /// The authority rule for fetched bundles: they apply once the API server has been
    /// unreachable for `offline_after`.
    pub fn fetched_bundles_apply(&self, now: Instant, offline_after: Duration) -> bool {
        self.unreachable_for(now)
            .is_some_and(|for_| for_ >= offline_after)
    }

    /// The cluster is authoritative: the last probe answered.
    pub fn cluster_authoritative(&self) -> bool {
        self.reachable == Some(true)
    }
}

/// The API server's reachability, kept current by a probe task.
pub struct Connectivity {
    reach: Mutex<Reach>,
}

impl Connectivity {
    /// Probe `client`'s API server every `interval` until the returned value is dropped;
    /// `on_change` is called with the new answer when reachability changes.
    pub fn start(
        client: kube::Client,
        interval: Duration,
        node: &str,
        on_change: impl Fn(bool) + Send + 'static,
    ) -> Arc<Connectivity> {
        let connectivity = Arc::new(Connectivity {
            reach: Mutex::new(Reach::default()),
        });
        let weak: Weak<Connectivity> = Arc::downgrade(&connectivity);
        let node = node.to_string();
        tokio::spawn(async move {
            loop {
                let ok = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await,
                    Ok(Ok(_))
                );
                let Some(this) = weak.upgrade() else { return };
                let changed = this.lock().record(ok, Instant::now());
                drop(this);
                if changed {
                    if ok {
                        tracing::info!(node = %node, "API server reachable: the cluster is authoritative");
                    } else {
                        tracing::warn!(node = %node, "API server unreachable: keeping the node as it is; fetched bundles apply after bundle.offlineAfter");
                    }
                    on_change(ok);
                }
                tokio::time::sleep(interval).await;
            }
        });
        connectivity
    }

    /// A fixed answer, for an agent with no bundle source (nothing depends on it then) and tests.
    pub fn fixed(reachable: bool) -> Arc<Connectivity> {
        let mut reach = Reach::default();
        reach.record(reachable, Instant::now());
        Arc::new(Connectivity {
            reach: Mutex::new(reach),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reach> {
        self.reach.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reach(&self) -> Reach {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn unreachable_counts_from_the_first_failed_probe_and_resets_on_an_answer() {
        let t0 = Instant::now();
        let mut reach = Reach::default();
        assert!(!reach.cluster_authoritative(), "unknown before a probe");
        assert_eq!(reach.unreachable_for(t0), None);
        assert!(reach.record(true, t0));
        assert!(reach.cluster_authoritative());
        assert!(reach.record(false, t0 + S));
        assert!(!reach.record(false, t0 + 3 * S), "still unreachable");
        assert_eq!(reach.unreachable_for(t0 + 4 * S), Some(3 * S));
        assert!(!reach.cluster_authoritative());
        assert!(reach.record(true, t0 + 5 * S));
        assert_eq!(reach.unreachable_for(t0 + 6 * S), None);
    }

    #[test]
    fn fetched_bundles_apply_only_after_offline_after() {
        let t0 = Instant::now();
        let offline_after = 10 * S;
        let mut reach = Reach::default();
        assert!(!reach.fetched_bundles_apply(t0, offline_after), "unknown");
        reach.record(true, t0);
        assert!(!reach.fetched_bundles_apply(t0 + 60 * S, offline_after));
        reach.record(false, t0 + S);
        assert!(!reach.fetched_bundles_apply(t0 + 10 * S, offline_after));
        assert!(reach.fetched_bundles_apply(t0 + 11 * S, offline_after));
        reach.record(true, t0 + 12 * S);
        assert!(!reach.fetched_bundles_apply(t0 + 13 * S, offline_after));
    }

    #[test]
    fn an_agent_started_offline_counts_from_its_first_probe() {
        let t0 = Instant::now();
        let mut reach = Reach::default();
        assert!(reach.record(false, t0));
        assert!(!reach.fetched_bundles_apply(t0 + 5 * S, 10 * S));
        assert!(reach.fetched_bundles_apply(t0 + 10 * S, 10 * S));
    }

    #[test]
    fn the_probe_interval_follows_offline_after_within_bounds() {
        assert_eq!(probe_interval(Duration::from_secs(600)), 10 * S);
        assert_eq!(probe_interval(2 * S), Duration::from_millis(500));
        assert_eq!(
            probe_interval(Duration::from_millis(100)),
            Duration::from_millis(250)
        );
    }
}
