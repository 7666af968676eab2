//! The dev cluster's HTTPS front: Kubernetes API paths, bearer-token authentication,
//! authorization (cluster-admin, NodeRestriction, RBAC), discovery, Table output for kubectl,
//! watches, and fault injection.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::error::ApiError;
use super::patch::PatchKind;
use super::resource::{ResourceKey, ResourceType};
use super::selector::Selectors;
use super::store::{Store, Subresource, WatchFrom};
use super::table;

/// Request bodies larger than this are refused (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// How often an idle watch sends a bookmark (when asked for bookmarks).
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("generating the dev cluster's certificates: {0}")]
    Certificates(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Who a bearer token authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

pub struct ApiServerOptions {
    pub listen: SocketAddr,
    pub tokens: HashMap<String, Identity>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: HashMap::new(),
        }
    }
}

/// API verbs, as fault injection and authorization name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    pub const ALL: [Verb; 7] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Faults injected at run time.
pub struct Faults {
    error_rates: Mutex<HashMap<Verb, f64>>,
    latency: Mutex<Duration>,
    watch_epoch: tokio::sync::watch::Sender<u64>,
    partitioned: RwLock<HashSet<String>>,
    rng: AtomicU64,
}

impl Faults {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Faults {
            error_rates: Mutex::new(HashMap::new()),
            latency: Mutex::new(Duration::ZERO),
            watch_epoch: tokio::sync::watch::channel(0).0,
            partitioned: RwLock::new(HashSet::new()),
            rng: AtomicU64::new(seed | 1),
        }
    }

    /// Fail this fraction (0.0–1.0) of requests of `verb` with 503.
    pub fn set_error_rate(&self, verb: Verb, rate: f64) {
        lock(&self.error_rates).insert(verb, rate.clamp(0.0, 1.0));
    }

    /// Delay every request by `d`.
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.latency) = d;
    }

    /// End every open watch now; clients must watch again.
    pub fn close_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Cut `user` off: its connections drop without an answer and its watches end.
    pub fn partition(&self, user: &str) {
        self.partitioned
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_string());
        self.close_watches();
    }

    pub fn heal(&self, user: &str) {
        self.partitioned
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    pub fn clear(&self) {
        lock(&self.error_rates).clear();
        *lock(&self.latency) = Duration::ZERO;
        self.partitioned
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn is_partitioned(&self, user: &str) -> bool {
        self.partitioned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(user)
    }

    fn should_fail(&self, verb: Verb) -> bool {
        let rate = lock(&self.error_rates).get(&verb).copied().unwrap_or(0.0);
        if rate <= 0.0 {
            return false;
        }
        // xorshift: fault injection needs cheap, not cryptographic, randomness.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x as f64 / u64::MAX as f64) < rate
    }

    fn describe(&self) -> Value {
        let rates: serde_json::Map<String, Value> = lock(&self.error_rates)
            .iter()
            .map(|(v, r)| (v.as_str().to_string(), json!(r)))
            .collect();
        let mut partitioned: Vec<String> = self
            .partitioned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        partitioned.sort();
        json!({"errorRate": rates, "latencyMs": lock(&self.latency).as_millis() as u64, "partitioned": partitioned})
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    store: Arc<Store>,
    tokens: RwLock<HashMap<String, Identity>>,
    faults: Arc<Faults>,
    requests: Mutex<HashMap<String, u64>>,
    url: String,
}

/// A running dev-cluster API server. Dropping it stops accepting connections.
pub struct ApiServer {
    shared: Arc<Shared>,
    ca_pem: String,
    accept: JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ApiServer {
    pub async fn start(
        store: Arc<Store>,
        options: ApiServerOptions,
    ) -> Result<ApiServer, ApiServerError> {
        let (ca_pem, tls) = certificates()?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ApiServerError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Listen {
                addr: options.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            store,
            tokens: RwLock::new(options.tokens),
            faults: Arc::new(Faults::new()),
            requests: Mutex::new(HashMap::new()),
            url: format!("https://{addr}"),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { serve(shared, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(ApiServer {
            shared,
            ca_pem,
            accept,
        })
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn faults(&self) -> Arc<Faults> {
        self.shared.faults.clone()
    }

    pub fn add_token(&self, token: &str, identity: Identity) {
        self.shared
            .tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), identity);
    }

    /// API requests served, per user.
    pub fn requests_by_user(&self) -> HashMap<String, u64> {
        lock(&self.shared.requests).clone()
    }

    /// A kubeconfig for `user` authenticating with `token`, trusting this server's CA.
    pub fn kubeconfig(&self, token: &str, user: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dev\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: \"{user}\"\n  user:\n    token: {token}\ncontexts:\n- name: dev\n  context:\n    cluster: dev\n    user: \"{user}\"\n    namespace: default\ncurrent-context: dev\n",
            self.shared.url
        )
    }

    pub async fn shutdown(self) {
        self.shared.faults.close_watches();
        self.accept.abort();
    }
}

/// A CA and a serving certificate for 127.0.0.1 and localhost, with ring.
fn certificates() -> Result<(String, rustls::ServerConfig), ApiServerError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| ApiServerError::Certificates(e.to_string());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "staticpod-puller dev cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(e)?).map_err(e)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(e)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let key = KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, &ca).map_err(e)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiServerError::Certificates(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone(), ca.der().clone()], key_der)
        .map_err(|e| ApiServerError::Certificates(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca.pem(), config))
}

/// The connection-level error that makes hyper drop a partitioned client's connection.
#[derive(Debug)]
struct Partitioned;

impl std::fmt::Display for Partitioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("partitioned by fault injection")
    }
}

impl std::error::Error for Partitioned {}

async fn serve(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Partitioned> {
    let identity = bearer(&req).and_then(|t| {
        shared
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t)
            .cloned()
    });
    if let Some(id) = &identity {
        if shared.faults.is_partitioned(&id.user) {
            return Err(Partitioned);
        }
        *lock(&shared.requests).entry(id.user.clone()).or_default() += 1;
    }
    let latency = *lock(&shared.faults.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match identity {
        None if !matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") => {
            error_response(&ApiError::unauthorized())
        }
        identity => {
            let id = identity.unwrap_or_else(|| Identity {
                user: "system:anonymous".into(),
                groups: vec![],
            });
            match handle(&shared, &id, req).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "dev cluster request");
    Ok(response)
}

fn bearer<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status_body(),
    )
}

fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode(k)?, decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// What a request addresses.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Subresource,
}

async fn handle(
    shared: &Arc<Shared>,
    id: &Identity,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let store = &shared.store;
    match segments.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, &version())),
        ["healthz"] | ["readyz"] | ["livez"] => return Ok(Response::new(Body::from("ok"))),
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.url.trim_start_matches("https://")}]}),
            ));
        }
        ["apis"] => {
            return Ok(json_response(
                StatusCode::OK,
                &table::group_list(&store.resource_types()),
            ));
        }
        ["apis", group] => {
            return table::group_list(&store.resource_types())["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == *group).cloned())
                .map(|mut g| {
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(StatusCode::OK, &g)
                })
                .ok_or_else(|| ApiError::not_found_path(&path));
        }
        ["api", "v1"] => {
            return Ok(json_response(
                StatusCode::OK,
                &table::resource_list("", "v1", &store.resource_types()),
            ));
        }
        ["apis", group, version] => {
            let list = table::resource_list(group, version, &store.resource_types());
            if list["resources"].as_array().is_none_or(|r| r.is_empty()) {
                return Err(ApiError::not_found_path(&path));
            }
            return Ok(json_response(StatusCode::OK, &list));
        }
        // kubectl downloads OpenAPI before `apply`; an empty document means "no schema to
        // validate against" and it proceeds (the dev cluster does not validate schemas).
        ["openapi", "v2"] if accepts(&req, "protobuf") => {
            // An empty body is the protobuf encoding of an empty document.
            let mut r = Response::new(Body::empty());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            return Ok(r);
        }
        ["openapi", "v2"] => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.34.0"}, "paths": {}, "definitions": {}}),
            ));
        }
        ["openapi", "v3"] => return Ok(json_response(StatusCode::OK, &json!({"paths": {}}))),
        ["sim", "faults"] => return faults_endpoint(shared, id, req).await,
        _ => {}
    }
    let target = resolve(store, &segments).ok_or_else(|| ApiError::not_found_path(&path))?;
    let q = query(&req);
    let verb = match (req.method(), &target.name) {
        (&Method::GET, Some(_)) => Verb::Get,
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            Verb::Watch
        }
        (&Method::GET, None) => Verb::List,
        (&Method::POST, None) => Verb::Create,
        (&Method::PUT, Some(_)) => Verb::Update,
        (&Method::PATCH, Some(_)) => Verb::Patch,
        (&Method::DELETE, Some(_)) => Verb::Delete,
        (m, _) => {
            return Err(ApiError::method_not_allowed(&format!(
                "{m} is not supported on {path}"
            )));
        }
    };
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the dev cluster",
        ));
    }
    authorize(store, id, verb, &target)?;
    if shared.faults.should_fail(verb) {
        return Err(ApiError::injected(verb.as_str()));
    }
    let key = target.rt.key();
    let ns = target.namespace.as_deref();
    let selectors = Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
    .map_err(|e| ApiError::bad_request(&e))?;
    let wants_table = accepts(&req, "as=Table");
    let include = q
        .get("includeObject")
        .cloned()
        .unwrap_or_else(|| "Metadata".into());
    match verb {
        Verb::Get => {
            let obj = store.get(&key, ns, target.name.as_deref().unwrap_or_default())?;
            if wants_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&target.rt, &[obj], store.current_rv(), &include),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        Verb::List => {
            let (items, rv) = store.list(&key, ns, &selectors)?;
            if wants_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&target.rt, &items, rv, &include),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", target.rt.kind), "apiVersion": target.rt.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        Verb::Watch => watch(shared, id, &target, &q, selectors),
        Verb::Create => {
            let body = read_json(req).await?;
            let created = store.create(&key, ns, body)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Verb::Update => {
            let body = read_json(req).await?;
            let updated = store.update(
                &key,
                ns,
                target.name.as_deref().unwrap_or_default(),
                body,
                target.sub,
            )?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        Verb::Patch => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let kind = PatchKind::from_content_type(&ct).ok_or_else(|| {
                ApiError::unsupported_media_type(&format!(
                    "the body of the request was in an unknown format ({ct:?}): accepted are application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
                ))
            })?;
            let body = read_body(req).await?;
            let patched = store.patch(
                &key,
                ns,
                target.name.as_deref().unwrap_or_default(),
                kind,
                &body,
                target.sub,
            )?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        Verb::Delete => {
            let body = read_body(req).await?;
            let options: Value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or(Value::Null)
            };
            let deleted = store.delete(
                &key,
                ns,
                target.name.as_deref().unwrap_or_default(),
                options.get("preconditions"),
            )?;
            Ok(json_response(StatusCode::OK, &deleted))
        }
    }
}

