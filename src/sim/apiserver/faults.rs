//! Fault injection: error rates per verb, added latency, dropped watches and network
//! partitions, settable at run time by tests and through the `/sim/faults` admin endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// An API verb, as fault injection distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    /// Delete and delete-collection.
    Delete,
}

impl Verb {
    /// Every verb: `for v in Verb::ALL { faults.set_error_rate(v, 0.1) }`.
    pub const ALL: [Verb; 7] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
    ];

    /// A verb by its API name (`get`, `list`, ...).
    pub fn parse(name: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

#[derive(Default)]
struct FaultState {
    error_rates: BTreeMap<Verb, f64>,
    latency: Duration,
    partitioned: BTreeSet<String>,
    /// Injected errors are 500 InternalError (which clients do not retry by themselves)
    /// instead of 503 ServiceUnavailable (which kube's client retries with backoff).
    internal_errors: bool,
}

/// The faults the API server injects. Shared (`Arc<Faults>`) and changeable while it runs.
pub struct Faults {
    state: Mutex<FaultState>,
    /// Bumped by [`Faults::close_watches`]: every open watch ends when it changes.
    close_epoch: watch::Sender<u64>,
    /// Bumped whenever a user is partitioned: connections and watches check whether they
    /// belong to a partitioned user.
    partition_epoch: watch::Sender<u64>,
    rng: AtomicU64,
}

/// What `GET /sim/faults` reports and `POST /sim/faults` accepts (fields optional on POST).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultsRequest {
    /// Error rate (0.0–1.0) per verb name (`get`, `list`, ..., or `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Injected errors as 500 InternalError (true) or 503 ServiceUnavailable (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub close_watches: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heal: Vec<String>,
    /// Remove every fault first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
}

