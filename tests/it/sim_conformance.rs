//! Conformance of the dev cluster with the API server semantics the agent relies on,
//! driven through `kube::Client` over HTTPS with kubeconfigs the server writes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};
use staticpod_puller::sim::apiserver::{ApiServer, ApiServerOptions, Identity, Verb};
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

#[tokio::test]
async fn crud_with_typed_and_dynamic_apis_shares_one_resource_version() {
    let sim = Sim::start().await;
    sim.namespace("apps").await;
    let pods = sim.pods("apps");
    let created = sim.running_pod("apps", "web", "n1").await;
    let fetched = within("get", pods.get("web"))
        .await
        .expect("get the created pod");
    assert_eq!(
        fetched.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    assert_eq!(fetched.metadata.uid, created.metadata.uid);

    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "apps");
    let l = within(
        "create lease",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create a lease");
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "apps", &ar);
    let w = within(
        "create widget",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create a widget");
    let (p, l, w) = (rv_of(&created), rv_of(&l), rv_of(&w));
    assert!(
        p < l && l < w,
        "one cluster-wide, increasing resourceVersion: pod {p} < lease {l} < widget {w}"
    );
    assert_eq!(
        sim.store.current_rv(),
        w,
        "the store's rv is the newest write's"
    );

    let mut replaced = within("get", leases.get("slot-0"))
        .await
        .expect("get the lease");
    replaced.spec.get_or_insert_default().holder_identity = Some("n2".into());
    let replaced = within(
        "replace",
        leases.replace("slot-0", &PostParams::default(), &replaced),
    )
    .await
    .expect("replace the lease");
    assert!(rv_of(&replaced) > w, "an update bumps the resourceVersion");
    assert_eq!(
        replaced.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("n2")
    );

    let list = within("list", leases.list(&ListParams::default()))
        .await
        .expect("list leases");
    assert_eq!(
        list.items.len(),
        1,
        "one lease in apps, saw {:?}",
        list.items
    );
    assert!(
        list.metadata.resource_version.is_some(),
        "lists carry the store's resourceVersion"
    );

    within("delete", widgets.delete("w1", &DeleteParams::default()))
        .await
        .expect("delete the widget");
    within("delete", leases.delete("slot-0", &DeleteParams::default()))
        .await
        .expect("delete the lease");
    let s = status(
        "get a deleted lease",
        within("get", leases.get("slot-0")).await,
    );
    assert_status("get a deleted lease", &s, 404, "NotFound");
    assert!(
        s.message.contains("slot-0"),
        "the 404 names the object: {}",
        s.message
    );
    let nss = within(
        "list namespaces",
        Api::<Namespace>::all(sim.admin.clone()).list(&ListParams::default()),
    )
    .await
    .expect("list namespaces");
    let names: Vec<_> = nss
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for want in ["default", "kube-node-lease", "apps"] {
        assert!(
            names.iter().any(|n| n == want),
            "namespace {want} listed; saw {names:?}"
        );
    }
}

#[tokio::test]
async fn conflicts_already_exists_and_not_found_are_status_errors() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create");

    let s = status(
        "create it again",
        within(
            "create",
            leases.create(&PostParams::default(), &lease("slot-0", "n2")),
        )
        .await,
    );
    assert_status("create it again", &s, 409, "AlreadyExists");

    let mut newer = first.clone();
    newer.spec.get_or_insert_default().holder_identity = Some("n2".into());
    within(
        "replace",
        leases.replace("slot-0", &PostParams::default(), &newer),
    )
    .await
    .expect("replace with the current rv");
    let mut stale = first.clone();
    stale.spec.get_or_insert_default().holder_identity = Some("n3".into());
    let s = status(
        "replace with a stale rv",
        within(
            "replace",
            leases.replace("slot-0", &PostParams::default(), &stale),
        )
        .await,
    );
    assert_status("replace with a stale rv", &s, 409, "Conflict");

    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: first.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    let s = status(
        "delete with a stale rv precondition",
        within("delete", leases.delete("slot-0", &dp)).await,
    );
    assert_status("delete with a stale rv precondition", &s, 409, "Conflict");

    let s = status(
        "get a missing lease",
        within("get", leases.get("nope")).await,
    );
    assert_status("get a missing lease", &s, 404, "NotFound");
    let s = status(
        "create in a missing namespace",
        within(
            "create",
            Api::<Lease>::namespaced(sim.admin.clone(), "missing")
                .create(&PostParams::default(), &lease("x", "n1")),
        )
        .await,
    );
    assert_status("create in a missing namespace", &s, 404, "NotFound");
}

