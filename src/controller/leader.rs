//! Leader election: one active controller replica at a time holds a `coordination.k8s.io/v1`
//! Lease in the agents' namespace (named as slot 0 of `controller <ns>/status`, the name
//! earlier releases used, so replicas of both agree during an upgrade). It carries no node
//! label, so no agent watches it.
//!
//! The Lease is taken by create (409 = taken) or by a resourceVersion-guarded update of a free
//! or expired Lease, read from a watched cache. Expiry is judged as client-go's leader
//! election does: from this replica's own monotonic clock since it last saw the Lease change,
//! never by comparing another replica's timestamps with ours.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;

use crate::rules::random_below;

/// Annotation naming what the Lease is for.
const OBJECT_ANNOTATION: &str = "staticpod-puller.openyurt.io/object";

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{action} slot lease {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// The object a slot belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotOwner {
    /// `sp` (StaticPod) or `yss` (YurtStaticSet).
    pub kind_short: &'static str,
    pub namespace: String,
    pub name: String,
}

impl SlotOwner {
    /// The Lease name of slot `index`: `<kind>.<namespace>.<name>.<index>`. The namespace is a
    /// DNS label (no dots) and the index the last label, so the name is unambiguous; a name too
    /// long for a Lease is replaced by its hash.
    pub fn lease_name(&self, index: usize) -> String {
        let full = format!(
            "{}.{}.{}.{index}",
            self.kind_short, self.namespace, self.name
        );
        if full.len() <= 253 {
            return full;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, self.name.as_bytes());
        let short: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}.{}.h-{short}.{index}", self.kind_short, self.namespace)
    }
}

/// A slot this agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub lease_name: String,
    pub index: usize,
}

/// When we last saw a Lease change, by our own clock.
#[derive(Debug, Clone)]
struct Observation {
    resource_version: String,
    seen_at: Instant,
}

/// Takes, renews and releases slots for one node.
pub struct Slots {
    api: Api<Lease>,
    cache: Store<Lease>,
    namespace: String,
    holder: String,
    lease_duration: Duration,
    observed: Mutex<HashMap<String, Observation>>,
    /// Leases of held slots as this agent last wrote them.
    written: Mutex<HashMap<String, Lease>>,
}