fn accepts<B>(req: &Request<B>, what: &str) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains(what))
}

fn version() -> Value {
    json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-staticpod-puller-dev", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

/// Map path segments to a served resource.
fn resolve(store: &Store, segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(rest);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, Subresource::Main),
        [plural, name] => (*plural, Some(name.to_string()), Subresource::Main),
        [plural, name, "status"] => (*plural, Some(name.to_string()), Subresource::Status),
        _ => return None,
    };
    let rt = store
        .resource_type(&ResourceKey::new(group, plural))
        .filter(|rt| rt.version == version)?;
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name,
        sub,
    })
}

async fn read_body(req: Request<hyper::body::Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    limited.collect().await.map(|c| c.to_bytes()).map_err(|e| {
        ApiError::bad_request(&format!(
            "reading the request body (at most {MAX_BODY} bytes): {e}"
        ))
    })
}

async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, ApiError> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(&format!("the request body is not JSON: {e}")))
}

fn watch(
    shared: &Arc<Shared>,
    id: &Identity,
    target: &Target,
    q: &HashMap<String, String>,
    selectors: Selectors,
) -> Result<Response<Body>, ApiError> {
    let from = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => WatchFrom::Current,
        Some(rv) => WatchFrom::Version(
            rv.parse()
                .map_err(|_| ApiError::bad_request(&format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let key = target.rt.key();
    let ns = target.namespace.clone();
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let line = |kind: &str, obj: &Value| {
        Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})))
    };
    let start = match shared.store.watch(&key, from) {
        Ok(s) => s,
        Err(e) if e.code == 410 => {
            // The API server answers an expired resourceVersion with an ERROR event.
            let _ = tx.try_send(Ok(line("ERROR", &e.status_body())));
            drop(tx);
            return Ok(stream_response(rx));
        }
        Err(e) => return Err(e),
    };
    let faults = shared.faults.clone();
    let user = id.user.clone();
    let api_version = target.rt.api_version();
    let kind = target.rt.kind.clone();
    tokio::spawn(async move {
        let mut epoch = faults.watch_epoch.subscribe();
        let mut live = start.live;
        let mut last_rv = start.rv;
        let mut sent_rv = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        for change in start.replay {
            if let Some((t, obj)) = change.event_for(&key, ns.as_deref(), &selectors)
                && tx.send(Ok(line(t, obj))).await.is_err()
            {
                return;
            }
        }
        let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
        bookmark.tick().await;
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        if change.rv <= last_rv && change.rv <= start.rv {
                            continue; // already covered by the replay
                        }
                        last_rv = last_rv.max(change.rv);
                        if let Some((t, obj)) = change.event_for(&key, ns.as_deref(), &selectors)
                            && tx.send(Ok(line(t, obj))).await.is_err()
                        {
                            return;
                        }
                    }
                    // Too slow to keep up, or the store is gone: end the watch; the client resumes.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = epoch.changed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = bookmark.tick(), if bookmarks => {
                    if faults.is_partitioned(&user) {
                        return;
                    }
                    if last_rv > sent_rv {
                        sent_rv = last_rv;
                        let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                        if tx.send(Ok(line("BOOKMARK", &obj))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>) -> Response<Body> {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn faults_endpoint(
    shared: &Arc<Shared>,
    id: &Identity,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !id.groups.iter().any(|g| g == "system:masters") {
        return Err(ApiError::forbidden(
            &id.user,
            "use",
            "sim/faults",
            None,
            "only cluster-admin may inject faults",
        ));
    }
    let faults = &shared.faults;
    if req.method() == Method::POST {
        let body = read_json(req).await?;
        if let Some(rates) = body.get("errorRate").and_then(Value::as_object) {
            for (verb, rate) in rates {
                let rate = rate.as_f64().ok_or_else(|| {
                    ApiError::bad_request(&format!("errorRate.{verb}: expected a number"))
                })?;
                if verb == "all" {
                    Verb::ALL
                        .into_iter()
                        .for_each(|v| faults.set_error_rate(v, rate));
                } else {
                    let v = Verb::parse(verb).ok_or_else(|| {
                        ApiError::bad_request(&format!("errorRate: unknown verb {verb:?}"))
                    })?;
                    faults.set_error_rate(v, rate);
                }
            }
        }
        if let Some(ms) = body.get("latencyMs").and_then(Value::as_u64) {
            faults.set_latency(Duration::from_millis(ms));
        }
        for user in body
            .get("partition")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            faults.partition(user);
        }
        for user in body
            .get("heal")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            faults.heal(user);
        }
        if body.get("closeWatches") == Some(&json!(true)) {
            faults.close_watches();
        }
        if body.get("clear") == Some(&json!(true)) {
            faults.clear();
        }
    }
    Ok(json_response(StatusCode::OK, &faults.describe()))
}

/// cluster-admin, then NodeRestriction for node identities, then RBAC from stored objects.
fn authorize(store: &Store, id: &Identity, verb: Verb, target: &Target) -> Result<(), ApiError> {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let resource = match target.sub {
        Subresource::Main => target.rt.plural.clone(),
        Subresource::Status => format!("{}/status", target.rt.plural),
    };
    let ns = target.namespace.as_deref();
    let deny = |reason: &str| {
        Err(ApiError::forbidden(
            &id.user,
            verb.as_str(),
            &resource,
            ns,
            reason,
        ))
    };
    if let Some(node) = id.user.strip_prefix("system:node:") {
        let reading = matches!(verb, Verb::Get | Verb::List | Verb::Watch);
        return match (target.rt.group.as_str(), target.rt.plural.as_str()) {
            _ if reading => Ok(()),
            ("", "pods") => {
                let name = target.name.as_deref().unwrap_or_default();
                let on_node = match store.get(&target.rt.key(), ns, name) {
                    Ok(pod) => pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node),
                    Err(_) => verb == Verb::Create,
                };
                if on_node {
                    Ok(())
                } else {
                    deny(&format!(
                        "node \"{node}\" can only modify pods bound to itself"
                    ))
                }
            }
            ("coordination.k8s.io", "leases") if ns == Some("kube-node-lease") => Ok(()),
            ("coordination.k8s.io", "leases") => {
                deny("node identities may only write leases in kube-node-lease")
            }
            ("", "events") | ("events.k8s.io", "events") => Ok(()),
            ("", "nodes") if target.name.as_deref() == Some(node) => Ok(()),
            _ => deny("not allowed for node identities"),
        };
    }
    if rbac_allows(
        store,
        id,
        verb.as_str(),
        &target.rt.group,
        &resource,
        ns,
        target.name.as_deref(),
    ) {
        Ok(())
    } else {
        deny("no RBAC rule allows it")
    }
}

