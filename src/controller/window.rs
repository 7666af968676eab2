//! The rollout window of one AdvancedRollingUpdate object: given its members, their mirror
//! pods, the grants out and the strategy, which nodes get a grant now. Pure (no I/O, no
//! clock), as Kubernetes' DaemonSet rolling update is: the loop around it only applies the
//! answer, so every case is a unit test.
//!
//! The window slides: members that are unavailable (mirror pod missing or not Ready) plus
//! members holding a grant never exceed the budget; a unit freed is granted again at once.

use std::collections::{BTreeMap, BTreeSet};

use crate::images::PULL_FAILED;

use crate::resources::RolloutControls;

/// One member node as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    /// The hash its mirror pod runs (`None`: no mirror pod, or no hash).
    pub hash: Option<String>,
    /// Its mirror pod exists and is Ready.
    pub ready: bool,
    /// Labelled `staticpod-puller.openyurt.io/canary=true`: upgrades first.
    pub canary: bool,
    /// The message of a True `PodImageReady` condition on its mirror pod: the images of the
    /// hash it names are on the node, so it upgrades before the others (its pod is down only
    /// for the restart).
    pub images_ready: Option<String>,
    /// A False `PodImageReady` on its mirror pod: (reason, message). `Pulling` or
    /// `PullFailed` for the hash the message names: the node is not granted that hash (it
    /// could not use the grant yet, or ever).
    pub images_not_ready: Option<(String, String)>,
}

/// A grant (one Lease per object and node) as the controller last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantView {
    pub node: String,
    /// The hash it grants.
    pub hash: String,
    pub state: GrantState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantState {
    /// Handed out and not finished; `expired`: not renewed within its duration, as judged on
    /// the controller's own clock.
    Out { expired: bool },
    /// The node upgraded and released it.
    Succeeded,
    /// The node rolled the hash back and released it (the reason as the node wrote it).
    RolledBack { reason: String },
    /// The node already ran the hash (a hand-placed manifest equal to the template, whose pod
    /// carries no hash): nothing was written. Kept as the record while the hash is desired.
    Current,
    /// Released without an outcome (superseded by a newer template, or an error).
    Released,
}

/// What the loop should do for one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Nodes to grant the desired hash now, in order.
    pub grant: Vec<String>,
    /// Nodes whose grant is finished, stale (another hash) or expired: delete it.
    pub delete: Vec<String>,
    /// Members that rolled the desired hash back, with the reason: failed for this hash.
    pub failed: BTreeMap<String, String>,
    /// Members whose agent could not pull the desired hash's images, with the reason: not
    /// granted it.
    pub pull_failed: BTreeMap<String, String>,
    /// Nodes holding a grant for the desired hash.
    pub upgrading: BTreeSet<String>,
    /// Members not on the desired hash that are neither upgrading nor failed.
    pub waiting: usize,
    pub budget: usize,
    pub failure_budget: usize,
    pub phase: Phase,
}

/// Where the rollout of the desired hash stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Every member runs the desired hash.
    #[default]
    Complete,
    /// Grants are handed out as the window allows.
    Progressing,
    /// `maxFailed` members rolled the hash back: no new grants for it.
    Halted,
    /// `upgradeStrategy.paused`: no new grants.
    Paused,
    /// The canary step is done; the rest waits for the hash to be promoted.
    AwaitingPromotion,
}

/// Everything the window is decided from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// `Kind ns/name`, for the stable order of nodes.
    pub object: &'a str,
    pub hash: &'a str,
    pub members: &'a [Member],
    /// Members seen lately whose mirror pod is gone now (kubelet replacing it): unavailable.
    pub missing: &'a [String],
    /// Members whose last grant expired unused (their agent is gone): not granted again for a
    /// while, or one dead agent with a Ready pod would take the window over and over.
    pub stalled: &'a BTreeSet<String>,
    pub grants: &'a [GrantView],
    pub controls: RolloutControls,
    /// The desired hash was promoted past the canary step.
    pub promoted: bool,
}

