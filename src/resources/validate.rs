//! What makes an object valid for an agent to act on: its manifest name, its template (what a
//! static pod can never run), its strategy and history limit. The cluster's objects and a
//! bundle's items pass the same checks.

use kube::ResourceExt;

use super::{
    Kind, MaxUnavailable, ObjectKey, Refusal, RolloutControls, StaticPod, StaticPodSpec, Strategy,
    YurtStaticSet,
};
use crate::manifest;

/// Default `revisionHistoryLimit`: revisions kept in the state directory per manifest.
pub const DEFAULT_HISTORY: usize = 10;

/// Every check [`crate::desired::cluster::from_static_pod`] makes except rendering the manifest (which only a write
/// needs): what a bundle's items must pass before the bundle is admitted.
pub fn check_static_pod(o: &StaticPod) -> Result<(), Refusal> {
    check(Kind::StaticPod, o, &o.spec).map(|_| ())
}

/// As [`check_static_pod`], for a YurtStaticSet.
pub fn check_yurt_static_set(o: &YurtStaticSet) -> Result<(), Refusal> {
    check(Kind::YurtStaticSet, o, &o.spec.clone().into()).map(|_| ())
}

/// What a valid object asks for, before its manifest is rendered.
pub struct Checked {
    pub key: ObjectKey,
    pub uid: String,
    /// The object as named in messages (`StaticPod ns/name`).
    pub object: String,
    pub strategy: Strategy,
    pub max_unavailable: MaxUnavailable,
    pub history: usize,
}

pub fn check<K: kube::Resource>(
    kind: Kind,
    o: &K,
    spec: &StaticPodSpec,
) -> Result<Checked, Refusal> {
    let key = ObjectKey {
        kind,
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
    };
    let uid = o.meta().uid.clone().unwrap_or_default();
    let refuse = |reason: String| Refusal {
        key: key.clone(),
        uid: uid.clone(),
        reason,
    };
    let object = key.to_string();
    manifest::validate_manifest_name(&object, &spec.static_pod_manifest)
        .map_err(|e| refuse(e.to_string()))?;
    manifest::validate_template(&object, &spec.template).map_err(|e| refuse(e.to_string()))?;
    let strategy_spec = spec.upgrade_strategy.clone().unwrap_or_default();
    let strategy = Strategy::parse(strategy_spec.type_.as_deref())
        .map_err(|e| refuse(format!("{object}: {e}")))?;
    let max_unavailable = MaxUnavailable::parse(strategy_spec.max_unavailable.as_ref())
        .map_err(|e| refuse(format!("{object}: {e}")))?;
    // The controller acts on the rest of the strategy; a bad value is refused here too, so
    // the operator hears of it from every side.
    RolloutControls::parse(Some(&strategy_spec)).map_err(|e| refuse(format!("{object}: {e}")))?;
    let history = match spec.revision_history_limit {
        None => DEFAULT_HISTORY,
        Some(n) if n >= 0 => (n as usize).max(1),
        Some(n) => {
            return Err(refuse(format!(
                "{object}: spec.revisionHistoryLimit: must not be negative, got {n}"
            )));
        }
    };
    Ok(Checked {
        key,
        uid,
        object,
        strategy,
        max_unavailable,
        history,
    })
}