#[tokio::test]
async fn generation_follows_spec_and_status_is_a_subresource() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    let w = within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create a widget");
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "a new object has generation 1"
    );

    let pp = PatchParams::default();
    let w = within(
        "patch spec",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"size": "m"}}))),
    )
    .await
    .expect("patch spec");
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    let w = within(
        "patch labels",
        widgets.patch(
            "w1",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        ),
    )
    .await
    .expect("patch labels");
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a metadata change does not bump the generation"
    );

    let w = within(
        "patch status",
        widgets.patch_status(
            "w1",
            &pp,
            &Patch::Merge(json!({"spec": {"size": "xl"}, "status": {"count": 3}})),
        ),
    )
    .await
    .expect("patch status");
    assert_eq!(
        w.data["status"]["count"], 3,
        "the status subresource writes status"
    );
    assert_eq!(
        w.data["spec"]["size"], "m",
        "the status subresource ignores spec"
    );
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a status change does not bump the generation"
    );

    let mut replaced = w.clone();
    replaced.data["status"] = json!({"count": 99});
    replaced.data["spec"] = json!({"size": "l"});
    let w = within(
        "replace",
        widgets.replace("w1", &PostParams::default(), &replaced),
    )
    .await
    .expect("replace");
    assert_eq!(
        (
            w.data["spec"]["size"].clone(),
            w.data["status"]["count"].clone()
        ),
        (json!("l"), json!(3)),
        "the main resource ignores status"
    );
    assert_eq!(w.metadata.generation, Some(3));

    let before = rv_of(&w);
    let same = within(
        "no-op patch",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"size": "l"}}))),
    )
    .await
    .expect("no-op patch");
    assert_eq!(
        rv_of(&same),
        before,
        "a no-op write keeps the resourceVersion"
    );
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let sim = Sim::start().await;
    sim.namespace("other").await;
    for (ns, name, node) in [
        ("default", "a", "n1"),
        ("default", "b", "n2"),
        ("other", "c", "n1"),
    ] {
        within(
            "create",
            sim.pods(ns)
                .create(&PostParams::default(), &pod(name, node)),
        )
        .await
        .expect("create pod");
    }
    within(
        "label",
        sim.pods("default").patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "edge"}}})),
        ),
    )
    .await
    .expect("label pod b");
    let all: Api<Pod> = Api::all(sim.admin.clone());
    let names = |list: kube::api::ObjectList<Pod>| {
        let mut n: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        n.sort();
        n
    };
    for (labels, fields, want) in [
        (None, None, vec!["a", "b", "c"]),
        (None, Some("spec.nodeName=n1"), vec!["a", "c"]),
        (None, Some("metadata.namespace=other"), vec!["c"]),
        (None, Some("metadata.name=b"), vec!["b"]),
        (
            None,
            Some("metadata.namespace!=other,spec.nodeName=n1"),
            vec!["a"],
        ),
        (Some("tier=edge"), None, vec!["b"]),
        (Some("app=web,!tier"), None, vec!["a", "c"]),
        (
            Some("node in (n1,n3)"),
            Some("metadata.namespace=default"),
            vec!["a"],
        ),
    ] {
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        if let Some(f) = fields {
            lp = lp.fields(f);
        }
        let got = names(within("list", all.list(&lp)).await.expect("list pods"));
        assert_eq!(
            got, want,
            "labelSelector {labels:?} fieldSelector {fields:?}"
        );
    }
    let got = names(
        within(
            "list",
            sim.pods("default")
                .list(&ListParams::default().fields("spec.nodeName=n1")),
        )
        .await
        .expect("list"),
    );
    assert_eq!(got, vec!["a"], "namespaced list with a field selector");
    let meta = within(
        "list metadata",
        all.list_metadata(&ListParams::default().labels("tier=edge")),
    )
    .await
    .expect("list metadata");
    assert_eq!(
        meta.items.len(),
        1,
        "PartialObjectMetadata lists are served"
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_follows_selectors() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("l1", "n1")),
    )
    .await
    .expect("create l1");
    let from = first.metadata.resource_version.clone().expect("rv");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("l2", "n1")),
    )
    .await
    .expect("create l2");
    within(
        "patch",
        leases.patch(
            "l1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "n2"}})),
        ),
    )
    .await
    .expect("patch l1");
    within("delete", leases.delete("l2", &DeleteParams::default()))
        .await
        .expect("delete l2");

    let mut stream = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(60), &from),
    )
    .await
    .expect("watch from l1's rv")
    .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_change("a replayed change", &mut stream).await);
    }
    let kinds: Vec<_> = seen.iter().map(|(k, n, _)| format!("{k} {n}")).collect();
    assert_eq!(
        kinds,
        ["ADDED l2", "MODIFIED l1", "DELETED l2"],
        "the changes after rv {from}, in order"
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "resourceVersions increase: {seen:?}"
    );

    within(
        "create",
        leases.create(&PostParams::default(), &lease("l3", "n1")),
    )
    .await
    .expect("create l3");
    let (kind, name, _) = next_change("a live change", &mut stream).await;
    assert_eq!(
        (kind, name.as_str()),
        ("ADDED", "l3"),
        "live changes follow the replay"
    );

    // A label-selected watch sees an object leave and enter the selection.
    let mut selected = within(
        "watch",
        leases.watch(&WatchParams::default().labels("pick=yes").timeout(60), "0"),
    )
    .await
    .expect("watch selected")
    .boxed();
    let pick = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"pick": v}}}));
    within(
        "label",
        leases.patch("l3", &PatchParams::default(), &pick(Some("yes"))),
    )
    .await
    .expect("label l3");
    assert_eq!(
        next_change("l3 entering the selection", &mut selected)
            .await
            .0,
        "ADDED"
    );
    within(
        "unlabel",
        leases.patch("l3", &PatchParams::default(), &pick(None)),
    )
    .await
    .expect("unlabel l3");
    assert_eq!(
        next_change("l3 leaving the selection", &mut selected)
            .await
            .0,
        "DELETED"
    );
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_410_expired() {
    let sim = Sim::with_history(3).await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("l0", "n1")),
    )
    .await
    .expect("create");
    for i in 1..6 {
        within(
            "create",
            leases.create(&PostParams::default(), &lease(&format!("l{i}"), "n1")),
        )
        .await
        .expect("create");
    }
    let from = first.metadata.resource_version.expect("rv");
    let mut stream = within("watch", leases.watch(&WatchParams::default(), &from))
        .await
        .expect("the watch starts (200)")
        .boxed();
    match next_event("the ERROR event", &mut stream).await {
        WatchEvent::Error(s) => assert_eq!(
            (s.code, s.reason.as_str()),
            (410, "Expired"),
            "ERROR event carries 410 Expired: {s:?}"
        ),
        other => {
            panic!("expected an ERROR event with 410 for rv {from} (history of 3), got {other:?}")
        }
    }
    assert!(
        within("the stream end", stream.next()).await.is_none(),
        "the watch ends after the 410"
    );
}

