//! Prometheus metrics of the agent, in the text exposition format, served on a loopback
//! address (`metrics.listen`). Counters live in one process-wide registry so that the parts
//! that count (upgrades, watches, bundles) need no plumbing; per-object gauges are
//! computed at scrape time from what the agent believes (`ota::status`).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Which process a metric belongs to: each serves only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Controller,
}

/// Every counter: name and help, in exposition order.
const COUNTERS: &[(&str, &str)] = &[
    (
        "staticpod_puller_upgrades_total",
        "Upgrades finished on this node, by object and result (succeeded, rolled_back, superseded, failed).",
    ),
    (
        "staticpod_puller_bundle_refusals_total",
        "Bundles refused, by reason and source (drop, http).",
    ),
    (
        "staticpod_puller_bundle_fetches_total",
        "Polls of bundle URLs, by result (changed, unchanged, error).",
    ),
    (
        "staticpod_puller_watch_errors_total",
        "Errors of the API watches (each is followed by a restart with backoff), by resource.",
    ),
    (
        "staticpod_puller_image_pulls_total",
        "Images of new templates checked before an upgrade, by result (present, pulled, failed).",
    ),
    (
        "staticpod_puller_controller_reconciles_total",
        "Controller passes over every object (after a change, or a lease renewal).",
    ),
    (
        "staticpod_puller_controller_status_writes_total",
        "Status writes by the controller, by result (ok, error).",
    ),
];

/// Every summary (sum and count of observed durations): name and help.
const SUMMARIES: &[(&str, &str)] = &[
    (
        "staticpod_puller_image_pull_seconds",
        "How long the pulls of images took (each image pulled, retries included).",
    ),
    (
        "staticpod_puller_controller_reconcile_seconds",
        "How long a controller pass over every object took.",
    ),
];

type Labels = Vec<(String, String)>;

/// The process-wide counters.
#[derive(Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<&'static str, BTreeMap<Labels, u64>>>,
    /// Summary name → (sum of seconds, count).
    summaries: Mutex<BTreeMap<&'static str, (f64, u64)>>,
}

/// The registry of this process.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Add one to counter `name` with `labels`.
pub fn inc(name: &'static str, labels: &[(&str, &str)]) {
    debug_assert!(
        COUNTERS.iter().any(|(n, _)| *n == name),
        "unknown counter {name}"
    );
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut counters = registry()
        .counters
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *counters.entry(name).or_default().entry(labels).or_default() += 1;
}

/// Record one duration in summary `name`.
pub fn observe(name: &'static str, seconds: f64) {
    debug_assert!(
        SUMMARIES.iter().any(|(n, _)| *n == name),
        "unknown summary {name}"
    );
    let mut summaries = registry()
        .summaries
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let entry = summaries.entry(name).or_default();
    entry.0 += seconds;
    entry.1 += 1;
}

/// One gauge sample.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Labels,
    pub value: f64,
}

/// The exposition text: every counter (with its HELP and TYPE even before it counted
/// anything), then `gauges`.
pub fn render(role: Role, gauges: &[Gauge]) -> String {
    let ours =
        |name: &str| (role == Role::Controller) == name.starts_with("staticpod_puller_controller_");
    let mut out = String::new();
    let counters = registry()
        .counters
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (name, help) in COUNTERS.iter().filter(|(n, _)| ours(n)) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (labels, value) in counters.get(name).into_iter().flatten() {
            out.push_str(&format!("{name}{} {value}\n", label_text(labels)));
        }
    }
    let summaries = registry()
        .summaries
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (name, help) in SUMMARIES.iter().filter(|(n, _)| ours(n)) {
        let (sum, count) = summaries.get(name).copied().unwrap_or_default();
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} summary\n{name}_sum {sum}\n{name}_count {count}\n"
        ));
    }
    let mut described = Vec::new();
    for g in gauges {
        if !described.contains(&g.name) {
            out.push_str(&format!(
                "# HELP {} {}\n# TYPE {} gauge\n",
                g.name, g.help, g.name
            ));
            described.push(g.name);
        }
        out.push_str(&format!(
            "{}{} {}\n",
            g.name,
            label_text(&g.labels),
            g.value
        ));
    }
    out
}

fn label_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format_with_escaped_labels() {
        inc(
            "staticpod_puller_bundle_refusals_total",
            &[("reason", "bad\"quote")],
        );
        let text = render(
            Role::Agent,
            &[Gauge {
                name: "staticpod_puller_object_info",
                help: "x",
                labels: vec![("object".into(), "StaticPod default/nginx".into())],
                value: 1.0,
            }],
        );
        assert!(text.contains("# TYPE staticpod_puller_upgrades_total counter\n"));
        assert!(
            !text.contains("controller"),
            "the agent serves only its own: {text}"
        );
        let controller = render(Role::Controller, &[]);
        assert!(
            controller.contains("# TYPE staticpod_puller_controller_reconcile_seconds summary\n")
                && !controller.contains("staticpod_puller_upgrades_total"),
            "{controller}"
        );
        assert!(
            text.contains("staticpod_puller_bundle_refusals_total{reason=\"bad\\\"quote\"} "),
            "{text}"
        );
        assert!(text.contains(
            "# TYPE staticpod_puller_object_info gauge\nstaticpod_puller_object_info{object=\"StaticPod default/nginx\"} 1\n"
        ));
    }
}