fn rbac_allows(
    store: &Store,
    id: &Identity,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    let rbac = |plural: &str| ResourceKey::new("rbac.authorization.k8s.io", plural);
    let subject_matches = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| match s["kind"].as_str() {
                Some("User") => s["name"] == id.user.as_str(),
                Some("Group") => id.groups.iter().any(|g| s["name"] == g.as_str()),
                _ => false,
            })
    };
    let any = |list: &Value, want: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|v| v == "*" || v == want)
    };
    let rule_allows = |rule: &Value| {
        any(&rule["verbs"], verb)
            && any(&rule["apiGroups"], group)
            && any(&rule["resources"], resource)
            && (rule["resourceNames"]
                .as_array()
                .is_none_or(|n| n.is_empty())
                || name.is_some_and(|n| any(&rule["resourceNames"], n)))
    };
    let role_allows = |kind: &str, role_ns: Option<&str>, role_name: &str| {
        let (key, rns) = if kind == "ClusterRole" {
            (rbac("clusterroles"), None)
        } else {
            (rbac("roles"), role_ns)
        };
        store.get(&key, rns, role_name).is_ok_and(|role| {
            role["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(rule_allows)
        })
    };
    let none = Selectors::default();
    let cluster_bindings = store
        .list(&rbac("clusterrolebindings"), None, &none)
        .map(|(b, _)| b)
        .unwrap_or_default();
    if cluster_bindings
        .iter()
        .filter(|b| subject_matches(b))
        .any(|b| {
            role_allows(
                "ClusterRole",
                None,
                b["roleRef"]["name"].as_str().unwrap_or_default(),
            )
        })
    {
        return true;
    }
    let Some(ns) = ns else { return false };
    let bindings = store
        .list(&rbac("rolebindings"), Some(ns), &none)
        .map(|(b, _)| b)
        .unwrap_or_default();
    bindings.iter().filter(|b| subject_matches(b)).any(|b| {
        role_allows(
            b["roleRef"]["kind"].as_str().unwrap_or("Role"),
            Some(ns),
            b["roleRef"]["name"].as_str().unwrap_or_default(),
        )
    })
}