/// The current faults, as `/sim/faults` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultsSnapshot {
    pub error_rate: BTreeMap<Verb, f64>,
    pub latency_ms: u64,
    pub partitioned: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Faults {
            state: Mutex::new(FaultState::default()),
            close_epoch: watch::channel(0).0,
            partition_epoch: watch::channel(0).0,
            rng: AtomicU64::new(seed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // Every update is a single field assignment: a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail this share (0.0–1.0) of the requests with `verb` with a 503.
    pub fn set_error_rate(&self, verb: Verb, rate: f64) {
        let rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut state = self.lock();
        if rate == 0.0 {
            state.error_rates.remove(&verb);
        } else {
            state.error_rates.insert(verb, rate);
        }
    }

    /// Make injected errors 500 InternalError (true) or 503 ServiceUnavailable (false, the
    /// default). kube's client retries 503s itself, so 500s are what reach the caller's code.
    pub fn set_internal_errors(&self, on: bool) {
        self.lock().internal_errors = on;
    }

    /// The status code of injected errors.
    pub fn error_code(&self) -> u16 {
        if self.lock().internal_errors {
            500
        } else {
            503
        }
    }

    /// Delay every request by this much before handling it.
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// End every open watch stream now (cleanly: clients see the stream end and re-watch).
    pub fn close_watches(&self) {
        self.close_epoch.send_modify(|e| *e += 1);
    }

    /// Cut `user` off as a network partition would: its requests get no response (the
    /// connection is dropped) and its open connections, watches included, are closed.
    pub fn partition(&self, user: &str) {
        self.lock().partitioned.insert(user.to_string());
        self.partition_epoch.send_modify(|e| *e += 1);
    }

    pub fn heal(&self, user: &str) {
        self.lock().partitioned.remove(user);
    }

    /// Remove every fault (error rates, latency, partitions).
    pub fn clear(&self) {
        *self.lock() = FaultState::default();
    }

    pub fn is_partitioned(&self, user: &str) -> bool {
        self.lock().partitioned.contains(user)
    }

    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Whether to fail this request (drawn against the verb's error rate).
    pub fn should_fail(&self, verb: Verb) -> bool {
        let rate = self.lock().error_rates.get(&verb).copied().unwrap_or(0.0);
        rate > 0.0 && (rate >= 1.0 || self.next_unit() < rate)
    }

    pub fn snapshot(&self) -> FaultsSnapshot {
        let state = self.lock();
        FaultsSnapshot {
            error_rate: state.error_rates.clone(),
            latency_ms: u64::try_from(state.latency.as_millis()).unwrap_or(u64::MAX),
            partitioned: state.partitioned.iter().cloned().collect(),
        }
    }

    /// Apply an admin request, in the order: clear, error rates, latency, heal, partition,
    /// close watches. Refused as a whole (nothing changed) when it names an unknown verb.
    pub fn apply(&self, req: &FaultsRequest) -> Result<(), String> {
        let rates = req.error_rate.clone().unwrap_or_default();
        if let Some(unknown) = rates
            .keys()
            .find(|k| *k != "all" && Verb::parse(k).is_none())
        {
            return Err(format!(
                "errorRate: unknown verb {unknown:?} (expected get, list, watch, create, update, patch, delete or all)"
            ));
        }
        if req.clear {
            self.clear();
        }
        // `all` first, so that `{"all": 0.1, "patch": 0.5}` means what it says.
        if let Some(rate) = rates.get("all") {
            for verb in Verb::ALL {
                self.set_error_rate(verb, *rate);
            }
        }
        for (verb, rate) in rates.iter().filter_map(|(k, r)| Some((Verb::parse(k)?, r))) {
            self.set_error_rate(verb, *rate);
        }
        if let Some(ms) = req.latency_ms {
            self.set_latency(Duration::from_millis(ms));
        }
        if let Some(on) = req.internal_errors {
            self.set_internal_errors(on);
        }
        for user in &req.heal {
            self.heal(user);
        }
        for user in &req.partition {
            self.partition(user);
        }
        if req.close_watches {
            self.close_watches();
        }
        Ok(())
    }

    pub(super) fn close_signal(&self) -> watch::Receiver<u64> {
        self.close_epoch.subscribe()
    }

    pub(super) fn partition_signal(&self) -> watch::Receiver<u64> {
        self.partition_epoch.subscribe()
    }

    /// A uniform number in [0, 1) (splitmix64; fault injection needs no cryptographic quality).
    fn next_unit(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_per_verb_and_all() {
        let f = Faults::new();
        assert!(!f.should_fail(Verb::Get));
        f.set_error_rate(Verb::Get, 1.0);
        assert!(f.should_fail(Verb::Get));
        assert!(!f.should_fail(Verb::Patch));
        for v in Verb::ALL {
            f.set_error_rate(v, 1.0);
        }
        assert!(Verb::ALL.iter().all(|v| f.should_fail(*v)));
        f.clear();
        assert!(!f.should_fail(Verb::Get));
        f.set_error_rate(Verb::Patch, 0.5);
        let failed = (0..2000).filter(|_| f.should_fail(Verb::Patch)).count();
        assert!(
            (800..1200).contains(&failed),
            "expected about half of 2000 to fail, saw {failed}"
        );
    }

    #[test]
    fn admin_request_parses_and_applies() {
        let req: FaultsRequest = serde_json::from_str(
            r#"{"errorRate":{"patch":0.1,"all":0.2},"latencyMs":50,"closeWatches":true,"partition":["system:node:n1"]}"#,
        )
        .unwrap();
        let f = Faults::new();
        let closed = f.close_signal();
        f.apply(&req).unwrap();
        assert!(f.is_partitioned("system:node:n1"));
        assert_eq!(f.latency(), Duration::from_millis(50));
        assert!(closed.has_changed().unwrap());
        let snap = f.snapshot();
        assert_eq!(snap.error_rate.get(&Verb::Patch), Some(&0.1));
        assert_eq!(snap.error_rate.get(&Verb::Get), Some(&0.2));
        f.apply(&FaultsRequest {
            heal: vec!["system:node:n1".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(!f.is_partitioned("system:node:n1"));
        let bad = FaultsRequest {
            error_rate: Some([("gett".to_string(), 1.0)].into()),
            clear: true,
            ..Default::default()
        };
        assert!(f.apply(&bad).is_err());
        assert_eq!(
            f.latency(),
            Duration::from_millis(50),
            "a refused request changes nothing"
        );
    }
}