#[tokio::test]
async fn watches_get_bookmarks_and_initial_events() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("l1", "n1")),
    )
    .await
    .expect("create");
    let mut stream = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(60), "0"),
    )
    .await
    .expect("watch")
    .boxed();
    match next_event("the synthetic ADDED", &mut stream).await {
        WatchEvent::Added(l) => assert_eq!(l.metadata.name.as_deref(), Some("l1")),
        other => panic!("a watch from rv 0 starts with ADDED for current objects; got {other:?}"),
    }
    let current = sim.store.current_rv();
    match next_event("a bookmark", &mut stream).await {
        WatchEvent::Bookmark(b) => {
            let rv: u64 = b
                .metadata
                .resource_version
                .parse()
                .expect("numeric bookmark rv");
            assert!(
                rv >= current,
                "the bookmark's rv {rv} is at least the store's {current} at watch start"
            );
        }
        other => panic!("expected a bookmark within {STEP:?}, got {other:?}"),
    }
    // Streaming lists: initial events end with an annotated bookmark.
    let wp = WatchParams::default().initial_events().timeout(60);
    let mut stream = within("watch", leases.watch(&wp, "0"))
        .await
        .expect("watch with sendInitialEvents")
        .boxed();
    assert!(matches!(
        next_event("initial ADDED", &mut stream).await,
        WatchEvent::Added(_)
    ));
    match next_event("the initial-events-end bookmark", &mut stream).await {
        WatchEvent::Bookmark(b) => assert!(
            b.metadata
                .annotations
                .contains_key("k8s.io/initial-events-end"),
            "annotated: {:?}",
            b.metadata.annotations
        ),
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    // timeoutSeconds ends the stream.
    let mut short = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(1), &current.to_string()),
    )
    .await
    .expect("watch")
    .boxed();
    loop {
        match within("the watch to time out", short.next()).await {
            None => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(other) => panic!("expected no events before the timeout, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_and_recovers_after_closed_watches() {
    let sim = Sim::start().await;
    let pods = sim.pods("default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(pods.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let seen = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    format!(
                        "apply {} {:?}",
                        p.metadata.name.unwrap_or_default(),
                        p.metadata.labels.unwrap_or_default().get("v")
                    )
                }
                Ok(watcher::Event::Delete(p)) => {
                    format!("delete {}", p.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitDone) => "init done".into(),
                Err(e) => format!("error {e}"),
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    let mut expect = async |want: &str| {
        let mut seen = Vec::new();
        loop {
            let event = within(
                &format!("the watcher to see {want:?} (seen so far: {seen:?})"),
                rx.recv(),
            )
            .await
            .expect("watcher task alive");
            if event == want {
                return;
            }
            seen.push(event);
        }
    };
    expect("init done").await;
    within(
        "create",
        pods.create(&PostParams::default(), &pod("p1", "n1")),
    )
    .await
    .expect("create p1");
    expect("apply p1 None").await;

    sim.server.faults().close_watches();
    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"v": v}}}));
    within(
        "patch",
        pods.patch("p1", &PatchParams::default(), &label("1")),
    )
    .await
    .expect("patch p1");
    expect("apply p1 Some(\"1\")").await;
    sim.server.faults().close_watches();
    within(
        "patch",
        pods.patch("p1", &PatchParams::default(), &label("2")),
    )
    .await
    .expect("patch p1");
    expect("apply p1 Some(\"2\")").await;
    within("delete", pods.delete("p1", &DeleteParams::default()))
        .await
        .expect("delete p1");
    expect("delete p1").await;
    task.abort();
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create");
    let pp = PatchParams::default();
    let w = within(
        "merge patch",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"colour": "red"}}))),
    )
    .await
    .expect("merge patch");
    assert_eq!(
        w.data["spec"],
        json!({"size": "s", "colour": "red"}),
        "merge patch merges maps"
    );
    let ops: json_patch::Patch = from(json!([
        {"op": "test", "path": "/spec/size", "value": "s"},
        {"op": "replace", "path": "/spec/size", "value": "m"},
        {"op": "remove", "path": "/spec/colour"},
    ]));
    let w = within(
        "json patch",
        widgets.patch("w1", &pp, &Patch::<()>::Json(ops)),
    )
    .await
    .expect("json patch");
    assert_eq!(w.data["spec"], json!({"size": "m"}), "JSON patch ops apply");
    let failing: json_patch::Patch =
        from(json!([{"op": "test", "path": "/spec/size", "value": "nope"}]));
    let s = status(
        "a failing JSON patch test op",
        within(
            "json patch",
            widgets.patch("w1", &pp, &Patch::<()>::Json(failing)),
        )
        .await,
    );
    assert!(
        s.code == 422 || s.code == 400,
        "a failed test op is refused: {s:?}"
    );
    let s = status(
        "strategic merge patch on a CR",
        within(
            "smp",
            widgets.patch("w1", &pp, &Patch::Strategic(json!({"spec": {}}))),
        )
        .await,
    );
    assert_status(
        "strategic merge patch on a custom resource",
        &s,
        415,
        "UnsupportedMediaType",
    );

    // Pod status: SMP merges conditions by type (kubelet's Ready survives); a merge patch
    // replaces the list.
    sim.running_pod("default", "mirror-n1", "n1").await;
    let pods = sim.pods("default");
    let need = json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}});
    let p = within(
        "smp",
        pods.patch_status("mirror-n1", &pp, &Patch::Strategic(need.clone())),
    )
    .await
    .expect("strategic merge patch");
    let types = |p: &Pod| -> Vec<String> {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| cs.iter().map(|c| c.type_.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        types(&p),
        ["PodScheduled", "Ready", "PodNeedUpgrade"],
        "SMP keeps Ready"
    );
    let p = within(
        "merge",
        pods.patch_status("mirror-n1", &pp, &Patch::Merge(need)),
    )
    .await
    .expect("merge patch");
    assert_eq!(
        types(&p),
        ["PodNeedUpgrade"],
        "a merge patch replaces the conditions list"
    );

    let s = status(
        "server-side apply",
        within(
            "apply",
            pods.patch(
                "mirror-n1",
                &PatchParams::apply("test"),
                &Patch::Apply(json!({})),
            ),
        )
        .await,
    );
    assert_status("server-side apply", &s, 415, "UnsupportedMediaType");
    assert!(
        s.message.contains("server-side apply"),
        "the 415 says why: {}",
        s.message
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let s = status(
        "dry-run create",
        within("create", pods.create(&dry, &pod("dry", "n1"))).await,
    );
    assert_status("dry-run create", &s, 400, "BadRequest");
    assert!(
        within("get", pods.get_opt("dry"))
            .await
            .expect("get")
            .is_none(),
        "a refused dry run persists nothing"
    );
}

#[tokio::test]
async fn authentication_is_required() {
    let sim = Sim::start().await;
    let stranger = sim.client("not-a-token", "stranger").await;
    let s = status(
        "a request with an unknown token",
        within(
            "list",
            Api::<Pod>::all(stranger.clone()).list(&ListParams::default()),
        )
        .await,
    );
    assert_status("a request with an unknown token", &s, 401, "Unauthorized");
    let v = within("version", stranger.apiserver_version())
        .await
        .expect("/version needs no token");
    assert!(
        v.git_version.starts_with("v1.34."),
        "a 1.34 server: {}",
        v.git_version
    );
}

#[tokio::test]
async fn node_identities_follow_node_restriction() {
    let sim = Sim::start().await;
    sim.namespace("staticpod-system").await;
    sim.running_pod("default", "nginx-n1", "n1").await;
    sim.running_pod("default", "nginx-n2", "n2").await;
    let node1 = sim.client(NODE1, "system:node:n1").await;
    let pods: Api<Pod> = Api::namespaced(node1.clone(), "default");
    let pp = PatchParams::default();
    let need = Patch::Strategic(
        json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}}),
    );

    let listed = within("list", pods.list(&ListParams::default()))
        .await
        .expect("nodes may read pods");
    assert_eq!(listed.items.len(), 2);
    within("patch own", pods.patch_status("nginx-n1", &pp, &need))
        .await
        .expect("a node may patch its own mirror pod's status");
    let s = status(
        "patching another node's pod status",
        within("patch other", pods.patch_status("nginx-n2", &pp, &need)).await,
    );
    assert_status("patching another node's pod status", &s, 403, "Forbidden");
    for part in ["system:node:n1", "patch", "pods/status", "\"default\""] {
        assert!(
            s.message.contains(part),
            "the 403 names {part}: {}",
            s.message
        );
    }

    let foreign: Api<Lease> = Api::namespaced(node1.clone(), "staticpod-system");
    let s = status(
        "a node writing a lease outside kube-node-lease",
        within(
            "create",
            foreign.create(&PostParams::default(), &lease("slot-0", "n1")),
        )
        .await,
    );
    assert_status(
        "a node writing a lease outside kube-node-lease",
        &s,
        403,
        "Forbidden",
    );
    assert!(
        s.message.contains("kube-node-lease") && s.message.contains("staticpod-system"),
        "the 403 says where: {}",
        s.message
    );
    let own: Api<Lease> = Api::namespaced(node1.clone(), "kube-node-lease");
    within(
        "create",
        own.create(&PostParams::default(), &lease("n1", "n1")),
    )
    .await
    .expect("a node may write its lease in kube-node-lease");
    let s = status(
        "a node creating a pod for another node",
        within(
            "create",
            pods.create(&PostParams::default(), &pod("x", "n2")),
        )
        .await,
    );
    assert_status(
        "a node creating a pod for another node",
        &s,
        403,
        "Forbidden",
    );
}

