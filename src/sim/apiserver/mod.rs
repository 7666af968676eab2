//! The dev cluster's API server: the [`Store`] behind HTTPS, speaking the Kubernetes API well
//! enough for `kube::Client` and `kubectl` (discovery, CRUD, patches, watches, Tables), with
//! bearer-token authentication, Node/RBAC authorization, and fault injection.
//!
//! Each connection is served by hyper directly (not behind a router's connection pool) so a
//! [network partition](Faults::partition) can drop it without a response, as a cut cable does.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::HashMap;
//! use staticpod_puller::sim::apiserver::{ApiServer, ApiServerOptions, Identity};
//! use staticpod_puller::sim::store::{Store, DEFAULT_HISTORY};
//!
//! let admin = Identity { user: "admin".into(), groups: vec!["system:masters".into()] };
//! let options = ApiServerOptions { tokens: HashMap::from([("t0k3n".into(), admin)]), ..Default::default() };
//! let server = ApiServer::start(Store::new(DEFAULT_HISTORY), options).await?;
//! std::fs::write("kubeconfig", server.kubeconfig("t0k3n", "admin"))?;
//! # Ok(()) }
//! ```

mod authz;
mod discovery;
mod faults;
mod pipe;
mod resources;
mod route;
mod service_account;
mod table;
mod tls;
mod usage;
mod watch;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine as _;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, debug, warn};

pub use faults::{Faults, FaultsRequest, FaultsSnapshot, Verb};
pub use pipe::{Pipe, PipeConnector, client as pipe_client};
pub use tls::TlsError;
pub use usage::UsageCounts;

use crate::sim::admission::policy::PolicyCache;
use crate::sim::error::ApiError;
use crate::sim::store::Store;
use route::{Public, Route};

