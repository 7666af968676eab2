//! The operators' view and control of one rollout (`staticpod-puller rollout …`): where it
//! stands, computed from the object, its mirror pods and its grants with the same window
//! function the controller uses, and the four controls: pause, resume, promote, retry.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::coordinator::{
    CANARY_LABEL, MIRROR_PODS, PROMOTED_ANNOTATION, grant_view, members_by_object,
};
use super::window::{Decision, GrantState, GrantView, Input, Phase, decide};
use crate::desired::{Kind, ObjectKey};
use crate::resources::{RolloutControls, StaticPod, StaticPodSpec, Strategy, YurtStaticSet};
use crate::rollout::grant;

#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },
}

/// Where one rollout stands.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub key: ObjectKey,
    pub hash: String,
    pub strategy: Strategy,
    pub members: usize,
    pub upgraded: usize,
    /// The window as the controller computes it (for OTA: none).
    pub decision: Option<Decision>,
    /// Canary step size (0: none), and whether the hash is promoted.
    pub canary: usize,
    pub promoted: bool,
}

impl Snapshot {
    pub fn phase(&self) -> Phase {
        match &self.decision {
            Some(d) => d.phase,
            None if self.upgraded == self.members => Phase::Complete,
            None => Phase::Progressing,
        }
    }
}

fn api_error(action: &'static str, key: &ObjectKey) -> impl FnOnce(kube::Error) -> OperateError {
    let object = key.to_string();
    move |source| OperateError::Api {
        action,
        object,
        source,
    }
}

/// The spec and annotations of the object `key`.
async fn read(
    client: &kube::Client,
    key: &ObjectKey,
) -> Result<(StaticPodSpec, BTreeMap<String, String>), OperateError> {
    let (spec, meta) = match key.kind {
        Kind::StaticPod => {
            let o = Api::<StaticPod>::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await
                .map_err(api_error("reading", key))?;
            (o.spec, o.metadata)
        }
        Kind::YurtStaticSet => {
            let o = Api::<YurtStaticSet>::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await
                .map_err(api_error("reading", key))?;
            (o.spec.into(), o.metadata)
        }
    };
    Ok((spec, meta.annotations.unwrap_or_default()))
}

/// Where the rollout of `key` stands now. Grants live in `agent_namespace`.
pub async fn snapshot(
    client: &kube::Client,
    key: &ObjectKey,
    agent_namespace: &str,
) -> Result<Snapshot, OperateError> {
    let (spec, annotations) = read(client, key).await?;
    let invalid = |reason: String| OperateError::Invalid {
        object: key.to_string(),
        reason,
    };
    let hash = crate::manifest::template_hash(&spec.template);
    let strategy_spec = spec.upgrade_strategy.as_ref();
    let strategy = Strategy::parse(strategy_spec.and_then(|s| s.type_.as_deref()))
        .map_err(|e| invalid(e.to_string()))?;
    let controls = RolloutControls::parse(strategy_spec).map_err(|e| invalid(e.to_string()))?;
    let pods: Vec<Arc<Pod>> = Api::<Pod>::namespaced(client.clone(), &key.namespace)
        .list(&ListParams::default().fields(MIRROR_PODS))
        .await
        .map_err(api_error("listing the pods of", key))?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let canary_nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{CANARY_LABEL}=true")))
        .await
        .map_err(api_error("listing the canary nodes of", key))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let members = members_by_object(&pods, &canary_nodes)
        .remove(&(key.namespace.clone(), key.name.clone()))
        .unwrap_or_default();
    let grants = list_grants(client, key, agent_namespace).await?;
    let views: Vec<GrantView> = grants.iter().filter_map(|l| grant_view(l, false)).collect();
    let promoted = annotations.get(PROMOTED_ANNOTATION) == Some(&hash);
    let upgraded = members
        .iter()
        .filter(|m| m.hash.as_deref() == Some(hash.as_str()))
        .count();
    let object = key.to_string();
    let decision = (strategy == Strategy::AdvancedRollingUpdate).then(|| {
        decide(&Input {
            object: &object,
            hash: &hash,
            members: &members,
            missing: &[],
            stalled: &Default::default(),
            grants: &views,
            controls,
            promoted,
        })
    });
    Ok(Snapshot {
        key: key.clone(),
        hash,
        strategy,
        members: members.len(),
        upgraded,
        decision,
        canary: controls.canary_size(members.len()),
        promoted,
    })
}

async fn list_grants(
    client: &kube::Client,
    key: &ObjectKey,
    agent_namespace: &str,
) -> Result<Vec<Lease>, OperateError> {
    let selector = format!("{}={}", grant::OBJECT_LABEL, grant::object_label(key));
    Ok(Api::<Lease>::namespaced(client.clone(), agent_namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error("listing the grants of", key))?
        .items)
}

async fn patch_object(
    client: &kube::Client,
    key: &ObjectKey,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), OperateError> {
    let params = PatchParams::default();
    match key.kind {
        Kind::StaticPod => Api::<StaticPod>::namespaced(client.clone(), &key.namespace)
            .patch(&key.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        Kind::YurtStaticSet => Api::<YurtStaticSet>::namespaced(client.clone(), &key.namespace)
            .patch(&key.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    }
    .map_err(api_error(action, key))
}

/// `upgradeStrategy.paused`: true stops new grants; false removes the field (the object is
/// as OpenYurt wrote it again).
pub async fn set_paused(
    client: &kube::Client,
    key: &ObjectKey,
    paused: bool,
) -> Result<(), OperateError> {
    let value = if paused { json!(true) } else { json!(null) };
    let action = if paused { "pausing" } else { "resuming" };
    patch_object(
        client,
        key,
        json!({"spec": {"upgradeStrategy": {"paused": value}}}),
        action,
    )
    .await
}

/// Promote the desired hash past the canary step; returns it.
pub async fn promote(client: &kube::Client, key: &ObjectKey) -> Result<String, OperateError> {
    let (spec, _) = read(client, key).await?;
    let hash = crate::manifest::template_hash(&spec.template);
    patch_object(
        client,
        key,
        json!({"metadata": {"annotations": {PROMOTED_ANNOTATION: hash}}}),
        "promoting",
    )
    .await?;
    Ok(hash)
}

/// Let the members that rolled the desired hash back try it again: their failure records
/// (grants finished `rolled-back`) are deleted, so the controller grants them again and their
/// agents take the new grant as the operator's retry. Returns the nodes.
pub async fn retry(
    client: &kube::Client,
    key: &ObjectKey,
    agent_namespace: &str,
) -> Result<Vec<String>, OperateError> {
    let (spec, _) = read(client, key).await?;
    let hash = crate::manifest::template_hash(&spec.template);
    let api = Api::<Lease>::namespaced(client.clone(), agent_namespace);
    let mut nodes = Vec::new();
    for lease in list_grants(client, key, agent_namespace).await? {
        let Some(v) = grant_view(&lease, false) else {
            continue;
        };
        if v.hash != hash || !matches!(v.state, GrantState::RolledBack { .. }) {
            continue;
        }
        let name = lease.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => nodes.push(v.node),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api_error("retrying", key)(e)),
        }
    }
    nodes.sort();
    Ok(nodes)
}