#[tokio::test]
async fn rbac_grants_what_roles_and_bindings_say() {
    let sim = Sim::start().await;
    sim.running_pod("default", "web", "n1").await;
    let alice = sim.client(ALICE, "alice").await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), "default");
    let s = status(
        "alice listing pods without a binding",
        within("list", pods.list(&ListParams::default())).await,
    );
    assert_status("alice listing pods without a binding", &s, 403, "Forbidden");
    assert!(
        s.message
            .contains("User \"alice\" cannot list resource \"pods\"")
            && s.message.contains("\"default\""),
        "403 message: {}",
        s.message
    );

    let rbac = |kind: &str, ns: Option<&str>| {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
        ));
        match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(sim.admin.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(sim.admin.clone(), &ar),
        }
    };
    let create = async |api: Api<DynamicObject>, obj: Value| {
        let obj: DynamicObject = from(obj);
        within(
            "create an RBAC object",
            api.create(&PostParams::default(), &obj),
        )
        .await
        .unwrap_or_else(|e| panic!("creating RBAC object: {e}"));
    };
    create(rbac("Role", Some("default")), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})).await;
    create(rbac("RoleBinding", Some("default")), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "devs-read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}]})).await;
    within("list", pods.list(&ListParams::default()))
        .await
        .expect("a RoleBinding to alice's group grants list");
    let s = status(
        "alice deleting a pod",
        within("delete", pods.delete("web", &DeleteParams::default())).await,
    );
    assert_status("alice deleting a pod (not granted)", &s, 403, "Forbidden");
    let s = status(
        "alice patching pod status",
        within(
            "patch",
            pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({}))),
        )
        .await,
    );
    assert_status("pods does not grant pods/status", &s, 403, "Forbidden");
    let s = status(
        "alice listing pods in all namespaces",
        within(
            "list",
            Api::<Pod>::all(alice.clone()).list(&ListParams::default()),
        )
        .await,
    );
    assert_status(
        "a RoleBinding does not grant cluster-wide lists",
        &s,
        403,
        "Forbidden",
    );

    create(rbac("ClusterRole", None), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "slot-0"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"], "resourceNames": ["slot-0"]},
                  {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]})).await;
    create(rbac("ClusterRoleBinding", None), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "alice-slot-0"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "slot-0"},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})).await;
    within(
        "admin create",
        Api::<Lease>::namespaced(sim.admin.clone(), "default")
            .create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("admin creates the lease");
    let leases: Api<Lease> = Api::namespaced(alice.clone(), "default");
    within("get", leases.get("slot-0"))
        .await
        .expect("resourceNames grants the named lease");
    let s = status(
        "alice getting another lease",
        within("get", leases.get("slot-1")).await,
    );
    assert_status(
        "resourceNames does not grant other names",
        &s,
        403,
        "Forbidden",
    );
    within(
        "patch",
        pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({}))),
    )
    .await
    .expect("pods/status granted by the ClusterRole");
}

