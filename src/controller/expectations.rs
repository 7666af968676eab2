//! Grants this replica created or deleted that its cache does not show so yet. A pass run
//! before the watch catches up must neither grant past the window (a created grant not seen)
//! nor count a grant it deleted. By uid: a grant handed out again has the name of the one
//! deleted before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::window::GrantView;
use crate::desired::ObjectKey;

/// How long a write may stay unseen in the cache before this replica stops assuming it (a
/// grant deleted by another replica since, say).
const TIMEOUT: Duration = Duration::from_secs(30);

/// One grant as a pass decides on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The Lease's uid: a delete is made on this grant only (a precondition).
    pub uid: String,
    pub view: GrantView,
}

#[derive(Default)]
pub struct Expectations {
    created: HashMap<String, (ObjectKey, GrantView, Instant)>,
    deleted: HashMap<String, (ObjectKey, Instant)>,
}

impl Expectations {
    /// The grants of `key` by node: those in the cache (`cached`, every grant Lease of `key`
    /// the cache shows), less those deleted, with a grant created and not shown yet in place
    /// of whatever the cache still shows for its node (an older grant of the same name).
    pub fn grants(
        &mut self,
        key: &ObjectKey,
        cached: &[Held],
        now: Instant,
    ) -> BTreeMap<String, Held> {
        let shown: HashSet<&str> = cached.iter().map(|h| h.uid.as_str()).collect();
        let shown = |uid: &str| shown.contains(uid);
        // Expectations end when the cache agrees, or after the timeout.
        self.created.retain(|uid, (of, _, at)| {
            of != key || (!shown(uid) && now.duration_since(*at) < TIMEOUT)
        });
        self.deleted
            .retain(|uid, (of, at)| of != key || (shown(uid) && now.duration_since(*at) < TIMEOUT));
        let mut held: BTreeMap<String, Held> = cached
            .iter()
            .filter(|h| !self.deleted.contains_key(&h.uid))
            .map(|h| (h.view.node.clone(), h.clone()))
            .collect();
        let mut pending: Vec<(&String, &GrantView, &Instant)> = self
            .created
            .iter()
            .filter(|(_, (of, _, _))| of == key)
            .map(|(uid, (_, view, at))| (uid, view, at))
            .collect();
        // The newest last, so it wins for its node.
        pending.sort_by_key(|(_, _, at)| **at);
        for (uid, view, _) in pending {
            held.insert(
                view.node.clone(),
                Held {
                    uid: uid.clone(),
                    view: view.clone(),
                },
            );
        }
        held
    }

    /// When the first expectation of `key` times out: a pass is due then, even if nothing
    /// changes.
    pub fn timeout(&self, key: &ObjectKey) -> Option<Instant> {
        let created = self.created.values().map(|(of, _, at)| (of, at));
        let deleted = self.deleted.values().map(|(of, at)| (of, at));
        created
            .chain(deleted)
            .filter(|(of, _)| *of == key)
            .map(|(_, at)| *at + TIMEOUT)
            .min()
    }

    /// This replica created grant `uid` of `key`.
    pub fn created(&mut self, key: &ObjectKey, uid: String, view: GrantView, now: Instant) {
        self.created.insert(uid, (key.clone(), view, now));
    }

    /// This replica deleted grant `uid` of `key` (or found it gone): it is not counted again,
    /// whether or not the cache showed it yet.
    pub fn deleted(&mut self, key: &ObjectKey, uid: &str, now: Instant) {
        self.created.remove(uid);
        self.deleted.insert(uid.to_string(), (key.clone(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::window::GrantState;
    use crate::desired::Kind;

    fn key() -> ObjectKey {
        ObjectKey {
            kind: Kind::StaticPod,
            namespace: "default".into(),
            name: "nginx".into(),
        }
    }

    fn held(uid: &str, node: &str, hash: &str) -> Held {
        Held {
            uid: uid.into(),
            view: GrantView {
                node: node.into(),
                hash: hash.into(),
                state: GrantState::Out { expired: false },
            },
        }
    }

    fn hashes(held: &BTreeMap<String, Held>) -> Vec<(&str, &str)> {
        held.values()
            .map(|h| (h.view.node.as_str(), h.view.hash.as_str()))
            .collect()
    }

    #[test]
    fn a_created_grant_counts_before_the_cache_shows_it_and_replaces_an_older_one() {
        let mut e = Expectations::default();
        let now = Instant::now();
        let old = held("u1", "edge-1", "h1");
        e.deleted(&key(), "u1", now);
        let new = held("u2", "edge-1", "h2");
        e.created(&key(), "u2".into(), new.view.clone(), now);
        // The cache still shows the deleted grant, not the new one.
        let g = e.grants(&key(), std::slice::from_ref(&old), now);
        assert_eq!(hashes(&g), [("edge-1", "h2")]);
        assert_eq!(g["edge-1"].uid, "u2");
        // Caught up.
        let g = e.grants(&key(), std::slice::from_ref(&new), now);
        assert_eq!(hashes(&g), [("edge-1", "h2")]);
    }

    #[test]
    fn a_grant_created_then_deleted_before_the_cache_showed_it_is_forgotten() {
        // A template changed right after a grant was handed out: the grant is deleted before
        // the watch delivered it, and a new one handed out. The first must not come back in
        // place of the second (the controller would delete its own new grant, pass after pass).
        let mut e = Expectations::default();
        let now = Instant::now();
        e.created(&key(), "u1".into(), held("u1", "edge-1", "h1").view, now);
        let g = e.grants(&key(), &[], now);
        assert_eq!(g["edge-1"].uid, "u1");
        e.deleted(&key(), "u1", now);
        let later = now + Duration::from_millis(5);
        let second = held("u2", "edge-1", "h2");
        e.created(&key(), "u2".into(), second.view.clone(), later);
        assert_eq!(hashes(&e.grants(&key(), &[], later)), [("edge-1", "h2")]);
        // The cache shows the second: still that one, and only that one.
        let g = e.grants(&key(), std::slice::from_ref(&second), later);
        assert_eq!(hashes(&g), [("edge-1", "h2")]);
        assert_eq!(g["edge-1"].uid, "u2");
    }

    #[test]
    fn expectations_of_other_objects_are_kept_and_old_ones_end() {
        let mut e = Expectations::default();
        let now = Instant::now();
        let other = ObjectKey {
            name: "other".into(),
            ..key()
        };
        e.created(&other, "u9".into(), held("u9", "edge-1", "h9").view, now);
        e.created(&key(), "u1".into(), held("u1", "edge-2", "h1").view, now);
        assert_eq!(hashes(&e.grants(&key(), &[], now)), [("edge-2", "h1")]);
        assert_eq!(hashes(&e.grants(&other, &[], now)), [("edge-1", "h9")]);
        // A pass is due when the first of them times out, whatever else happens.
        assert_eq!(e.timeout(&key()), Some(now + TIMEOUT));
        // Never shown for longer than the timeout: no longer assumed.
        assert!(e.grants(&key(), &[], now + TIMEOUT).is_empty());
        assert_eq!(e.timeout(&key()), None);
        let gone = held("u3", "edge-3", "h1");
        e.deleted(&key(), "u3", now);
        assert!(
            e.grants(&key(), std::slice::from_ref(&gone), now)
                .is_empty()
        );
        assert_eq!(
            hashes(&e.grants(&key(), std::slice::from_ref(&gone), now + TIMEOUT)),
            [("edge-3", "h1")],
            "a deletion the cache never showed is not assumed forever"
        );
    }
}
