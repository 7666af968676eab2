//! Conformance of the dev cluster with the API server semantics the agent relies on,
//! driven through `kube::Client` over HTTPS with kubeconfigs the server writes.//!
//! Shared here: a store behind a running API server (`Sim`) with its clients, the test
//! objects, and the waits; the tests are grouped by API area.

mod auth;
mod crud;
mod faults;
mod patch;
mod pipe;
mod selectors;
mod status;
mod tables_and_discovery;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams, WatchEvent,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::{Client, Config};
use serde_json::{Value, json};
use staticpod_puller::sim::apiserver::{ApiServer, ApiServerOptions, Identity};
use staticpod_puller::sim::store::{DEFAULT_HISTORY, Store};

const ADMIN: &str = "admin-token";
const NODE1: &str = "node1-token";
const NODE2: &str = "node2-token";
const ALICE: &str = "alice-token";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(15);

/// A store behind a running API server, and an admin client.
struct Sim {
    store: Arc<Store>,
    server: ApiServer,
    admin: Client,
}

impl Sim {
    async fn start() -> Sim {
        Sim::with_history(DEFAULT_HISTORY).await
    }

    async fn with_history(history: usize) -> Sim {
        let store = Store::new(history);
        let tokens = HashMap::from([
            (ADMIN.to_string(), Identity::admin("admin")),
            (NODE1.to_string(), Identity::node("n1")),
            (NODE2.to_string(), Identity::node("n2")),
            (
                ALICE.to_string(),
                Identity {
                    user: "alice".into(),
                    groups: vec!["devs".into()],
                },
            ),
        ]);
        let server = ApiServer::start(
            store.clone(),
            ApiServerOptions {
                tokens,
                ..Default::default()
            },
        )
        .await
        .expect("starting the dev cluster API server");
        let admin = client(&server, ADMIN, "admin", true).await;
        Sim {
            store,
            server,
            admin,
        }
    }

    async fn client(&self, token: &str, user: &str) -> Client {
        client(&self.server, token, user, true).await
    }

    /// A client that does not retry 503s (kube retries them by default, up to 15 times).
    async fn client_without_retries(&self, token: &str, user: &str) -> Client {
        client(&self.server, token, user, false).await
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), ns)
    }

    async fn namespace(&self, name: &str) {
        let ns: Namespace = from(json!({"metadata": {"name": name}}));
        within(
            "creating a namespace",
            Api::<Namespace>::all(self.admin.clone()).create(&PostParams::default(), &ns),
        )
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    }

    /// A pod bound to `node`, with kubelet-like Ready conditions in its status.
    async fn running_pod(&self, ns: &str, name: &str, node: &str) -> Pod {
        let pods = self.pods(ns);
        within(
            "creating a pod",
            pods.create(&PostParams::default(), &pod(name, node)),
        )
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"));
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ]}});
        within(
            "setting the pod's status",
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status)),
        )
        .await
        .unwrap_or_else(|e| panic!("setting the status of pod {ns}/{name}: {e}"))
    }

    async fn widget_crd(&self) -> ApiResource {
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        within(
            "creating the Widget CRD",
            crds.create(&PostParams::default(), &from(widget_crd())),
        )
        .await
        .unwrap_or_else(|e| panic!("creating the Widget CRD: {e}"));
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.dev", "v1", "Widget"),
            "widgets",
        )
    }

    async fn raw(
        &self,
        client: &Client,
        method: &str,
        path: &str,
        accept: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, kube::Error> {
        let mut req = http::Request::builder().method(method).uri(path);
        if let Some(accept) = accept {
            req = req.header(http::header::ACCEPT, accept);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let req = req.body(body).expect("a valid request");
        within(&format!("{method} {path}"), client.request::<Value>(req)).await
    }
}

async fn client(server: &ApiServer, token: &str, user: &str, retry: bool) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig(token, user))
        .unwrap_or_else(|e| panic!("the server's kubeconfig for {user} does not parse: {e}"));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| {
            panic!("the server's kubeconfig for {user} is not a usable config: {e}")
        });
    config.default_retry = retry;
    Client::try_from(config).unwrap_or_else(|e| panic!("building a client for {user}: {e}"))
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("test object does not deserialize: {e}"))
}

fn pod(name: &str, node: &str) -> Pod {
    from(json!({
        "metadata": {"name": name, "labels": {"app": "web", "node": node}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx:1.19.1"}]},
    }))
}

fn lease(name: &str, holder: &str) -> Lease {
    from(
        json!({"metadata": {"name": name}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}}),
    )
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
                    {"name": "Count", "type": "integer", "jsonPath": ".status.count"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Wide", "type": "string", "jsonPath": ".spec.size", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    })
}

fn widget(ar: &ApiResource, name: &str, size: &str) -> DynamicObject {
    DynamicObject::new(name, ar).data(json!({"spec": {"size": size}}))
}

/// Await `fut`, failing the test if it takes longer than [`STEP`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?} waiting for {what}"))
}

/// Poll `check` until it succeeds or `timeout` passes; the panic shows the last thing seen.
async fn eventually<T, Fut>(what: &str, timeout: Duration, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The Status of an API error; panics (saying what was expected) on success or another error.
fn status<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(s)) => *s,
        Err(e) => panic!("{what}: expected an API error with a Status, got {e:?}"),
        Ok(v) => panic!("{what}: expected an API error, got success: {v:?}"),
    }
}

fn assert_status(what: &str, s: &Status, code: u16, reason: &str) {
    assert_eq!(
        (s.code, s.reason.as_str()),
        (code, reason),
        "{what}: expected {code} {reason}, got {s:?}"
    );
}

fn rv_of<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("objects carry a numeric resourceVersion")
}

async fn next_event<K, S>(what: &str, stream: &mut S) -> WatchEvent<K>
where
    S: Stream<Item = Result<WatchEvent<K>, kube::Error>> + Unpin,
{
    match within(what, stream.next()).await {
        Some(Ok(event)) => event,
        Some(Err(e)) => panic!("{what}: the watch failed: {e}"),
        None => panic!("{what}: the watch ended"),
    }
}

/// The next non-bookmark event, as (type, object name, resourceVersion).
async fn next_change<S>(what: &str, stream: &mut S) -> (&'static str, String, u64)
where
    S: Stream<Item = Result<WatchEvent<Lease>, kube::Error>> + Unpin,
{
    loop {
        let (kind, obj) = match next_event(what, stream).await {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("{what}: unexpected ERROR event {e:?}"),
        };
        return (
            kind,
            obj.metadata.name.clone().unwrap_or_default(),
            rv_of(&obj),
        );
    }
}