#[tokio::test]
async fn tables_print_columns_for_kubectl() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create");
    let status_patch = Patch::Merge(
        json!({"status": {"count": 3, "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    within(
        "status",
        widgets.patch_status("w1", &PatchParams::default(), &status_patch),
    )
    .await
    .expect("patch status");

    let table = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/example.dev/v1/namespaces/default/widgets",
            Some(TABLE),
            None,
        )
        .await
        .expect("a Table");
    assert_eq!(
        (table["kind"].as_str(), table["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1")),
        "{table}"
    );
    let columns: Vec<(&str, i64)> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Size", 0),
            ("Count", 0),
            ("Ready", 0),
            ("Wide", 1),
            ("Age", 0)
        ],
        "Name + the CRD's printer columns"
    );
    let row = &table["rows"][0];
    let cells = row["cells"].as_array().expect("cells");
    assert_eq!(
        cells[..5],
        [json!("w1"), json!("s"), json!(3), json!("True"), json!("s")],
        "cells from the JSONPaths: {row}"
    );
    let age = cells[5].as_str().unwrap_or_default();
    assert!(
        age.ends_with('s') && age[..age.len() - 1].parse::<u64>().is_ok(),
        "a date column renders as an age like 5s: {age:?}"
    );
    assert_eq!(
        row["object"]["kind"], "PartialObjectMetadata",
        "rows carry the object's metadata by default"
    );
    assert_eq!(row["object"]["metadata"]["name"], "w1");

    let one = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/example.dev/v1/namespaces/default/widgets/w1?includeObject=Object",
            Some(TABLE),
            None,
        )
        .await
        .expect("a Table for one");
    assert_eq!(
        one["rows"].as_array().map(Vec::len),
        Some(1),
        "a single get gives one row"
    );
    assert_eq!(
        one["rows"][0]["object"]["kind"], "Widget",
        "includeObject=Object embeds the object"
    );

    sim.running_pod("default", "web", "n1").await;
    let pods = sim
        .raw(
            &sim.admin,
            "GET",
            "/api/v1/namespaces/default/pods",
            Some(TABLE),
            None,
        )
        .await
        .expect("pod table");
    let columns: Vec<(&str, i64)> = pods["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1)
        ]
    );
    assert_eq!(pods["rows"][0]["cells"][2], "Running");
    assert_eq!(pods["rows"][0]["cells"][6], "n1", "the wide NODE column");

    within(
        "lease",
        Api::<Lease>::namespaced(sim.admin.clone(), "default")
            .create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("lease");
    let leases = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            Some(TABLE),
            None,
        )
        .await
        .expect("lease table");
    assert_eq!(
        leases["rows"][0]["cells"]
            .as_array()
            .map(|c| &c[..2])
            .unwrap_or_default(),
        [json!("slot-0"), json!("n1")],
        "NAME HOLDER AGE: {leases}"
    );
}

