//! Conformance of the dev cluster with the API server semantics the agent relies on, driven
//! through `kube::Client` over HTTPS. Each test starts its own cluster in a temporary directory.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{ClusterResourceScope, NamespaceResourceScope, ObjectList};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use staticpod_puller::resources::{self, StaticPod};
use staticpod_puller::sim::apiserver::{Identity, Verb};
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
const NODE: &str = "edge-node-1";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";
const RBAC: &str = "rbac.authorization.k8s.io";

/// A running dev cluster, its directory, and a cluster-admin client.
struct Env {
    cluster: DevCluster,
    admin: Client,
    _dir: tempfile::TempDir,
}

async fn start(nodes: usize) -> Env {
    start_with(nodes, |_| {}).await
}

async fn start_with(nodes: usize, tweak: impl FnOnce(&mut DevClusterOptions)) -> Env {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut options = DevClusterOptions::new(dir.path(), nodes);
    tweak(&mut options);
    let cluster = DevCluster::start(options).await;
    let cluster = cluster.expect("the dev cluster starts");
    let admin = client(cluster.admin_kubeconfig()).await;
    let _dir = dir;
    Env {
        cluster,
        admin,
        _dir,
    }
}

/// A client from a kubeconfig file, without kube's default retries of 503s (15 attempts with
/// exponential backoff: they would hide injected faults for minutes).
async fn client(path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("a readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await;
    let mut config = config.expect("a valid kubeconfig");
    config.default_retry = false;
    Client::try_from(config).expect("a client")
}

impl Env {
    /// A client authenticating with a new token as `user` in `groups`.
    async fn client_as(&self, user: &str, groups: &[&str]) -> Client {
        let token = format!("token-{}", user.replace(':', "-"));
        let groups = groups.iter().map(|g| g.to_string()).collect();
        let user = user.to_string();
        let identity = Identity {
            user: user.clone(),
            groups,
        };
        self.cluster.api().add_token(&token, identity);
        self.client_with_token(&token, &user).await
    }

    async fn client_with_token(&self, token: &str, user: &str) -> Client {
        let path = self.cluster.dir().join(format!("{token}.kubeconfig"));
        let kubeconfig = self.cluster.api().kubeconfig(token, user);
        std::fs::write(&path, kubeconfig).expect("writing a kubeconfig");
        client(&path).await
    }

    /// The admin's API for a namespaced type in `ns`.
    fn ns<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.admin.clone(), ns)
    }

    /// The admin's API for a cluster-scoped type.
    fn all<K>(&self) -> Api<K>
    where
        K: Resource<Scope = ClusterResourceScope, DynamicType = ()>,
    {
        Api::all(self.admin.clone())
    }

    fn pods(&self) -> Api<Pod> {
        self.ns("default")
    }

    fn install_crds(&self) {
        let crds = resources::crds().iter().map(|c| json!(c)).collect();
        let crds: Vec<Value> = crds;
        self.cluster.apply(&crds).expect("the CRDs are created");
    }
}

fn obj<K: DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).expect("a valid object")
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let created = api.create(&PostParams::default(), &obj(v)).await;
    created.expect("create")
}

fn pod(name: &str, node: &str, labels: Value) -> Value {
    let containers = json!([{"name": "web", "image": "nginx:1.19.1"}]);
    json!({"metadata": {"name": name, "labels": labels},
           "spec": {"nodeName": node, "containers": containers}})
}

fn named(name: &str) -> Value {
    json!({"metadata": {"name": name}})
}

fn rv<K: ResourceExt>(o: &K) -> u64 {
    let rv = o.resource_version().and_then(|v| v.parse().ok());
    rv.unwrap_or_else(|| panic!("{} has no numeric resourceVersion", o.name_any()))
}

fn list_rv<K: Clone>(list: &ObjectList<K>) -> u64 {
    let rv = list.metadata.resource_version.as_deref();
    rv.and_then(|v| v.parse().ok())
        .expect("a list resourceVersion")
}

fn annotation<'a, K: ResourceExt>(o: &'a K, key: &str) -> Option<&'a str> {
    o.annotations().get(key).map(String::as_str)
}

fn label<'a, K: ResourceExt>(o: &'a K, key: &str) -> Option<&'a str> {
    o.labels().get(key).map(String::as_str)
}

/// "ok", or the code and reason of an API error ("409 Conflict"), or the error.
fn outcome<T>(r: Result<T, kube::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(kube::Error::Api(s)) => format!("{} {}", s.code, s.reason),
        Err(e) => format!("error: {e}"),
    }
}

fn expect_ok<T: Debug>(what: &str, r: Result<T, kube::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected success, saw {e:?}"))
}