/// Who a bearer token authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// A cluster administrator (group `system:masters`).
    pub fn admin(user: &str) -> Self {
        Identity {
            user: user.to_string(),
            groups: vec!["system:masters".to_string()],
        }
    }

    /// A kubelet's identity: user `system:node:<node>` in group `system:nodes`.
    pub fn node(node: &str) -> Self {
        Identity {
            user: format!("system:node:{node}"),
            groups: vec!["system:nodes".to_string()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Where to listen; the default is an ephemeral loopback port.
    pub listen: SocketAddr,
    /// Bearer token → identity. More can be added while running ([`ApiServer::add_token`]).
    pub tokens: HashMap<String, Identity>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tokens: HashMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("binding the dev cluster API server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the dev cluster API server's TLS: {0}")]
    Tls(#[from] TlsError),
}

/// State shared by every connection and request.
struct Shared {
    store: Arc<Store>,
    tokens: RwLock<HashMap<String, Identity>>,
    faults: Arc<Faults>,
    requests: Mutex<HashMap<String, u64>>,
    usage: usage::Usage,
    addr: SocketAddr,
    /// ValidatingAdmissionPolicies, compiled once per resourceVersion.
    policies: PolicyCache,
}

impl Shared {
    fn authenticate(&self, headers: &HeaderMap) -> Option<Identity> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token.trim())
            .cloned()
    }

    fn requests(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // Counters only: a poisoned lock still holds usable counts.
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running API server. Dropping it (or [`ApiServer::shutdown`]) stops it and closes every
/// connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    ca_pem: String,
    stop: signal::Sender<bool>,
    task: Option<JoinHandle<()>>,
    pipes: PipeConnector,
}

impl ApiServer {
    /// Bind, generate the CA and serving certificate, and serve `store` until stopped.
    pub async fn start(
        store: Arc<Store>,
        options: ApiServerOptions,
    ) -> Result<ApiServer, ApiServerError> {
        let tls = tls::generate(Some(options.listen.ip()))?;
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| ApiServerError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind {
                addr: options.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            store,
            tokens: RwLock::new(options.tokens),
            faults: Arc::new(Faults::new()),
            requests: Mutex::new(HashMap::new()),
            usage: usage::Usage::default(),
            addr,
            policies: PolicyCache::default(),
        });
        let (stop, stopped) = signal::channel(false);
        let acceptor = TlsAcceptor::from(tls.config);
        let (pipes, piped) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(
            accept_loop(listener, piped, acceptor, shared.clone(), stopped)
                .instrument(tracing::info_span!("apiserver", %addr)),
        );
        debug!(%addr, "dev cluster API server listening");
        Ok(ApiServer {
            shared,
            ca_pem: tls.ca_pem,
            stop,
            task: Some(task),
            pipes: PipeConnector(pipes),
        })
    }

    /// `https://127.0.0.1:PORT` (the loopback address when listening on all addresses).
    pub fn url(&self) -> String {
        let addr = self.shared.addr;
        let ip = if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        };
        format!("https://{}", SocketAddr::new(ip, addr.port()))
    }

    /// The CA that signed the serving certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Connections to this server that use no socket, for clients in this process (see
    /// [`pipe_client`]).
    pub fn pipe_connector(&self) -> PipeConnector {
        self.pipes.clone()
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

    /// A kubeconfig for `user` with this token: server URL, embedded CA, one context, current.
    pub fn kubeconfig(&self, token: &str, user: &str) -> String {
        let q = |s: &str| Value::String(s.to_string()).to_string();
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let cluster = "staticpod-dev";
        let context = format!("{user}@{cluster}");
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {context}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {context}\npreferences: {{}}\n",
            cluster = q(cluster),
            server = q(&self.url()),
            ca = q(&ca),
            user = q(user),
            token = q(token),
            context = q(&context),
        )
    }

    /// Requests by user, verb and resource, and watch events delivered by user and resource,
    /// since start.
    pub fn usage(&self) -> UsageCounts {
        self.shared.usage.counts()
    }

    /// API requests served per authenticated user since start.
    pub fn requests_by_user(&self) -> HashMap<String, u64> {
        self.shared.requests().clone()
    }

    /// Stop accepting, close every connection, and wait for the server task to end.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // The task ends at the stop signal; a join error means it panicked, already logged.
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut piped: tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: signal::Receiver<bool>,
) {
    // Connections live in the set: when the loop ends, dropping it aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Only ever set to true; a dropped sender means the server is gone too.
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let span = tracing::debug_span!("connection", %peer);
                    connections.spawn(serve_connection(tcp, acceptor.clone(), shared.clone()).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(pipe) = piped.recv() => {
                let span = tracing::debug_span!("connection", peer = "pipe");
                connections.spawn(serve_connection(pipe, acceptor.clone(), shared.clone()).instrument(span));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    debug!("dev cluster API server stopped");
}

/// The users that have sent requests on one connection (to cut it when one is partitioned).
#[derive(Default)]
struct ConnectionUsers(Mutex<HashSet<String>>);

impl ConnectionUsers {
    fn note(&self, user: &str) {
        let mut users = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !users.contains(user) {
            users.insert(user.to_string());
        }
    }

    fn any_partitioned(&self, faults: &Faults) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|u| faults.is_partitioned(u))
    }
}

/// The error that makes hyper drop a connection without answering: a simulated network cut.
#[derive(Debug, thiserror::Error)]
#[error("connection cut: user {0} is partitioned from the API server")]
struct ConnectionCut(String);

async fn serve_connection<S>(tcp: S, acceptor: TlsAcceptor, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let users = Arc::new(ConnectionUsers::default());
    let service = {
        let shared = shared.clone();
        let users = users.clone();
        hyper::service::service_fn(move |req| serve_request(shared.clone(), users.clone(), req))
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let mut partitions = shared.faults.partition_signal();
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended");
                }
                return;
            }
            changed = partitions.changed() => {
                if changed.is_err() || users.any_partitioned(&shared.faults) {
                    debug!("connection cut: its user is partitioned");
                    return;
                }
            }
        }
    }
}