#[tokio::test]
async fn discovery_serves_builtins_and_crd_defined_types() {
    let sim = Sim::start().await;
    let core = sim
        .raw(&sim.admin, "GET", "/api/v1", None, None)
        .await
        .expect("/api/v1");
    let names: Vec<&str> = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in ["pods", "pods/status", "nodes", "namespaces", "events"] {
        assert!(names.contains(&want), "/api/v1 lists {want}: {names:?}");
    }
    let gvk = GroupVersionKind::gvk("example.dev", "v1", "Widget");
    let before = within("discovery", kube::Discovery::new(sim.admin.clone()).run())
        .await
        .expect("discovery runs");
    assert!(
        before.resolve_gvk(&gvk).is_none(),
        "no Widget before its CRD"
    );
    sim.widget_crd().await;
    let after = within("discovery", kube::Discovery::new(sim.admin.clone()).run())
        .await
        .expect("discovery runs");
    let (ar, caps) = after
        .resolve_gvk(&gvk)
        .expect("the CRD-defined Widget is discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let group = sim
        .raw(&sim.admin, "GET", "/apis/example.dev/v1", None, None)
        .await
        .expect("group version");
    assert!(
        group.to_string().contains("widgets/status"),
        "the status subresource is listed: {group}"
    );
    let aggregated =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let apis = sim
        .raw(&sim.admin, "GET", "/apis", Some(aggregated), None)
        .await
        .expect("/apis");
    assert_eq!(
        apis["kind"], "APIGroupList",
        "aggregated discovery requests get the plain form"
    );
    for path in ["/healthz", "/readyz", "/livez"] {
        let ok = within(
            path,
            sim.admin
                .request_text(http::Request::get(path).body(vec![]).expect("request")),
        )
        .await
        .expect("health");
        assert_eq!(ok, "ok", "{path}");
    }
}

#[tokio::test]
async fn faults_fail_delay_and_partition() {
    let sim = Sim::start().await;
    let faults = sim.server.faults();
    let admin = sim.client_without_retries(ADMIN, "admin").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "default");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create");

    faults.set_error_rate(Verb::Get, 1.0);
    let s = status(
        "a get with error rate 1.0",
        within("get", leases.get("slot-0")).await,
    );
    assert_status("a get with error rate 1.0", &s, 503, "ServiceUnavailable");
    assert!(
        s.message.contains("injected"),
        "the 503 says it is injected: {}",
        s.message
    );
    within("list", leases.list(&ListParams::default()))
        .await
        .expect("other verbs unaffected");
    faults.clear();
    within("get", leases.get("slot-0")).await.expect("cleared");

    faults.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    within("get", leases.get("slot-0"))
        .await
        .expect("get with latency");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "latency added: took {:?}",
        started.elapsed()
    );
    faults.clear();

    // A partitioned user's requests fail at the connection; others' do not; its watches end.
    sim.running_pod("default", "nginx-n1", "n1").await;
    let node1 = sim.client(NODE1, "system:node:n1").await;
    let n1_pods: Api<Pod> = Api::namespaced(node1.clone(), "default");
    let mut watch = within(
        "watch",
        n1_pods.watch(&WatchParams::default().timeout(120), "0"),
    )
    .await
    .expect("n1 watches")
    .boxed();
    assert!(matches!(
        next_event("n1's initial ADDED", &mut watch).await,
        WatchEvent::Added(_)
    ));
    faults.partition("system:node:n1");
    loop {
        match within("n1's watch to end after the partition", watch.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(Ok(other)) => panic!("expected n1's watch to end, got {other:?}"),
        }
    }
    match within("a partitioned get", n1_pods.get("nginx-n1")).await {
        Err(kube::Error::Api(s)) => panic!("a partition gives no HTTP answer, got {s:?}"),
        Err(_) => {}
        Ok(_) => panic!("a partitioned user's request succeeded"),
    }
    within("admin get", sim.pods("default").get("nginx-n1"))
        .await
        .expect("other users are not partitioned");
    faults.heal("system:node:n1");
    eventually("n1 to reach the server after heal", STEP, || async {
        n1_pods.get("nginx-n1").await.map_err(|e| e.to_string())
    })
    .await;
    let counts = sim.server.requests_by_user();
    assert!(
        counts.get("system:node:n1").copied().unwrap_or(0) >= 2,
        "requests counted per user: {counts:?}"
    );
    assert!(
        counts.get("admin").copied().unwrap_or(0) >= 5,
        "requests counted per user: {counts:?}"
    );
}

