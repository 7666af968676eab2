//! Desired state from the API server: StaticPod and YurtStaticSet objects, validated and
//! rendered into [`DesiredObject`]s, or refused with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{DesiredObject, Kind, ObjectKey, Refusal};
use crate::bundle::{TrustPolicy, template};
use crate::manifest;
use crate::resources::validate::{Checked, check};
use crate::resources::{StaticPod, StaticPodSpec, YurtStaticSet};

/// The objects an agent acts on, from the watched objects of both kinds: each validated and
/// rendered (or refused with the reason), kept to `namespaces` (all when empty), and with
/// `template_policy` (trust.requireSignedTemplates) only those whose signature verifies. Two
/// objects claiming one manifest file are both refused: neither may write it.
pub fn select(
    static_pods: &[Arc<StaticPod>],
    yurt_static_sets: &[Arc<YurtStaticSet>],
    template_policy: Option<&TrustPolicy>,
    namespaces: &[String],
) -> (BTreeMap<ObjectKey, DesiredObject>, Vec<Refusal>) {
    let mut objects = BTreeMap::new();
    let mut refusals = Vec::new();
    // With trust.requireSignedTemplates, an object acts only with a valid signature over
    // its kind, namespace, name and template.
    let signed = |d: DesiredObject, meta: &kube::api::ObjectMeta, template| {
        let Some(policy) = template_policy else {
            return Ok(d);
        };
        let annotation = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(template::ANNOTATION));
        template::verify(
            policy,
            annotation.map(String::as_str),
            d.key.kind.name(),
            &d.key.namespace,
            &d.key.name,
            template,
        )
        .map(|()| d.clone())
        .map_err(|reason| Refusal {
            key: d.key.clone(),
            uid: d.uid.clone(),
            reason: format!("{reason} (trust.requireSignedTemplates)"),
        })
    };
    let candidates = static_pods
        .iter()
        .map(|o| from_static_pod(o).and_then(|d| signed(d, &o.metadata, &o.spec.template)))
        .chain(yurt_static_sets.iter().map(|o| {
            from_yurt_static_set(o).and_then(|d| signed(d, &o.metadata, &o.spec.template))
        }))
        .filter(|r| match r {
            Ok(d) => namespaces.is_empty() || namespaces.contains(&d.key.namespace),
            Err(r) => namespaces.is_empty() || namespaces.contains(&r.key.namespace),
        });
    for c in candidates {
        match c {
            Ok(d) => {
                objects.insert(d.key.clone(), d);
            }
            Err(r) => refusals.push(r),
        }
    }
    // Two objects claiming one manifest file: neither may write it.
    let mut claims: HashMap<&str, Vec<&ObjectKey>> = HashMap::new();
    for d in objects.values() {
        claims.entry(&d.manifest).or_default().push(&d.key);
    }
    let contested: Vec<(ObjectKey, String)> = claims
        .values()
        .filter(|keys| keys.len() > 1)
        .flat_map(|keys| {
            let all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            keys.iter().map(move |k| ((*k).clone(), all.join(", ")))
        })
        .collect();
    for (key, all) in contested {
        if let Some(d) = objects.remove(&key) {
            refusals.push(Refusal {
                key,
                uid: d.uid,
                reason: format!(
                    "staticPodManifest {:?} is claimed by several objects ({all})",
                    d.manifest
                ),
            });
        }
    }
    (objects, refusals)
}

pub fn from_static_pod(o: &StaticPod) -> Result<DesiredObject, Refusal> {
    desired(Kind::StaticPod, o, &o.spec)
}

pub fn from_yurt_static_set(o: &YurtStaticSet) -> Result<DesiredObject, Refusal> {
    desired(Kind::YurtStaticSet, o, &o.spec.clone().into())
}

fn desired<K: kube::Resource>(
    kind: Kind,
    o: &K,
    spec: &StaticPodSpec,
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
    })
}
