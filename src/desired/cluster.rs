//! Desired state from the API server: StaticPod and YurtStaticSet objects, validated and
//! rendered into [`DesiredObject`]s, or refused with the reason.

use super::{DesiredObject, Kind, Refusal};
use crate::manifest;
use crate::resources::validate::{Checked, check};
use crate::resources::{StaticPod, StaticPodSpec, StaticPodStatus, YurtStaticSet};

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
