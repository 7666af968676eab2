//! What the status of a StaticPod / YurtStaticSet says, computed from mirror pods and, for a
//! rolling object, from its rollout window.
//!
//! A member's mirror pod is named `<object name>-<node name>`, lives in the object's namespace
//! and carries `kubernetes.io/config.source` other than `api` (kubelet's mark of a static pod).
//! Upgraded: its `openyurt.io/static-pod-hash` equals the desired hash. Ready: condition Ready.

use k8s_openapi::api::core::v1::Pod;

use super::window::{Decision, Member, Phase};
use crate::manifest::mirror::{is_member_pod, pod_hash, pod_ready};

/// How many node names a condition message lists before summarising.
const NAMED_NODES: usize = 10;

/// The counts and per-node facts behind a status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: i32,
    pub ready: i32,
    pub upgraded: i32,
    /// Member nodes whose pod is not Ready, sorted.
    pub not_ready: Vec<String>,
    /// Member nodes not yet on the desired hash, sorted.
    pub outdated: Vec<String>,
}

/// Count the members of object `name` among `pods` (pods of the object's namespace).
pub fn count<'a>(
    name: &str,
    desired_hash: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Counts {
    let mut counts = Counts::default();
    for pod in pods.into_iter().filter(|p| is_member_pod(name, p)) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        counts.total += 1;
        if pod_ready(pod) {
            counts.ready += 1;
        } else {
            counts.not_ready.push(node.clone());
        }
        if pod_hash(pod) == Some(desired_hash) {
            counts.upgraded += 1;
        } else {
            counts.outdated.push(node);
        }
    }
    counts.not_ready.sort();
    counts.outdated.sort();
    counts
}

impl Counts {
    /// The counts of `members` against `desired_hash`.
    pub fn of_members(desired_hash: &str, members: &[Member]) -> Counts {
        let mut counts = Counts::default();
        for m in members {
            counts.total += 1;
            if m.ready {
                counts.ready += 1;
            } else {
                counts.not_ready.push(m.node.clone());
            }
            if m.hash.as_deref() == Some(desired_hash) {
                counts.upgraded += 1;
            } else {
                counts.outdated.push(m.node.clone());
            }
        }
        counts.not_ready.sort();
        counts.outdated.sort();
        counts
    }
}

/// A status condition as the controller writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Progressing (members still on an older hash), Completed (all upgraded and Ready), Degraded
/// (members not Ready, named).
pub fn conditions(c: &Counts) -> Vec<Condition> {
    let progressing = !c.outdated.is_empty();
    let completed = c.total > 0 && c.upgraded == c.total && c.ready == c.total;
    let degraded = !c.not_ready.is_empty();
    vec![
        Condition {
            type_: "Progressing",
            status: progressing,
            reason: if progressing {
                "Upgrading"
            } else {
                "AllUpgraded"
            },
            message: if progressing {
                format!(
                    "{}/{} upgraded; waiting for {}",
                    c.upgraded,
                    c.total,
                    names(&c.outdated)
                )
            } else {
                format!("{}/{} upgraded", c.upgraded, c.total)
            },
        },
        Condition {
            type_: "Completed",
            status: completed,
            reason: if completed {
                "AllUpgradedAndReady"
            } else if c.total == 0 {
                "NoMembers"
            } else {
                "InProgress"
            },
            message: format!(
                "{} members, {} ready, {} upgraded",
                c.total, c.ready, c.upgraded
            ),
        },
        Condition {
            type_: "Degraded",
            status: degraded,
            reason: if degraded {
                "MembersNotReady"
            } else {
                "AllReady"
            },
            message: if degraded {
                format!("not ready: {}", names(&c.not_ready))
            } else {
                "all members ready".to_string()
            },
        },
    ]
}