/// Poll `check` until it returns Ok or the deadline passes; the panic says what was awaited
/// and the last thing seen.
async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// The next item of a stream, within `WAIT`.
async fn next<S: Stream + Unpin>(what: &str, s: &mut S) -> S::Item {
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing within {WAIT:?}"),
    }
}

fn names<K: ResourceExt>(items: &[K]) -> BTreeSet<String> {
    items.iter().map(|o| o.name_any()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A pod's conditions as `type=status`.
fn conditions(pod: &Pod) -> Vec<String> {
    let status = pod.status.as_ref();
    let list = status.and_then(|s| s.conditions.as_ref());
    let list = list.into_iter().flatten();
    list.map(|c| format!("{}={}", c.type_, c.status)).collect()
}

fn has_condition(pod: &Pod, want: &str) -> bool {
    conditions(pod).iter().any(|c| c == want)
}

fn is_ready(p: &Pod) -> bool {
    has_condition(p, "Ready=True")
}

fn config_hash(p: &Pod) -> String {
    let hash = annotation(p, "kubernetes.io/config.hash");
    hash.unwrap_or_default().to_string()
}

/// Wait until pod `name` exists and satisfies `ok`.
async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
    let what = format!("pod {name} {what}");
    wait_until(&what, WAIT, async || match pods.get_opt(name).await {
        Ok(Some(p)) if ok(&p) => Ok(p),
        Ok(Some(p)) => Err(format!("{:?}; {:?}", p.annotations(), p.status)),
        Ok(None) => Err("no such pod".into()),
        Err(e) => Err(e.to_string()),
    })
    .await
}

fn manifest(name: &str, image: &str) -> String {
    let containers = format!("  containers:\n  - name: web\n    image: {image}\n");
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{containers}")
}

/// Write a manifest as the agent does: a dot-prefixed temporary file renamed into place.
fn write_manifest(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("writing a manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("renaming a manifest into place");
}

/// A plain-HTTP GET of a JSON document, as a raw HTTP/1.0 request.
async fn http_get_json(url: &str) -> Value {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (addr, path) = rest.split_once('/').expect("a URL with a path");
    let stream = tokio::net::TcpStream::connect(addr).await;
    let mut stream = stream.expect("connecting");
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("receive");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and a body");
    assert!(head.contains(" 200 "), "GET {url}: {head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// A raw GET through the client (same TLS and token), with an optional Accept header.
async fn raw_get(client: &Client, path: &str, accept: Option<&str>) -> Value {
    let mut request = http::Request::get(path);
    if let Some(accept) = accept {
        request = request.header(http::header::ACCEPT, accept);
    }
    let request = request.body(Vec::new()).unwrap();
    let text = expect_ok(path, client.request_text(request).await);
    serde_json::from_str(&text).expect("a JSON answer")
}

/// The string field `field` of every item of the array `v`.
fn strings(v: &Value, field: &str) -> Vec<String> {
    let items = v.as_array().into_iter().flatten();
    let strings = items.filter_map(|c| c[field].as_str());
    strings.map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_one_increasing_resource_version_across_types() {
    let env = start(0).await;
    let (pods, pp, dp) = (env.pods(), PostParams::default(), DeleteParams::default());
    let leases: Api<Lease> = env.ns("default");
    let namespaces: Api<Namespace> = env.all();

    let p = create(&pods, pod("p", NODE, json!({}))).await;
    let l = create(&leases, named("l")).await;
    let ns = create(&namespaces, named("team-a")).await;
    let rvs = [rv(&p), rv(&l), rv(&ns)];
    let increasing = rvs[0] < rvs[1] && rvs[1] < rvs[2];
    assert!(increasing, "expected pod < lease < namespace rvs: {rvs:?}");

    let mut got = pods.get("p").await.unwrap();
    assert_eq!(rv(&got), rv(&p), "a get returns the stored rv");
    got.labels_mut().insert("app".into(), "web".into());
    let updated = pods.replace("p", &pp, &got).await.unwrap();
    assert_eq!(rv(&updated), rvs[2] + 1, "an update takes the next rv");
    assert_eq!(label(&updated, "app"), Some("web"));
    let same = pods.replace("p", &pp, &updated).await.unwrap();
    assert_eq!(rv(&same), rv(&updated), "a no-op update keeps the rv");

    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list_rv(&list), rv(&updated), "a list has the store's rv");
    assert_eq!(names(&list.items), set(&["p"]));

    pods.delete("p", &dp).await.unwrap();
    assert_eq!(outcome(pods.get("p").await), "404 NotFound");
    leases.delete("l", &dp).await.unwrap();
    namespaces.delete("team-a", &dp).await.unwrap();
    let after = create(&pods, pod("q", NODE, json!({}))).await;
    assert_eq!(rv(&after), rv(&updated) + 4, "3 deletes, 1 create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_already_exists_and_not_found() {
    let env = start(0).await;
    let (pods, pp) = (env.pods(), PostParams::default());
    let stale = create(&pods, pod("p", NODE, json!({}))).await;
    let mut first = stale.clone();
    first.labels_mut().insert("a".into(), "1".into());
    pods.replace("p", &pp, &first).await.unwrap();
    let mut second = stale;
    second.labels_mut().insert("b".into(), "2".into());
    let replaced = pods.replace("p", &pp, &second).await;
    assert_eq!(outcome(replaced), "409 Conflict", "a stale update");
    let again: Pod = obj(pod("p", NODE, json!({})));
    let created = pods.create(&pp, &again).await;
    assert_eq!(outcome(created), "409 AlreadyExists", "a second create");
    match pods.get("missing").await {
        Err(kube::Error::Api(s)) => {
            let seen = (s.code, s.reason.as_str(), s.is_failure());
            assert_eq!(seen, (404, "NotFound", true), "{s:?}");
            let message = s.message.contains("\"missing\" not found");
            assert!(message, "Status message: {s:?}");
            let details = s.details.expect("a Status with details");
            let seen = (details.name.as_str(), details.kind.as_str());
            assert_eq!(seen, ("missing", "pods"), "Status details");
        }
        other => panic!("get of a missing pod: expected 404 NotFound, saw {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_and_status_subresource() {
    let env = start(0).await;
    env.install_crds();
    let sps: Api<StaticPod> = env.ns("default");
    let pp = PatchParams::default();
    let containers = json!([{"name": "web", "image": "nginx:1.19.1"}]);
    let template = json!({"spec": {"containers": containers}});
    let spec = json!({"staticPodManifest": "nginx", "template": template});
    let sp = json!({"apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
                    "metadata": {"name": "nginx"}, "spec": spec, "status": {"totalNumber": 9}});
    let created = create(&sps, sp).await;
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.status, None, "create must ignore status");

    let labels = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    let labelled = sps.patch("nginx", &pp, &labels).await.unwrap();
    let seen = (rv(&labelled) > rv(&created), labelled.metadata.generation);
    assert_eq!(
        seen,
        (true, Some(1)),
        "a metadata change: (new rv, generation)"
    );

    let both = json!({"spec": {"staticPodManifest": "other"}, "status": {"totalNumber": 3}});
    let status = sps.patch_status("nginx", &pp, &Patch::Merge(both)).await;
    let status = status.unwrap();
    let total = status.status.as_ref().map(|s| s.total_number);
    let manifest = status.spec.static_pod_manifest.as_str();
    let seen = (status.metadata.generation, total, manifest);
    let want = (Some(1), Some(3), "nginx");
    assert_eq!(seen, want, "a status write: (generation, status, spec)");

    let mut sp = status.clone();
    sp.spec.static_pod_manifest = "nginx2".into();
    sp.status.as_mut().unwrap().total_number = 7;
    let replaced = sps.replace("nginx", &PostParams::default(), &sp).await;
    let replaced = replaced.unwrap();
    let total = replaced.status.as_ref().map(|s| s.total_number);
    let manifest = replaced.spec.static_pod_manifest.as_str();
    let seen = (replaced.metadata.generation, total, manifest);
    let want = (Some(2), Some(3), "nginx2");
    assert_eq!(seen, want, "a spec write: (generation, status, spec)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_label_and_field_selectors() {
    let env = start(0).await;
    create(&env.all::<Namespace>(), named("other")).await;
    let other: Api<Pod> = env.ns("other");
    create(&env.pods(), pod("a", "n1", json!({"app": "web"}))).await;
    create(&env.pods(), pod("b", "n2", json!({"app": "db"}))).await;
    let edge = json!({"app": "web", "tier": "edge"});
    create(&other, pod("c", "n1", edge)).await;
    let all: Api<Pod> = Api::all(env.admin.clone());
    let cases: [(&Api<Pod>, &str, &str, &[&str]); 9] = [
        (&all, "app=web", "", &["a", "c"]),
        (&all, "app in (web,db),!tier", "", &["a", "b"]),
        (&all, "app!=web", "", &["b"]),
        (&all, "", "metadata.name=b", &["b"]),
        (&all, "", "metadata.namespace=other", &["c"]),
        (&all, "", "spec.nodeName=n1", &["a", "c"]),
        (&all, "", "spec.nodeName!=n1", &["b"]),
        (&all, "app=web", "metadata.namespace=default", &["a"]),
        (&other, "", "spec.nodeName=n2", &[]),
    ];
    for (api, labels, fields, want) in cases {
        let lp = ListParams::default().labels(labels).fields(fields);
        let got = names(&api.list(&lp).await.unwrap().items);
        assert_eq!(got, set(want), "labels {labels:?} fields {fields:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_resource_version_and_expires_with_410() {
    let env = start_with(0, |o| o.history = 5).await;
    let (pods, wp) = (env.pods(), WatchParams::default());
    let from = pods.list(&ListParams::default()).await.unwrap();
    let from = list_rv(&from).to_string();
    for name in ["p1", "p2", "p3"] {
        create(&pods, pod(name, NODE, json!({}))).await;
    }
    let mut stream = Box::pin(pods.watch(&wp, &from).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        match next("a watch resumed from before p1", &mut stream).await {
            Ok(WatchEvent::Added(p)) => seen.push(p.name_any()),
            other => panic!("expected ADDED events after {from}, saw {other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen, ["p1", "p2", "p3"], "the changes after {from}");
    drop(stream);

    for i in 4..10 {
        create(&pods, pod(&format!("p{i}"), NODE, json!({}))).await;
    }
    let mut stream = Box::pin(pods.watch(&wp, &from).await.unwrap());
    match next("a watch from a compacted resourceVersion", &mut stream).await {
        Ok(WatchEvent::Error(s)) if s.code == 410 => {}
        other => panic!("watch from {from}: expected an ERROR event with 410, saw {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_bookmarks_when_asked() {
    let env = start(0).await;
    let pods = env.pods();
    let from = pods.list(&ListParams::default()).await.unwrap();
    let from = list_rv(&from);
    let wp = WatchParams::default();
    assert!(wp.bookmarks, "kube's default WatchParams ask for bookmarks");
    let stream = pods.watch(&wp, &from.to_string()).await.unwrap();
    let mut stream = Box::pin(stream);
    match next("a bookmark (sent every 5 s)", &mut stream).await {
        Ok(WatchEvent::Bookmark(b)) => {
            let at: u64 = b.metadata.resource_version.parse().unwrap();
            assert!(at >= from, "bookmark rv {at} < the watch's {from}");
        }
        other => panic!("expected a BOOKMARK, saw {other:?}"),
    }
}

/// Read watcher events until one is described as one of `want`; `seen` keeps them all.
async fn expect_event<S>(s: &mut S, want: &[&str], seen: &mut Vec<String>)
where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let event = match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(e)) => e,
            _ => panic!("watcher: expected {want:?}, saw {seen:?}"),
        };
        seen.push(match event {
            Ok(watcher::Event::Apply(p)) => format!("Apply({})", p.name_any()),
            Ok(watcher::Event::InitApply(p)) => format!("InitApply({})", p.name_any()),
            Ok(watcher::Event::Delete(p)) => format!("Delete({})", p.name_any()),
            Ok(watcher::Event::Init) => "Init".into(),
            Ok(watcher::Event::InitDone) => "InitDone".into(),
            Err(e) => format!("Err({e})"),
        });
        if want.iter().any(|w| seen.last().is_some_and(|s| s == w)) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_sees_changes_and_rewatches_after_close() {
    let env = start(0).await;
    let pods = env.pods();
    let on_node = format!("spec.nodeName={NODE}");
    let config = watcher::Config::default().fields(&on_node);
    let mut events = Box::pin(watcher(pods.clone(), config));
    let seen = &mut Vec::new();
    expect_event(&mut events, &["InitDone"], seen).await;
    create(&pods, pod("elsewhere", "edge-node-2", json!({}))).await;
    create(&pods, pod("p1", NODE, json!({}))).await;
    expect_event(&mut events, &["Apply(p1)"], seen).await;
    let elsewhere = seen.iter().any(|s| s.contains("elsewhere"));
    assert!(!elsewhere, "the field selector let through: {seen:?}");
    let patch = Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}}));
    let pp = PatchParams::default();
    pods.patch("p1", &pp, &patch).await.unwrap();
    expect_event(&mut events, &["Apply(p1)"], seen).await;
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    expect_event(&mut events, &["Delete(p1)"], seen).await;

    env.cluster.api().faults().close_watches();
    create(&pods, pod("p2", NODE, json!({}))).await;
    let p2 = ["Apply(p2)", "InitApply(p2)"];
    expect_event(&mut events, &p2, seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_json_and_strategic_merge_patches() {
    let env = start(1).await;
    let dir = &env.cluster.nodes()[0].manifest_dir;
    write_manifest(dir, "nginx.yaml", &manifest("nginx", "nginx:1.19.1"));
    let (pods, pp) = (env.pods(), PatchParams::default());
    let name = format!("nginx-{NODE}");
    wait_pod(&pods, &name, "Ready", is_ready).await;

    let labels = json!({"metadata": {"labels": {"tier": "edge"}}});
    let merged = pods.patch(&name, &pp, &Patch::Merge(labels)).await;
    assert_eq!(label(&merged.unwrap(), "tier"), Some("edge"));
    let path = "/metadata/annotations/example.com~1note";
    let ops = json!([{"op": "add", "path": path, "value": "hi"}]);
    let ops = Patch::Json::<()>(obj(ops));
    let patched = pods.patch(&name, &pp, &ops).await.unwrap();
    assert_eq!(annotation(&patched, "example.com/note"), Some("hi"));
    let hash = annotation(&patched, "kubernetes.io/config.hash");
    assert!(hash.is_some(), "the JSON patch lost the other annotations");

    let need = json!({"type": "PodNeedUpgrade", "status": "True"});
    let strategic = json!({"status": {"conditions": [need]}});
    let strategic = Patch::Strategic(strategic);
    let patched = pods.patch_status(&name, &pp, &strategic).await;
    let seen = conditions(&patched.unwrap());
    let kept = ["PodNeedUpgrade=True", "Ready=True"];
    let kept = kept.iter().all(|c| seen.iter().any(|s| s == c));
    assert!(
        kept,
        "strategic merge patch: want PodNeedUpgrade and Ready, saw {seen:?}"
    );
    let again = pods.get(&name).await.unwrap();
    assert!(has_condition(&again, "PodNeedUpgrade=True"), "{again:?}");

    let only = json!({"type": "PodNeedUpgrade", "status": "False"});
    let merge = Patch::Merge(json!({"status": {"conditions": [only]}}));
    let merged = pods.patch_status(&name, &pp, &merge).await;
    let seen = conditions(&merged.unwrap());
    assert_eq!(
        seen,
        ["PodNeedUpgrade=False"],
        "a merge patch replaces lists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_node_restriction() {
    let env = start(0).await;
    let nobody = env.client_with_token("not-a-token", "nobody").await;
    let listed = Api::<Pod>::all(nobody).list(&ListParams::default()).await;
    assert_eq!(outcome(listed), "401 Unauthorized", "an unknown token");

    create(&env.pods(), pod("mine", NODE, json!({}))).await;
    create(&env.pods(), pod("theirs", "edge-node-2", json!({}))).await;
    let groups = ["system:nodes", "system:authenticated"];
    let user = format!("system:node:{NODE}");
    let node = env.client_as(&user, &groups).await;
    let pods: Api<Pod> = Api::namespaced(node.clone(), "default");
    let pp = PatchParams::default();
    let condition = json!({"type": "PodNeedUpgrade", "status": "True"});
    let status = json!({"status": {"conditions": [condition]}});
    let status = Patch::Strategic(status);
    let mine = pods.patch_status("mine", &pp, &status).await;
    assert_eq!(outcome(mine), "ok", "a node patching its pod's status");
    let theirs = pods.patch_status("theirs", &pp, &status).await;
    assert_eq!(outcome(theirs), "403 Forbidden", "another node's pod");

    let post = PostParams::default();
    for (ns, want) in [("default", "403 Forbidden"), ("kube-node-lease", "ok")] {
        let spec = json!({"holderIdentity": NODE});
        let lease = json!({"metadata": {"name": NODE}, "spec": spec});
        let leases = Api::<Lease>::namespaced(node.clone(), ns);
        let created = leases.create(&post, &obj(lease)).await;
        assert_eq!(outcome(created), want, "a node creating a Lease in {ns}");
    }
}

/// A binding of `role` (Role or ClusterRole) to a subject (User or Group).
fn binding(name: &str, role: (&str, &str), subject: (&str, &str)) -> Value {
    let role_ref = json!({"apiGroup": RBAC, "kind": role.0, "name": role.1});
    let subject = json!({"kind": subject.0, "apiGroup": RBAC, "name": subject.1});
    json!({"metadata": {"name": name}, "roleRef": role_ref, "subjects": [subject]})
}

/// A role allowing `verbs` on `resources` of `group`.
fn role(name: &str, group: &str, resources: &str, verbs: &[&str]) -> Value {
    let rule = json!({"apiGroups": [group], "resources": [resources], "verbs": verbs});
    json!({"metadata": {"name": name}, "rules": [rule]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_for_plain_users_and_groups() {
    let env = start(0).await;
    let lp = ListParams::default();
    let alice = env.client_as("alice", &["system:authenticated"]).await;
    let alice_pods: Api<Pod> = Api::namespaced(alice.clone(), "default");
    let unbound = outcome(alice_pods.list(&lp).await);
    assert_eq!(unbound, "403 Forbidden", "alice with no bindings");

    let reader = role("pod-reader", "", "pods", &["get", "list"]);
    create(&env.ns::<Role>("default"), reader).await;
    let bound = binding("alice", ("Role", "pod-reader"), ("User", "alice"));
    create(&env.ns::<RoleBinding>("default"), bound).await;
    let listed = outcome(alice_pods.list(&lp).await);
    assert_eq!(listed, "ok", "alice with a RoleBinding");
    let system = Api::<Pod>::namespaced(alice, "kube-system");
    let elsewhere = outcome(system.list(&lp).await);
    assert_eq!(elsewhere, "403 Forbidden", "alice in another namespace");
    let x: Pod = obj(pod("x", NODE, json!({})));
    let created = alice_pods.create(&PostParams::default(), &x).await;
    assert_eq!(outcome(created), "403 Forbidden", "alice creating a pod");

    let groups = ["auditors", "system:authenticated"];
    let bob = env.client_as("bob", &groups).await;
    let bob_leases: Api<Lease> = Api::namespaced(bob, "kube-node-lease");
    let unbound = outcome(bob_leases.list(&lp).await);
    assert_eq!(unbound, "403 Forbidden", "bob with no bindings");
    let group = "coordination.k8s.io";
    let reader = role("lease-reader", group, "leases", &["list"]);
    create(&env.all::<ClusterRole>(), reader).await;
    let role_ref = ("ClusterRole", "lease-reader");
    let bound = binding("auditors", role_ref, ("Group", "auditors"));
    create(&env.all::<ClusterRoleBinding>(), bound).await;
    let listed = outcome(bob_leases.list(&lp).await);
    assert_eq!(
        listed, "ok",
        "a member of a group with a ClusterRoleBinding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_and_discovery_for_the_crds() {
    let env = start(0).await;
    env.install_crds();
    let containers = json!([{"name": "web", "image": "nginx"}]);
    let template = json!({"spec": {"containers": containers}});
    let spec = json!({"staticPodManifest": "nginx", "template": template});
    let group = "apps.openyurt.io";
    for (kind, plural) in [
        ("StaticPod", "staticpods"),
        ("YurtStaticSet", "yurtstaticsets"),
    ] {
        let gvk = GroupVersionKind::gvk(group, "v1alpha1", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api = Api::<DynamicObject>::namespaced_with(env.admin.clone(), "default", &ar);
        let meta = json!({"name": "nginx"});
        let sp =
            json!({"apiVersion": ar.api_version, "kind": kind, "metadata": meta, "spec": spec});
        create(&api, sp).await;
        let listed = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(names(&listed.items), set(&["nginx"]), "{plural}");
    }

    let path = "/apis/apps.openyurt.io/v1alpha1/namespaces/default/staticpods";
    let table = raw_get(&env.admin, path, Some(TABLE)).await;
    assert_eq!(table["kind"], "Table", "{table}");
    let columns = strings(&table["columnDefinitions"], "name");
    let want = [
        "Name",
        "Age",
        "TotalNumber",
        "ReadyNumber",
        "UpgradedNumber",
        "Failed",
        "Phase",
    ];
    assert_eq!(columns, want, "StaticPod table columns");
    // OpenYurt's columns by default; the rollout's only with `-o wide` (priority 1).
    let priorities: Vec<i64> = table["columnDefinitions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["priority"].as_i64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(priorities, [0, 0, 0, 0, 0, 1, 1], "column priorities");
    let cells = table["rows"][0]["cells"].as_array().cloned();
    let cells = cells.unwrap_or_default();
    assert_eq!((cells.len(), &cells[0]), (7, &json!("nginx")), "the row");

    let path = "/apis/apps.openyurt.io/v1alpha1";
    let discovery = raw_get(&env.admin, path, None).await;
    let served = strings(&discovery["resources"], "name");
    let want = ["staticpods", "staticpods/status", "yurtstaticsets"];
    for want in want {
        let found = served.iter().any(|s| s == want);
        assert!(found, "discovery: expected {want}, saw {served:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_errors_latency_partitions_and_counts() {
    let env = start(0).await;
    let (faults, pods) = (env.cluster.api().faults(), env.pods());
    create(&pods, pod("p", NODE, json!({}))).await;
    faults.set_error_rate(Verb::Get, 1.0);
    let got = outcome(pods.get("p").await);
    assert_eq!(got, "503 ServiceUnavailable", "get at error rate 1.0");
    let listed = pods.list(&ListParams::default()).await;
    let listed = expect_ok("list while gets fail", listed);
    assert_eq!(names(&listed.items), set(&["p"]));
    faults.clear();
    assert_eq!(outcome(pods.get("p").await), "ok", "get after clear()");

    faults.set_latency(Duration::from_millis(300));
    let t = Instant::now();
    expect_ok("get with latency", pods.get("p").await);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    faults.clear();

    let bob = env.client_as("bob", &["system:masters"]).await;
    let bob: Api<Pod> = Api::namespaced(bob, "default");
    assert_eq!(
        outcome(bob.get("p").await),
        "ok",
        "bob before the partition"
    );
    faults.partition("bob");
    let cut = outcome(bob.get("p").await);
    assert!(
        cut.starts_with("error:"),
        "partitioned: want a connection error: {cut}"
    );
    let admin = outcome(pods.get("p").await);
    assert_eq!(admin, "ok", "the admin while bob is partitioned");
    faults.heal("bob");
    let mut bob_served = 1;
    wait_until("bob's get to succeed after heal", WAIT, async || {
        let got = bob.get("p").await.map_err(|e| e.to_string());
        got.map(|_| bob_served += 1)
    })
    .await;
    let counts = env.cluster.api().requests_by_user();
    let served = (counts.get("bob"), counts.get("admin"));
    // admin: create, get (503), list, get, get (latency), get (during bob's partition)
    assert_eq!(
        served,
        (Some(&bob_served), Some(&6)),
        "(bob, admin) requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_mirrors_manifest_files_and_ignores_dot_files() {
    let env = start(1).await;
    let node = &env.cluster.nodes()[0];
    let hidden = manifest("hidden", "nginx:1.19.1");
    std::fs::write(node.manifest_dir.join(".hidden.yaml"), hidden).unwrap();
    let nginx = manifest("nginx", "nginx:1.19.1");
    write_manifest(&node.manifest_dir, "nginx.yaml", &nginx);
    let (pods, name) = (env.pods(), format!("nginx-{NODE}"));
    let mirror = wait_pod(&pods, &name, "to exist", |_| true).await;
    let hash = config_hash(&mirror);
    assert!(
        !hash.is_empty(),
        "no config.hash: {:?}",
        mirror.annotations()
    );
    let source = annotation(&mirror, "kubernetes.io/config.source");
    let mirror_hash = annotation(&mirror, "kubernetes.io/config.mirror");
    let seen = (source, mirror_hash);
    assert_eq!(
        seen,
        (Some("file"), Some(hash.as_str())),
        "config.source, .mirror"
    );
    let spec = mirror.spec.as_ref();
    assert_eq!(spec.and_then(|s| s.node_name.as_deref()), Some(NODE));
    let owners = mirror.owner_references().iter();
    let owners: Vec<_> = owners.map(|o| (&*o.kind, &*o.name)).collect();
    assert_eq!(owners, [("Node", NODE)], "ownerReferences");

    wait_pod(&pods, &name, "Ready", is_ready).await;
    let hidden = pods.get_opt(&format!("hidden-{NODE}")).await.unwrap();
    assert!(hidden.is_none(), "a dot-file was mirrored: {hidden:?}");
    let local = http_get_json(&node.kubelet.pods_url().expect("the node serves /pods")).await;
    let items = local["items"].as_array().into_iter().flatten();
    let items = items.filter_map(|p| p.pointer("/metadata/name")?.as_str());
    let local: Vec<_> = items.collect();
    assert_eq!(local, [name.as_str()], "the pods in kubelet's /pods");
}

/// With a poll longer than the test, only the directory's events and the pods' own due
/// transitions can move the kubelet: a written file is mirrored and turns Ready, a changed one
/// is replaced, within seconds. A node without sockets serves neither `/pods` nor the CRI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_reacts_to_its_directory_at_once_and_to_transitions_when_due() {
    let env = start_with(1, |o| {
        o.timings.poll = Duration::from_secs(600);
        o.sockets = false;
    })
    .await;
    let node = &env.cluster.nodes()[0];
    assert_eq!(node.kubelet.pods_url(), None);
    assert_eq!(node.kubelet.cri_endpoint(), None);
    let (pods, name) = (env.pods(), format!("nginx-{NODE}"));
    write_manifest(
        &node.manifest_dir,
        "nginx.yaml",
        &manifest("nginx", "nginx:1.19.1"),
    );
    let first = wait_pod(&pods, &name, "Ready", is_ready).await;
    write_manifest(
        &node.manifest_dir,
        "nginx.yaml",
        &manifest("nginx", "nginx:1.19.2"),
    );
    wait_pod(&pods, &name, "Ready on the changed file", |p| {
        is_ready(p) && config_hash(p) != config_hash(&first)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_replaces_on_change_removes_on_delete_and_recreates() {
    let env = start(1).await;
    let dir = &env.cluster.nodes()[0].manifest_dir;
    let (pods, name) = (env.pods(), format!("nginx-{NODE}"));
    write_manifest(dir, "nginx.yaml", &manifest("nginx", "nginx:1.19.1"));
    let old = wait_pod(&pods, &name, "Ready", is_ready).await;
    let old = config_hash(&old);

    write_manifest(dir, "nginx.yaml", &manifest("nginx", "nginx:1.19.2"));
    let replaced = |p: &Pod| config_hash(p) != old && is_ready(p);
    let new = wait_pod(&pods, &name, "Ready with a new hash", replaced).await;
    let spec = new.spec.as_ref().unwrap();
    let image = spec.containers[0].image.as_deref();
    assert_eq!(image, Some("nginx:1.19.2"), "the replacement's image");

    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let uid = new.uid();
    let recreated = |p: &Pod| p.uid() != uid;
    wait_pod(&pods, &name, "recreated after a delete", recreated).await;

    std::fs::remove_file(dir.join("nginx.yaml")).unwrap();
    let what = format!("pod {name} to go with its file");
    wait_until(&what, WAIT, async || match pods.get_opt(&name).await {
        Ok(None) => Ok(()),
        other => Err(format!("{:?}", other.map(|p| p.map(|p| p.uid())))),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_keeps_its_pods_while_the_manifest_directory_cannot_be_read() {
    let env = start(1).await;
    let dir = env.cluster.nodes()[0].manifest_dir.clone();
    let (pods, name) = (env.pods(), format!("nginx-{NODE}"));
    write_manifest(&dir, "nginx.yaml", &manifest("nginx", "nginx:1.19.1"));
    let uid = wait_pod(&pods, &name, "Ready", is_ready).await.uid();

    // The directory unreadable (here: a file in its place; at scale, no file descriptor
    // left): kubelet skips the update, it does not remove every pod.
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        let now = pods.get_opt(&name).await.unwrap().map(|p| p.uid());
        assert_eq!(
            now,
            Some(uid.clone()),
            "the pod stays while its directory cannot be read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let back = wait_pod(&pods, &name, "Ready", is_ready).await;
    assert_eq!(back.uid(), uid, "the same pod, never replaced");
}

fn crash_looping(p: &Pod) -> bool {
    let status = p.status.as_ref();
    let statuses = status.and_then(|s| s.container_statuses.as_ref());
    let states = statuses.into_iter().flatten();
    let waiting = states.filter_map(|c| c.state.as_ref()?.waiting.as_ref());
    let mut reasons = waiting.filter_map(|w| w.reason.as_deref());
    reasons.any(|r| r == "CrashLoopBackOff")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_broken_image_and_node_not_ready() {
    let env = start(1).await;
    let node = &env.cluster.nodes()[0];
    let pods = env.pods();
    let (bad, name) = (format!("bad-{NODE}"), format!("nginx-{NODE}"));
    env.cluster.set_broken_image("nginx:broken", true);
    let broken = manifest("bad", "nginx:broken");
    write_manifest(&node.manifest_dir, "bad.yaml", &broken);
    let crashed = wait_pod(&pods, &bad, "crash looping", crash_looping);
    let crashed = crashed.await;
    let seen = conditions(&crashed);
    assert!(seen.iter().any(|c| c == "Ready=False"), "broken: {seen:?}");

    let nginx = manifest("nginx", "nginx:1.19.1");
    write_manifest(&node.manifest_dir, "nginx.yaml", &nginx);
    wait_pod(&pods, &name, "Ready", is_ready).await;
    let still = pods.get(&bad).await.unwrap();
    assert!(!is_ready(&still), "a broken image got Ready: {still:?}");

    node.kubelet.set_reporting(false);
    let nodes: Api<Node> = env.all();
    wait_until("the Node to turn NotReady", WAIT, async || {
        let n = nodes.get(NODE).await.map_err(|e| e.to_string())?;
        let conditions = n.status.and_then(|s| s.conditions);
        let conditions = conditions.unwrap_or_default();
        let ready = conditions.iter().find(|c| c.type_ == "Ready");
        match ready.map(|c| c.status.as_str()) {
            Some("True") | None => Err(format!("{conditions:?}")),
            Some(_) => Ok(()),
        }
    })
    .await;
    let not_ready = |p: &Pod| !is_ready(p);
    wait_pod(&pods, &name, "not Ready", not_ready).await;
}
