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
    /// The local manifest carries the desired hash but not the desired content: someone
    /// edited it on the node.
    Drifted,
    /// This revision was rolled back on this node before: not retried until the template changes.
    HeldBack { hash: String },
    /// OTA: an upgrade is available; it starts only when asked through the local API.
    UpgradeAvailable,
    /// Upgrade: with a grant from the controller, or without one when the current pod is
    /// already not Ready (replacing it cannot lower availability).
    Upgrade { needs_grant: bool },
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
        Some(h) if h == desired.hash => {
            if local == desired.rendered.as_slice()
                || crate::manifest::same_pod(local, &desired.rendered)
            {
                return Plan::Current;
            }
            return Plan::Drifted;
        }
        Some(_) => false,
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
                needs_grant: ready_now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Kind, ObjectKey};
    use crate::resources::MaxUnavailable;

    const HAND_PLACED: &[u8] =
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n";

    fn desired(image: &str, strategy: Strategy) -> DesiredObject {
        let template = serde_saphyr::from_str(&format!(
            "spec:\n  containers:\n  - name: web\n    image: {image}\n"
        ))
        .unwrap();
        let r = crate::manifest::render("StaticPod default/nginx", "default", "nginx", &template)
            .unwrap();
        DesiredObject {
            key: ObjectKey {
                kind: Kind::StaticPod,
                namespace: "default".into(),
                name: "nginx".into(),
            },
            uid: "u".into(),
            generation: 1,
            manifest: "nginx".into(),
            strategy,
            max_unavailable: MaxUnavailable::Count(1),
            revision_history_limit: 3,
            hash: r.hash,
            rendered: r.bytes,
        }
    }

    fn ready(hash: Option<&str>) -> MirrorState {
        MirrorState {
            hash: hash.map(str::to_string),
            ready: true,
        }
    }

    #[test]
    fn every_case_of_the_plan() {
        let none = HashMap::new();
        let old = desired("nginx:1.19.1", Strategy::AdvancedRollingUpdate);
        let new = desired("nginx:1.19.2", Strategy::AdvancedRollingUpdate);
        let ota = desired("nginx:1.19.2", Strategy::Ota);
        let up = Some(ready(None));
        let down = Some(MirrorState {
            hash: None,
            ready: false,
        });

        assert_eq!(plan(&new, None, None, &none), Plan::NotMember);
        // A hand-placed file equal to the template: current, nothing to write.
        assert_eq!(
            plan(&old, Some(HAND_PLACED), up.as_ref(), &none),
            Plan::Current
        );
        // Our own rendering: current.
        assert_eq!(
            plan(&new, Some(&new.rendered), up.as_ref(), &none),
            Plan::Current
        );
        // Behind: a grant is needed while the current pod is Ready, not when it is not.
        assert_eq!(
            plan(&new, Some(HAND_PLACED), up.as_ref(), &none),
            Plan::Upgrade { needs_grant: true }
        );
        assert_eq!(
            plan(&new, Some(&old.rendered), down.as_ref(), &none),
            Plan::Upgrade { needs_grant: false }
        );
        assert_eq!(
            plan(&new, Some(&old.rendered), None, &none),
            Plan::Upgrade { needs_grant: false }
        );
        // OTA only announces.
        assert_eq!(
            plan(&ota, Some(HAND_PLACED), up.as_ref(), &none),
            Plan::UpgradeAvailable
        );
        // A hash rolled back here is held back until the template changes.
        let failed = HashMap::from([("nginx".to_string(), new.hash.clone())]);
        assert_eq!(
            plan(&new, Some(HAND_PLACED), up.as_ref(), &failed),
            Plan::HeldBack {
                hash: new.hash.clone()
            }
        );
        let newer = desired("nginx:1.19.3", Strategy::AdvancedRollingUpdate);
        assert_eq!(
            plan(&newer, Some(HAND_PLACED), up.as_ref(), &failed),
            Plan::Upgrade { needs_grant: true }
        );
        // Edited on the node but still carrying the desired hash: drift.
        let edited = String::from_utf8(new.rendered.clone())
            .unwrap()
            .replace("nginx:1.19.2", "nginx:evil");
        assert_eq!(
            plan(&new, Some(edited.as_bytes()), up.as_ref(), &none),
            Plan::Drifted
        );
        // Reformatted but the same pod: not drift.
        let reformatted = String::from_utf8(new.rendered.clone())
            .unwrap()
            .replace("# Managed", "# managed");
        assert_eq!(
            plan(&new, Some(reformatted.as_bytes()), up.as_ref(), &none),
            Plan::Current
        );
    }
}
