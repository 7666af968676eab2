//! Desired state from the API server: StaticPod and YurtStaticSet objects, validated and
//! rendered into [`DesiredObject`]s, or refused with the reason.

use kube::ResourceExt;

use super::{DesiredObject, Kind, ObjectKey, Refusal};
use crate::manifest;
use crate::resources::{
    MaxUnavailable, StaticPod, StaticPodSpec, StaticPodStatus, Strategy, YurtStaticSet,
};

/// Default `revisionHistoryLimit`: revisions kept in the state directory per manifest.
pub const DEFAULT_HISTORY: usize = 10;

pub fn from_static_pod(o: &StaticPod) -> Result<DesiredObject, Refusal> {
    desired(Kind::StaticPod, o, &o.spec, o.status.as_ref())
}

pub fn from_yurt_static_set(o: &YurtStaticSet) -> Result<DesiredObject, Refusal> {
    desired(
        Kind::YurtStaticSet,
        o,
        &o.spec.clone().into(),
        o.status.as_ref(),
    )
}

/// Every check [`from_static_pod`] makes except rendering the manifest (which only a write
/// needs): what a bundle's items must pass before the bundle is admitted.
pub fn check_static_pod(o: &StaticPod) -> Result<(), Refusal> {
    check(Kind::StaticPod, o, &o.spec).map(|_| ())
}

/// As [`check_static_pod`], for a YurtStaticSet.
pub fn check_yurt_static_set(o: &YurtStaticSet) -> Result<(), Refusal> {
    check(Kind::YurtStaticSet, o, &o.spec.clone().into()).map(|_| ())
}

/// What a valid object asks for, before its manifest is rendered.
struct Checked {
    key: ObjectKey,
    uid: String,
    object: String,
    strategy: Strategy,
    max_unavailable: MaxUnavailable,
    history: usize,
}

fn check<K: kube::Resource>(kind: Kind, o: &K, spec: &StaticPodSpec) -> Result<Checked, Refusal> {
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

fn desired<K: kube::Resource>(
    kind: Kind,
    o: &K,
    spec: &StaticPodSpec,
    status: Option<&StaticPodStatus>,
) -> Result<DesiredObject, Refusal> {
    let Checked {
        key,
        uid,
        object,
        strategy,
        max_unavailable,
        history,
    } = check(kind, o, spec)?;
    let refuse = |reason: String| Refusal {
        key: key.clone(),
        uid: uid.clone(),
        reason,
    };
    let rendered = manifest::render(&object, &key.namespace, &key.name, &spec.template)
        .map_err(|e| refuse(e.to_string()))?;
    let generation = o.meta().generation.unwrap_or_default();
    let current =
        status.filter(|s| s.observed_generation == Some(generation) && s.total_number > 0);
    let members = current.map(|s| s.total_number);
    let pending = current.map(|s| (s.total_number - s.upgraded_number).max(0));
    Ok(DesiredObject {
        key,
        uid,
        generation,
        manifest: spec.static_pod_manifest.clone(),
        strategy,
        max_unavailable,
        revision_history_limit: history,
        hash: rendered.hash,
        rendered: rendered.bytes,
        members,
        pending,
    })
}
