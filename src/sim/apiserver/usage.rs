//! What each user costs the API server: requests by verb and resource, and watch events
//! delivered by resource. The scale benchmarks report these per node.

use std::collections::BTreeMap;
use std::sync::Mutex;

use http::Method;

use super::route::ResourcePath;

/// Counts since the server started.
#[derive(Default)]
pub(super) struct Usage {
    requests: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    watch_events: Mutex<BTreeMap<(String, String), u64>>,
}

/// A copy of the counts: requests by (user, verb, resource), watch events by (user, resource).
#[derive(Debug, Clone, Default)]
pub struct UsageCounts {
    pub requests: BTreeMap<(String, &'static str, String), u64>,
    pub watch_events: BTreeMap<(String, String), u64>,
}

impl UsageCounts {
    /// Requests by users `who` picks.
    pub fn requests_by(&self, who: impl Fn(&str) -> bool) -> u64 {
        self.requests
            .iter()
            .filter(|((user, _, _), _)| who(user))
            .map(|(_, n)| n)
            .sum()
    }

    /// Watch events delivered to users `who` picks, of resources `what` picks.
    pub fn watch_events_to(&self, who: impl Fn(&str) -> bool, what: impl Fn(&str) -> bool) -> u64 {
        self.watch_events
            .iter()
            .filter(|((user, resource), _)| who(user) && what(resource))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The verb of a request on a resource path, as RBAC names it.
pub(super) fn verb(method: &Method, path: &ResourcePath, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    });
    match (method.as_str(), path.name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    }
}

/// `plural` or `plural/subresource`.
pub(super) fn resource(path: &ResourcePath) -> String {
    match &path.subresource {
        Some(sub) => format!("{}/{sub}", path.plural),
        None => path.plural.clone(),
    }
}

impl Usage {
    pub(super) fn request(&self, user: &str, verb: &'static str, resource: String) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((user.to_string(), verb, resource))
            .or_default() += 1;
    }

    pub(super) fn watch_event(&self, user: &str, resource: &str) {
        *self
            .watch_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((user.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    pub(super) fn counts(&self) -> UsageCounts {
        UsageCounts {
            requests: self
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            watch_events: self
                .watch_events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