/// Decide the window for one object.
pub fn decide(input: &Input) -> Decision {
    let n = input.members.len();
    let budget = input.controls.budget(n);
    let failure_budget = input.controls.failure_budget(n);

    let mut decision = Decision {
        budget,
        failure_budget,
        ..Decision::default()
    };
    let mut already_current = BTreeSet::new();
    // A node whose pod now runs another hash (a bundle applied offline, a hand edit) is no
    // longer what its `current` record says: the record goes, and the node is upgraded again.
    let runs_another_hash = |node: &str| {
        input
            .members
            .iter()
            .any(|m| m.node == node && m.hash.as_deref().is_some_and(|h| h != input.hash))
    };
    for g in input.grants {
        let current = g.hash == input.hash;
        match &g.state {
            GrantState::Current if current && !runs_another_hash(&g.node) => {
                already_current.insert(g.node.clone());
            }
            // A holder counts whether its pod shows or not (kubelet may be replacing it); a
            // node that is gone lets its grant expire.
            GrantState::Out { expired: false } if current => {
                decision.upgrading.insert(g.node.clone());
            }
            // The record of a failure stays while its hash is desired: the failure budget
            // survives a controller failover, and `rollout retry` is deleting it.
            GrantState::RolledBack { reason } if current => {
                decision.failed.insert(g.node.clone(), reason.clone());
            }
            _ => decision.delete.push(g.node.clone()),
        }
    }
    let upgraded =
        |m: &Member| m.hash.as_deref() == Some(input.hash) || already_current.contains(&m.node);
    let outdated: Vec<&Member> = input.members.iter().filter(|m| !upgraded(m)).collect();
    // Unavailable members and holders, each node counted once.
    let in_window = input
        .members
        .iter()
        .filter(|m| !m.ready)
        .map(|m| m.node.as_str())
        .chain(input.missing.iter().map(String::as_str))
        .chain(decision.upgrading.iter().map(String::as_str))
        .collect::<BTreeSet<&str>>()
        .len();
    // Nodes still pulling the hash's images, or that failed to, wait: a grant now would
    // hold a unit of the window for a download, or for nothing.
    let mut pulling = BTreeSet::new();
    for m in &outdated {
        if let Some((reason, message)) = &m.images_not_ready
            && message.contains(input.hash)
        {
            if reason == PULL_FAILED {
                decision.pull_failed.insert(m.node.clone(), message.clone());
            } else {
                pulling.insert(m.node.as_str());
            }
        }
    }
    let mut candidates: Vec<&Member> = outdated
        .iter()
        .copied()
        .filter(|m| {
            m.ready
                && !decision.upgrading.contains(&m.node)
                && !decision.failed.contains_key(&m.node)
                && !decision.pull_failed.contains_key(&m.node)
                && !pulling.contains(m.node.as_str())
                && !input.stalled.contains(&m.node)
        })
        .collect();
    decision.waiting = outdated
        .iter()
        .filter(|m| !decision.upgrading.contains(&m.node) && !decision.failed.contains_key(&m.node))
        .count();
    // Complete once every member runs the hash and no grant is out (a holder's pod may be
    // missing while kubelet replaces it).
    if outdated.is_empty() && decision.upgrading.is_empty() {
        decision.phase = Phase::Complete;
        return decision;
    }
    if decision.failed.len() >= failure_budget {
        decision.phase = Phase::Halted;
        return decision;
    }
    if input.controls.paused {
        decision.phase = Phase::Paused;
        return decision;
    }
    let mut allowed = budget.saturating_sub(in_window);
    let canary = input.controls.canary_size(n);
    if canary > 0 && !input.promoted {
        // Members that have started on the hash count towards the canary step.
        let started = n - outdated.len() + decision.upgrading.len() + decision.failed.len();
        let left = canary.saturating_sub(started);
        if left == 0 {
            decision.phase = if decision.upgrading.is_empty() {
                Phase::AwaitingPromotion
            } else {
                Phase::Progressing
            };
            return decision;
        }
        allowed = allowed.min(left);
    }
    let images_ready = |m: &Member| {
        m.images_ready
            .as_deref()
            .is_some_and(|message| message.contains(input.hash))
    };
    candidates.sort_by_key(|m| (!m.canary, !images_ready(m), order(input.object, &m.node)));
    decision.grant = candidates
        .into_iter()
        .take(allowed)
        .map(|m| m.node.clone())
        .collect();
    decision.phase = Phase::Progressing;
    decision
}

