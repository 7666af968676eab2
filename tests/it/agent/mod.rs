//! End-to-end tests of the node agent. The dev cluster and the status controller run inside
//! the test; every node's agent is a separate `staticpod-puller run` (or `sync --once`) process
//! of the built binary, with its own identity, configuration file, manifest and state
//! directories, as on a real node. Each test has its own temporary directory, waits on
//! conditions with deadlines, and says what it expected and what it saw.
//!
//! Shared here: the objects and images the tests use; `env` holds one test's world (`Env`) and
//! `watch` what the tests observe (files, mirror pods). The tests are grouped by theme.

mod crash;
mod demo;
mod drift;
mod env;
mod faults;
mod fleet;
mod hostile;
mod images;
mod kill_points;
mod local_api;
mod ota;
mod rollout;
mod sync_once;
mod trust;
mod watch;

use std::time::Duration;

use serde_json::{Value, json};

pub(crate) use env::{AgentProc, Env, Settings};
pub(crate) use local_api::get_metrics;
pub(crate) use watch::{file_hash, mirror};

pub(crate) const NS: &str = "default";
pub(crate) const OLD_IMAGE: &str = "nginx:1.19.1";
pub(crate) const NEW_IMAGE: &str = "nginx:1.19.2";
const FIXED_IMAGE: &str = "nginx:1.19.3";
/// How often the tests' own watchers sample files and pods.
const SAMPLE: Duration = Duration::from_millis(20);

/// A manifest as an operator places it by hand: no hash annotation.
pub(crate) fn hand_placed(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: web\n    image: {image}\n"
    )
}

/// A pod spec with one container.
pub(crate) fn web(image: &str) -> Value {
    json!({"containers": [{"name": "web", "image": image}]})
}

/// A StaticPod as an operator writes it for OpenYurt.
pub(crate) fn static_pod(name: &str, manifest: &str, max_unavailable: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"staticPodManifest": manifest,
                 "upgradeStrategy": {"type": "AdvancedRollingUpdate", "maxUnavailable": max_unavailable},
                 "template": {"metadata": {"name": name}, "spec": spec}},
    })
}

/// The items of a bundle: the nginx StaticPod (rolling update) at `image`.
pub(crate) fn bundle_items(image: &str) -> String {
    format!(
        "\
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
  namespace: {NS}
spec:
  staticPodManifest: nginx
  upgradeStrategy:
    type: AdvancedRollingUpdate
  template:
    metadata:
      name: nginx
    spec:
      containers:
      - name: web
        image: {image}
"
    )
}