#[tokio::test]
async fn the_faults_admin_endpoint_is_for_cluster_admins() {
    let sim = Sim::start().await;
    let set = json!({"errorRate": {"list": 1.0}, "latencyMs": 5, "partition": ["bob"]});
    let shown = sim
        .raw(&sim.admin, "POST", "/sim/faults", None, Some(set))
        .await
        .expect("admin sets faults");
    assert_eq!(shown["errorRate"]["list"], 1.0, "{shown}");
    assert_eq!(shown["partitioned"], json!(["bob"]), "{shown}");
    let quiet = sim.client_without_retries(ADMIN, "admin").await;
    let s = status(
        "a list with the list error rate at 1.0",
        within("list", Api::<Pod>::all(quiet).list(&ListParams::default())).await,
    );
    assert_status(
        "a list with the list error rate at 1.0",
        &s,
        503,
        "ServiceUnavailable",
    );
    let shown = sim
        .raw(&sim.admin, "GET", "/sim/faults", None, None)
        .await
        .expect("admin reads faults");
    assert_eq!(shown["latencyMs"], 5, "{shown}");
    let bad = sim
        .raw(
            &sim.admin,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"errorRate": {"gett": 1.0}})),
        )
        .await;
    assert_status(
        "an unknown verb",
        &status("an unknown verb", bad),
        400,
        "BadRequest",
    );
    let cleared = sim
        .raw(
            &sim.admin,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"clear": true})),
        )
        .await
        .expect("clear");
    assert_eq!(cleared["partitioned"], json!([]), "{cleared}");

    let alice = sim.client(ALICE, "alice").await;
    let s = status(
        "alice setting faults",
        sim.raw(
            &alice,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"clear": true})),
        )
        .await,
    );
    assert_status("alice setting faults", &s, 403, "Forbidden");
}