/// The rollout's own conditions (AdvancedRollingUpdate): Halted (naming the failed nodes
/// and why), Paused, AwaitingPromotion.
pub fn rollout_conditions(hash: &str, d: &Decision) -> Vec<Condition> {
    let failed: Vec<String> = d.failed.iter().map(|(n, r)| format!("{n} ({r})")).collect();
    let halted = d.phase == Phase::Halted;
    let paused = d.phase == Phase::Paused;
    let awaiting = d.phase == Phase::AwaitingPromotion;
    vec![
        Condition {
            type_: "Halted",
            status: halted,
            reason: if halted {
                "FailureBudgetSpent"
            } else if failed.is_empty() {
                "NoFailures"
            } else {
                "WithinFailureBudget"
            },
            message: if failed.is_empty() {
                format!("no member rolled back {hash}")
            } else {
                format!(
                    "{} of maxFailed {} members rolled back {hash}: {}",
                    failed.len(),
                    d.failure_budget,
                    names(&failed)
                )
            },
        },
        Condition {
            type_: "ImagePullFailed",
            status: !d.pull_failed.is_empty(),
            reason: if d.pull_failed.is_empty() {
                "NoPullFailures"
            } else {
                "ImagesNotPulled"
            },
            message: if d.pull_failed.is_empty() {
                format!("no member failed to pull the images of {hash}")
            } else {
                let nodes: Vec<String> = d.pull_failed.keys().cloned().collect();
                format!(
                    "not granted {hash}, its images could not be pulled on: {} (first: {})",
                    names(&nodes),
                    d.pull_failed.values().next().cloned().unwrap_or_default()
                )
            },
        },
        Condition {
            type_: "Paused",
            status: paused,
            reason: if paused { "Paused" } else { "NotPaused" },
            message: if paused {
                format!(
                    "no new upgrades start (upgradeStrategy.paused); {} upgrading",
                    d.upgrading.len()
                )
            } else {
                "upgradeStrategy.paused is not set".to_string()
            },
        },
        Condition {
            type_: "AwaitingPromotion",
            status: awaiting,
            reason: if awaiting { "CanaryDone" } else { "NotWaiting" },
            message: if awaiting {
                format!(
                    "the canary step of {hash} is done; promote it to go on (staticpod-puller rollout promote)"
                )
            } else {
                "not waiting for promotion".to_string()
            },
        },
    ]
}

/// The phase as `kubectl get -o wide` shows it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Complete => "Complete",
        Phase::Progressing => "Progressing",
        Phase::Halted => "Halted",
        Phase::Paused => "Paused",
        Phase::AwaitingPromotion => "AwaitingPromotion",
    }
}

/// Node names for a message: all of them, or the first few and how many more.
pub fn names(nodes: &[String]) -> String {
    if nodes.len() <= NAMED_NODES {
        nodes.join(", ")
    } else {
        format!(
            "{} and {} more",
            nodes[..NAMED_NODES].join(", "),
            nodes.len() - NAMED_NODES
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::HASH_ANNOTATION;
    use crate::manifest::mirror::CONFIG_SOURCE;
    use serde_json::json;

    fn pod(name: &str, node: &str, source: Option<&str>, hash: &str, ready: bool) -> Pod {
        let mut annotations = json!({ HASH_ANNOTATION: hash });
        if let Some(s) = source {
            annotations[CONFIG_SOURCE] = json!(s);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"nodeName": node, "containers": [{"name": "web"}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn counts_members_upgraded_and_ready() {
        let pods = [
            pod("nginx-n1", "n1", Some("file"), "new", true),
            pod("nginx-n2", "n2", Some("file"), "old", true),
            pod("nginx-n3", "n3", Some("file"), "new", false),
            // Not members: an API pod with the same name shape, another object's pod, a pod
            // whose name does not match its node.
            pod("nginx-n4", "n4", Some("api"), "new", true),
            pod("nginx-n4", "n4", None, "new", true),
            pod("web-n1", "n1", Some("file"), "new", true),
            pod("nginx-n9", "n5", Some("file"), "new", true),
        ];
        let c = count("nginx", "new", &pods);
        assert_eq!((c.total, c.ready, c.upgraded), (3, 2, 2));
        assert_eq!(c.not_ready, vec!["n3"]);
        assert_eq!(c.outdated, vec!["n2"]);
        let conds = conditions(&c);
        assert!(
            conds[0].status && conds[0].message.contains("n2"),
            "{conds:?}"
        );
        assert!(!conds[1].status);
        assert!(conds[2].status && conds[2].message.contains("n3"));
    }

    #[test]
    fn completed_when_every_member_is_upgraded_and_ready() {
        let pods = [pod("nginx-n1", "n1", Some("file"), "h", true)];
        let conds = conditions(&count("nginx", "h", &pods));
        assert_eq!(
            conds.iter().map(|c| c.status).collect::<Vec<_>>(),
            vec![false, true, false]
        );
        let none = conditions(&count("nginx", "h", &[]));
        assert_eq!(none[1].reason, "NoMembers");
    }

    #[test]
    fn long_node_lists_are_summarised() {
        let nodes: Vec<String> = (0..15).map(|i| format!("n{i}")).collect();
        assert!(names(&nodes).ends_with("and 5 more"));
    }
}