async fn serve_request(
    shared: Arc<Shared>,
    users: Arc<ConnectionUsers>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ConnectionCut> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let identity = shared.authenticate(req.headers());
    let user = identity
        .as_ref()
        .map_or("system:anonymous", |i| i.user.as_str())
        .to_string();
    if let Some(id) = &identity {
        users.note(&id.user);
        if shared.faults.is_partitioned(&id.user) {
            debug!(%method, %path, %user, "partitioned: dropping the connection without a response");
            return Err(ConnectionCut(id.user.clone()));
        }
        *shared.requests().entry(id.user.clone()).or_default() += 1;
    }
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let route = route::parse(&path);
    if let (Route::Resource(resource_path), Some(id)) = (&route, &identity) {
        shared.usage.request(
            &id.user,
            usage::verb(&method, resource_path, req.uri().query()),
            usage::resource(resource_path),
        );
    }
    let response = match (route, identity) {
        (Route::Public(public), _) => public_response(public),
        (_, None) => error_response(&ApiError::unauthorized()),
        (route, Some(id)) => dispatch(&shared, &id, route, req).await,
    };
    debug!(
        %method,
        %path,
        %user,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(response)
}

async fn dispatch(
    shared: &Arc<Shared>,
    id: &Identity,
    route: Route,
    req: Request<Incoming>,
) -> Response<Body> {
    let store = &shared.store;
    let found = |doc: Option<Value>, what: &str| match doc {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => error_response(&ApiError::not_found_path(what)),
    };
    match route {
        Route::Public(public) => public_response(public),
        Route::CoreVersions => json_response(StatusCode::OK, &discovery::api_versions(shared.addr)),
        Route::Groups => json_response(StatusCode::OK, &discovery::api_group_list(store)),
        Route::Group(group) => found(discovery::api_group(store, &group), &group),
        Route::Resources { group, version } => found(
            discovery::resource_list(store, &group, &version),
            &format!("{group}/{version}"),
        ),
        Route::OpenApiV2 => error_response(&ApiError::not_found_path("openapi/v2")),
        Route::OpenApiV3Index => json_response(StatusCode::OK, &discovery::openapi_v3_index(store)),
        Route::OpenApiV3 { group, version } => found(
            discovery::openapi_v3_group_version(store, &group, &version),
            &format!("openapi/v3 {group}/{version}"),
        ),
        Route::Faults => faults_endpoint(shared, id, req).await,
        Route::Resource(path) => {
            let (parts, body) = req.into_parts();
            resources::handle(shared, id, path, parts, body).await
        }
        Route::NotFound => error_response(&ApiError::not_found_path(req.uri().path())),
    }
}

fn public_response(public: Public) -> Response<Body> {
    match public {
        Public::Health => text_response(StatusCode::OK, "ok"),
        Public::Version => json_response(StatusCode::OK, &discovery::version()),
    }
}

/// `GET /sim/faults` shows the faults; `POST` changes them ([`FaultsRequest`]). Only for
/// `system:masters`.
async fn faults_endpoint(
    shared: &Arc<Shared>,
    id: &Identity,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    if !authz::is_master(id) {
        let verb = method.as_str().to_lowercase();
        return error_response(&ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "forbidden: User \"{}\" cannot {verb} path \"/sim/faults\"",
                id.user
            ),
            details: json!({}),
        });
    }
    match method {
        Method::GET => {}
        Method::POST | Method::PUT => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error_response(&ApiError::bad_request(&format!(
                        "reading the request body: {e}"
                    )));
                }
            };
            match serde_json::from_slice::<FaultsRequest>(&body) {
                Ok(change) => {
                    if let Err(e) = shared.faults.apply(&change) {
                        return error_response(&ApiError::bad_request(&e));
                    }
                    debug!(?change, user = %id.user, "faults changed through the admin endpoint");
                }
                Err(e) => {
                    return error_response(&ApiError::bad_request(&format!(
                        "the faults request is not valid: {e} (expected e.g. {{\"errorRate\":{{\"patch\":0.1}},\"latencyMs\":50,\"closeWatches\":true,\"partition\":[\"system:node:n1\"],\"heal\":[],\"clear\":false}})"
                    )));
                }
            }
        }
        _ => {
            return error_response(&ApiError::method_not_allowed(
                "/sim/faults accepts GET and POST",
            ));
        }
    }
    match serde_json::to_value(shared.faults.snapshot()) {
        Ok(snapshot) => json_response(StatusCode::OK, &snapshot),
        Err(e) => error_response(&ApiError::bad_request(&format!(
            "serializing the faults: {e}"
        ))),
    }
}

fn bytes_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    // Serializing a `Value` cannot fail.
    bytes_response(status, serde_json::to_vec(value).unwrap_or_default())
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::from(text));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.status_body())
}

pub use table::human_duration;