impl Slots {
    /// `cache` is a reflector over the Leases of `namespace`.
    pub fn new(
        client: kube::Client,
        cache: Store<Lease>,
        namespace: &str,
        holder: &str,
        lease_duration: Duration,
    ) -> Slots {
        Slots {
            api: Api::namespaced(client, namespace),
            cache,
            namespace: namespace.to_string(),
            holder: holder.to_string(),
            lease_duration,
            observed: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    fn api_error(
        &self,
        action: &'static str,
        name: &str,
    ) -> impl FnOnce(kube::Error) -> SlotError + '_ {
        let name = name.to_string();
        move |source| SlotError::Api {
            action,
            namespace: self.namespace.clone(),
            name,
            source,
        }
    }

    fn cached(&self, name: &str) -> Option<std::sync::Arc<Lease>> {
        self.cache
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    fn holder_of(lease: &Lease) -> &str {
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .unwrap_or_default()
    }

    /// A slot of `owner` this agent already holds (after a restart), taken again so it is
    /// renewed from now on.
    pub async fn reclaim(
        &self,
        owner: &SlotOwner,
        budget: usize,
    ) -> Result<Option<Slot>, SlotError> {
        for index in 0..budget {
            let name = owner.lease_name(index);
            if let Some(lease) = self.cached(&name)
                && Self::holder_of(&lease) == self.holder
            {
                return self.take(owner, index, &lease).await;
            }
        }
        Ok(None)
    }

    /// The indices of `owner`'s slots that look free in the cache: never created, released,
    /// or expired.
    pub fn free(&self, owner: &SlotOwner, budget: usize) -> Vec<usize> {
        (0..budget)
            .filter(|&index| match self.cached(&owner.lease_name(index)) {
                None => true,
                Some(lease) => Self::holder_of(&lease).is_empty() || self.expired(&lease),
            })
            .collect()
    }

    /// Try to take one of `budget` slots of `owner` (one we already hold, else one free slot
    /// chosen at random). `Ok(None)`: none free, or another node won the race; the caller tries
    /// again when the Lease cache changes. One request per attempt at most, and random choice,
    /// so many nodes waiting for few slots do not all hit the same Lease.
    pub async fn acquire(
        &self,
        owner: &SlotOwner,
        budget: usize,
    ) -> Result<Option<Slot>, SlotError> {
        if let Some(slot) = self.reclaim(owner, budget).await? {
            return Ok(Some(slot));
        }
        let free = self.free(owner, budget);
        if free.is_empty() {
            return Ok(None);
        }
        let index = free[random_below(free.len())];
        let name = owner.lease_name(index);
        match self.cached(&name) {
            None => match self
                .api
                .create(&PostParams::default(), &self.new_lease(owner, &name, 0))
                .await
            {
                Ok(created) => Ok(Some(self.hold(created, index))),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(e) => Err(self.api_error("creating", &name)(e)),
            },
            Some(lease) => self.take(owner, index, &lease).await,
        }
    }

    /// Take over a free, expired or own Lease, guarded by its resourceVersion.
    async fn take(
        &self,
        owner: &SlotOwner,
        index: usize,
        lease: &Lease,
    ) -> Result<Option<Slot>, SlotError> {
        let name = owner.lease_name(index);
        let transitions = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        let transitions = if Self::holder_of(lease) == self.holder {
            transitions
        } else {
            transitions + 1
        };
        let mut next = self.new_lease(owner, &name, transitions);
        next.metadata.resource_version = lease.metadata.resource_version.clone();
        match self.api.replace(&name, &PostParams::default(), &next).await {
            Ok(taken) => Ok(Some(self.hold(taken, index))),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(self.api_error("taking", &name)(e)),
        }
    }

    /// Remember the Lease as we last wrote it: renewals and the release write over it without
    /// reading it first.
    fn hold(&self, lease: Lease, index: usize) -> Slot {
        let slot = Slot {
            lease_name: lease.metadata.name.clone().unwrap_or_default(),
            index,
        };
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.lease_name.clone(), lease);
        slot
    }

    /// The Lease of a held slot as we last wrote it, else as the server has it now; `None` when
    /// it is no longer ours.
    async fn current(&self, held: &Slot, fresh: bool) -> Result<Option<Lease>, SlotError> {
        let name = &held.lease_name;
        let known = if fresh {
            None
        } else {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned()
        };
        let lease = match known {
            Some(lease) => Some(lease),
            None => self
                .api
                .get_opt(name)
                .await
                .map_err(self.api_error("reading", name))?,
        };
        Ok(lease.filter(|l| Self::holder_of(l) == self.holder))
    }

    /// Write `change` over a held slot's Lease, resourceVersion-guarded: if it changed since we
    /// wrote it, read it once and try again. `Ok(false)`: it is no longer ours.
    async fn update_held(
        &self,
        held: &Slot,
        action: &'static str,
        change: impl Fn(&mut LeaseSpec),
    ) -> Result<bool, SlotError> {
        let name = &held.lease_name;
        for fresh in [false, true] {
            let Some(mut next) = self.current(held, fresh).await? else {
                return Ok(false);
            };
            if let Some(spec) = next.spec.as_mut() {
                change(spec);
            }
            match self.api.replace(name, &PostParams::default(), &next).await {
                Ok(written) => {
                    self.written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.clone(), written);
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
                Err(e) => return Err(self.api_error(action, name)(e)),
            }
        }
        // Changed again between our read and write: judged again at the next renewal.
        Ok(true)
    }

    /// Renew a held slot. `Ok(false)`: it was lost (taken over after we failed to renew).
    pub async fn renew(&self, held: &Slot) -> Result<bool, SlotError> {
        self.update_held(held, "renewing", |spec| spec.renew_time = Some(now_micro()))
            .await
    }

    /// True when the Lease has not changed for longer than its duration, by our clock.
    fn expired(&self, lease: &Lease) -> bool {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.lease_duration);
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.get(&name) {
            Some(o) if o.resource_version == rv => now.duration_since(o.seen_at) > duration,
            _ => {
                observed.insert(
                    name,
                    Observation {
                        resource_version: rv,
                        seen_at: now,
                    },
                );
                false
            }
        }
    }

    fn new_lease(&self, owner: &SlotOwner, name: &str, transitions: i32) -> Lease {
        let now = now_micro();
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                annotations: Some(
                    [(
                        OBJECT_ANNOTATION.to_string(),
                        format!("{} {}/{}", owner.kind_short, owner.namespace, owner.name),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_deterministic_and_unambiguous() {
        let a = SlotOwner {
            kind_short: "sp",
            namespace: "default".into(),
            name: "nginx".into(),
        };
        assert_eq!(a.lease_name(0), "sp.default.nginx.0");
        let dotted = SlotOwner {
            kind_short: "sp",
            namespace: "default".into(),
            name: "x.1".into(),
        };
        assert_ne!(
            dotted.lease_name(0),
            SlotOwner {
                name: "x".into(),
                ..dotted.clone()
            }
            .lease_name(10)
        );
        let yss = SlotOwner {
            kind_short: "yss",
            ..a.clone()
        };
        assert_ne!(a.lease_name(0), yss.lease_name(0));
        let long = SlotOwner {
            kind_short: "yss",
            namespace: "default".into(),
            name: "a".repeat(253),
        };
        assert!(long.lease_name(99).len() <= 253);
        assert_eq!(long.lease_name(1), long.lease_name(1));
    }
}
