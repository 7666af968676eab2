//! What to do next for one object on this node, given the desired revision, the local
//! manifest and the mirror pod. Pure: no I/O, so every case is a unit test.

use std::collections::HashMap;

use crate::desired::{DesiredObject, Strategy};

/// The mirror pod as the API server (or kubelet's pod list) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorState {
    /// Its `openyurt.io/static-pod-hash` annotation.
    pub hash: Option<String>,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The node has no `<staticPodManifest>.yaml`: not a member, nothing to do.
    NotMember,
    /// The local manifest is the desired revision.
    Current,
    /// This revision was rolled back on this node before: not retried until the template changes.
    HeldBack { hash: String },
    /// OTA: an upgrade is available; it starts only when asked through the local API.
    UpgradeAvailable,
    /// Upgrade now. Without a slot when the current pod is already not Ready: replacing it
    /// cannot lower availability.
    Upgrade { needs_slot: bool },
}

/// The hash a local manifest carries, or None (hand-placed, or unreadable).
pub fn local_hash(bytes: &[u8]) -> Option<String> {
    crate::manifest::hash_of_manifest(bytes)
}

/// Decide the next step. `failed` maps manifest names to the hash rolled back last.
pub fn plan(
    desired: &DesiredObject,
    local: Option<&[u8]>,
    mirror: Option<&MirrorState>,
    failed: &HashMap<String, String>,
) -> Plan {
    let Some(local) = local else {
        return Plan::NotMember;
    };
    let current = match local_hash(local) {
        Some(h) => h == desired.hash,
        // A hand-placed manifest with no hash is current when it is the template already.
        None => crate::manifest::same_pod(local, &desired.rendered),
    };
    if current {
        return Plan::Current;
    }
    if failed.get(&desired.manifest) == Some(&desired.hash) {
        return Plan::HeldBack {
            hash: desired.hash.clone(),
        };
    }
    match desired.strategy {
        Strategy::Ota => Plan::UpgradeAvailable,
        Strategy::AdvancedRollingUpdate => {
            let ready_now = mirror.is_some_and(|m| m.ready);
            Plan::Upgrade {
                needs_slot: ready_now,
            }
        }
    }
}