/// A stable order of nodes for one object (so a failover or a retry does not reshuffle),
/// spread differently per object (so one node is not always first).
fn order(object: &str, node: &str) -> [u8; 8] {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{object}\n{node}").as_bytes(),
    );
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest.as_ref()[..8]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Portion;

    const NEW: &str = "new";

    fn member(node: &str, hash: &str, ready: bool) -> Member {
        Member {
            node: node.into(),
            hash: Some(hash.into()),
            ready,
            canary: false,
            images_ready: None,
            images_not_ready: None,
        }
    }

    fn fleet(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| member(&format!("n{i:02}"), "old", true))
            .collect()
    }

    fn out(node: &str) -> GrantView {
        GrantView {
            node: node.into(),
            hash: NEW.into(),
            state: GrantState::Out { expired: false },
        }
    }

    fn grant_state(node: &str, state: GrantState) -> GrantView {
        GrantView {
            node: node.into(),
            hash: NEW.into(),
            state,
        }
    }

    fn controls(max_unavailable: u32) -> RolloutControls {
        RolloutControls {
            max_unavailable: Portion::Count(max_unavailable),
            ..RolloutControls::default()
        }
    }

    fn decide_with(
        members: &[Member],
        grants: &[GrantView],
        controls: RolloutControls,
        promoted: bool,
    ) -> Decision {
        decide(&Input {
            object: "StaticPod default/nginx",
            hash: NEW,
            members,
            missing: &[],
            stalled: &BTreeSet::new(),
            grants,
            controls,
            promoted,
        })
    }

    #[test]
    fn a_new_template_is_granted_to_as_many_members_as_the_budget() {
        let d = decide_with(&fleet(10), &[], controls(3), false);
        assert_eq!(d.grant.len(), 3, "{d:?}");
        assert_eq!(d.phase, Phase::Progressing);
        assert_eq!(d.waiting, 10);
        // The default (10%) of 25 members rounds up to 3.
        let d = decide_with(&fleet(25), &[], RolloutControls::default(), false);
        assert_eq!(d.grant.len(), 3);
    }

    #[test]
    fn grants_out_and_unavailable_members_share_the_window() {
        let mut members = fleet(10);
        members[0].ready = false; // down by itself
        let grants = [out("n01"), out("n02")];
        members[1].ready = false; // a holder whose pod restarts counts once
        let d = decide_with(&members, &grants, controls(4), false);
        // in window: n00, n01 (unavailable) + n02 (granted, still Ready) = 3 of 4.
        assert_eq!(d.grant.len(), 1, "{d:?}");
        assert!(
            !d.grant
                .iter()
                .any(|n| ["n00", "n01", "n02"].contains(&n.as_str()))
        );
        let d = decide_with(&members, &grants, controls(3), false);
        assert!(d.grant.is_empty(), "the window is full: {d:?}");
    }

    #[test]
    fn a_freed_unit_is_granted_again_at_once_and_finished_grants_are_deleted() {
        let mut members = fleet(4);
        members[0].hash = Some(NEW.into());
        let grants = [grant_state("n00", GrantState::Succeeded), out("n01")];
        let d = decide_with(&members, &grants, controls(2), false);
        assert_eq!(d.delete, vec!["n00".to_string()]);
        assert_eq!(d.grant.len(), 1);
        assert_eq!(d.upgrading, BTreeSet::from(["n01".to_string()]));
        assert_eq!(d.waiting, 2);
    }

    #[test]
    fn not_ready_members_get_no_grant_they_upgrade_by_themselves() {
        let mut members = fleet(3);
        for m in &mut members {
            m.ready = false;
        }
        let d = decide_with(&members, &[], controls(5), false);
        assert!(d.grant.is_empty(), "{d:?}");
        assert_eq!(d.phase, Phase::Progressing);
    }

    #[test]
    fn stale_and_expired_grants_are_deleted_and_free_their_unit() {
        let members = fleet(3);
        let grants = [
            GrantView {
                node: "n00".into(),
                hash: "older".into(),
                state: GrantState::Out { expired: false },
            },
            grant_state("n01", GrantState::Out { expired: true }),
            grant_state("n02", GrantState::Released),
        ];
        let d = decide_with(&members, &grants, controls(1), false);
        assert_eq!(d.delete, vec!["n00", "n01", "n02"]);
        assert_eq!(d.grant.len(), 1);
    }

    #[test]
    fn the_failure_budget_halts_new_grants_and_names_the_failed() {
        let members = fleet(10);
        let failed = |n: &str| {
            grant_state(
                n,
                GrantState::RolledBack {
                    reason: "not Ready".into(),
                },
            )
        };
        // Default maxFailed = the resolved maxUnavailable (2): one failure goes on.
        let d = decide_with(&members, &[failed("n00")], controls(2), false);
        assert_eq!(d.phase, Phase::Progressing);
        assert_eq!(d.grant.len(), 2);
        assert!(
            !d.grant.contains(&"n00".to_string()),
            "a failed node is not granted again"
        );
        let d = decide_with(
            &members,
            &[failed("n00"), failed("n01"), out("n02")],
            controls(2),
            false,
        );
        assert_eq!(d.phase, Phase::Halted);
        assert!(d.grant.is_empty());
        assert_eq!(d.failed.keys().collect::<Vec<_>>(), ["n00", "n01"]);
        assert!(d.delete.is_empty(), "failure records are kept: {d:?}");
        // maxFailed written explicitly.
        let c = RolloutControls {
            max_failed: Some(Portion::Count(3)),
            ..controls(2)
        };
        let d = decide_with(&members, &[failed("n00"), failed("n01")], c, false);
        assert_eq!(d.phase, Phase::Progressing);
        // A failure of another hash is not one of this hash.
        let mut old_failure = failed("n00");
        old_failure.hash = "older".into();
        let d = decide_with(&members, &[old_failure], controls(1), false);
        assert!(d.failed.is_empty());
        assert_eq!(d.delete, vec!["n00"]);
    }

    #[test]
    fn at_most_max_failed_plus_budget_minus_one_members_can_fail_a_hash() {
        // Simulate a template that fails everywhere: grants out finish as failures.
        let members = fleet(20);
        let (budget, max_failed) = (3, 2);
        let c = RolloutControls {
            max_failed: Some(Portion::Count(max_failed)),
            ..controls(budget)
        };
        let mut grants: Vec<GrantView> = Vec::new();
        let mut ever_granted = BTreeSet::new();
        for _ in 0..20 {
            let d = decide_with(&members, &grants, c, false);
            for node in d.grant {
                ever_granted.insert(node.clone());
                grants.push(out(&node));
            }
            // One grant out finishes as a failure per round.
            if let Some(g) = grants
                .iter_mut()
                .find(|g| g.state == GrantState::Out { expired: false })
            {
                g.state = GrantState::RolledBack {
                    reason: "broken".into(),
                };
            }
        }
        assert!(
            ever_granted.len() <= (max_failed + budget - 1) as usize,
            "{} nodes were granted a failing hash",
            ever_granted.len()
        );
    }

    #[test]
    fn paused_hands_out_nothing_new() {
        let c = RolloutControls {
            paused: true,
            ..controls(3)
        };
        let d = decide_with(&fleet(5), &[out("n00")], c, false);
        assert_eq!(d.phase, Phase::Paused);
        assert!(d.grant.is_empty());
        assert_eq!(d.upgrading.len(), 1, "grants out finish");
    }

    #[test]
    fn canary_members_go_first_then_the_rollout_awaits_promotion() {
        let mut members = fleet(10);
        members[7].canary = true;
        members[8].canary = true;
        let c = RolloutControls {
            canary: Some(Portion::Count(3)),
            ..controls(5)
        };
        let d = decide_with(&members, &[], c, false);
        assert_eq!(d.grant.len(), 3);
        assert_eq!(&d.grant[..2], ["n07", "n08"], "labelled nodes first");
        // Three upgraded: wait for promotion.
        for m in &mut members[7..10] {
            m.hash = Some(NEW.into());
        }
        let d = decide_with(&members, &[], c, false);
        assert_eq!(d.phase, Phase::AwaitingPromotion);
        assert!(d.grant.is_empty());
        let d = decide_with(&members, &[], c, true);
        assert_eq!(d.phase, Phase::Progressing);
        assert_eq!(d.grant.len(), 5);
    }

    #[test]
    fn nodes_with_images_ready_go_before_others_in_a_stable_order() {
        let mut members = fleet(6);
        members[4].images_ready = Some(format!("images of {NEW} are on the node"));
        members[3].images_ready = Some("images of older are on the node".into());
        let d1 = decide_with(&members, &[], controls(2), false);
        assert_eq!(d1.grant[0], "n04");
        let d2 = decide_with(&members, &[], controls(2), false);
        assert_eq!(d1.grant, d2.grant, "the order is stable");
    }

    #[test]
    fn nodes_pulling_or_failing_to_pull_the_hash_are_not_granted_it() {
        let mut members = fleet(4);
        members[0].images_not_ready =
            Some(("Pulling".into(), format!("pulling images of {NEW}: a")));
        members[1].images_not_ready = Some((
            PULL_FAILED.into(),
            format!("images of {NEW} could not be pulled: not found"),
        ));
        members[2].images_not_ready = Some(("Pulling".into(), "pulling images of older: a".into()));
        let d = decide_with(&members, &[], controls(4), false);
        assert_eq!(d.grant, ["n02", "n03"].map(String::from).to_vec(), "{d:?}");
        assert_eq!(d.pull_failed.keys().collect::<Vec<_>>(), ["n01"]);
    }

    #[test]
    fn a_converged_object_is_complete_and_clears_its_grants() {
        let members: Vec<Member> = (0..3)
            .map(|i| member(&format!("n{i}"), NEW, true))
            .collect();
        let d = decide_with(
            &members,
            &[grant_state("n0", GrantState::Succeeded)],
            controls(1),
            false,
        );
        assert_eq!(d.phase, Phase::Complete);
        assert_eq!(d.delete, vec!["n0"]);
        assert!(d.grant.is_empty());
    }

    #[test]
    fn a_node_found_already_current_is_not_granted_again() {
        let mut members = fleet(2);
        members[0].hash = None; // hand-placed, equal to the template
        members[1].hash = None;
        let grants = [grant_state("n00", GrantState::Current)];
        let d = decide_with(&members, &grants, controls(2), false);
        assert_eq!(d.grant, vec!["n01"]);
        assert!(d.delete.is_empty(), "the record is kept: {d:?}");
        let grants = [
            grant_state("n00", GrantState::Current),
            grant_state("n01", GrantState::Current),
        ];
        let d = decide_with(&members, &grants, controls(2), false);
        assert_eq!(d.phase, Phase::Complete);
    }

    #[test]
    fn a_current_record_goes_when_the_node_runs_another_hash_since() {
        // n00 was found current (hand-placed), then a bundle applied offline moved it to
        // another hash: the record is stale, and n00 is upgraded again.
        let mut members = fleet(2);
        members[0].hash = Some("old".into());
        members[1].hash = None;
        let grants = [
            grant_state("n00", GrantState::Current),
            grant_state("n01", GrantState::Current),
        ];
        let d = decide_with(&members, &grants, controls(2), false);
        assert_eq!(d.delete, vec!["n00"], "{d:?}");
        assert_eq!(d.grant, vec!["n00"]);
        assert_eq!(d.phase, Phase::Progressing);
    }

    #[test]
    fn a_holder_whose_pod_is_being_replaced_still_counts_until_its_grant_expires() {
        // n02's mirror pod is gone for a moment (kubelet replacing it): its grant holds.
        let d = decide_with(&fleet(2), &[out("n02")], controls(1), false);
        assert!(d.grant.is_empty(), "{d:?}");
        assert!(d.delete.is_empty());
        let gone = grant_state("n02", GrantState::Out { expired: true });
        let d = decide_with(&fleet(2), &[gone], controls(1), false);
        assert_eq!(d.delete, vec!["n02"]);
        assert_eq!(d.grant.len(), 1);
    }

    #[test]
    fn a_node_whose_grant_expired_unused_is_passed_over() {
        let members = fleet(3);
        let stalled = BTreeSet::from(["n00".to_string(), "n01".to_string()]);
        let d = decide(&Input {
            object: "StaticPod default/nginx",
            hash: NEW,
            members: &members,
            missing: &[],
            stalled: &stalled,
            grants: &[],
            controls: controls(3),
            promoted: false,
        });
        assert_eq!(d.grant, vec!["n02"]);
    }

    #[test]
    fn a_member_whose_pod_just_vanished_is_unavailable() {
        let members = fleet(3);
        let d = decide(&Input {
            object: "StaticPod default/nginx",
            hash: NEW,
            members: &members,
            missing: &["n09".to_string()],
            stalled: &BTreeSet::new(),
            grants: &[],
            controls: controls(2),
            promoted: false,
        });
        assert_eq!(d.grant.len(), 1, "{d:?}");
    }
}
