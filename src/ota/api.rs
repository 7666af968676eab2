//! The node-local API, on YurtHub's paths so existing OTA tooling works by changing the port:
//!
//! - `GET /pods`: a v1 `PodList` of this node's pods, from the agent's cache.
//! - `POST /openyurt.io/v1/namespaces/{ns}/pods/{pod}/upgrade`: start an OTA upgrade (200
//!   `Start updating pod ns/pod`; 403, 404, 409 with the reason), plain-text bodies.
//! - `GET` on the same path: the upgrade's state as JSON. `GET /healthz`, `GET /readyz`.
//! - `POST /openyurt.io/v1/namespaces/{ns}/pods/{pod}/imagepull`: pull the images of the
//!   upgrade available ahead of it (200 `Image pre-pull requested for pod ns/pod`; 403 when
//!   no upgrade is available, 404, 409 while the upgrade runs).
//! - `GET /status`: what the agent believes (objects, hashes, phases, grants, connectivity).
//!
//! Loopback by default; with a token file every request must carry `Authorization: Bearer`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Ota;
use crate::config::Listen;

/// Longest request target accepted (YurtHub's paths are far shorter).
pub const MAX_URI: usize = 2048;
/// Largest request body accepted (the upgrade request carries none).
pub const MAX_BODY: u64 = 4096;
/// The file in the state directory naming the address actually bound (useful with port 0).
pub const ADDRESS_FILE: &str = "local-api.addr";
/// The same for the metrics endpoint.
pub const METRICS_ADDRESS_FILE: &str = "metrics.addr";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("reading the local API token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the local API token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("binding the local API to {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

struct Shared {
    ota: Arc<Ota>,
    token: Option<String>,
}

/// Read a bearer token file (trailing whitespace ignored).
pub fn read_token(path: &Path) -> Result<String, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApiError::Token {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(ApiError::EmptyToken(path.to_path_buf()));
    }
    Ok(token)
}

/// Bind and serve until the process ends. Returns the bound address (for the address file).
pub async fn serve(
    listen: &Listen,
    token: Option<String>,
    ota: Arc<Ota>,
) -> Result<String, ApiError> {
    let shared = Arc::new(Shared { ota, token });
    let app = axum::Router::new().fallback(handle).with_state(shared);
    match listen {
        Listen::Tcp(addr) => serve_tcp(*addr, app, "the local API").await,
        Listen::Unix(path) => {
            // A socket file left by a previous run would make bind fail.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| ApiError::Bind {
                    address: path.display().to_string(),
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the local API stopped");
                }
            });
            Ok(path.display().to_string())
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = (status, bytes).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding: {e}")),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(shared: &Shared, request: &Request) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Healthz,
    Readyz,
    Pods,
    Status,
    Upgrade {
        namespace: &'a str,
        pod: &'a str,
    },
    ImagePull {
        namespace: &'a str,
        pod: &'a str,
    },
    /// Under YurtHub's prefix but not a valid upgrade path.
    Malformed(String),
    Unknown,
}

fn target(path: &str) -> Target<'_> {
    match path {
        "/healthz" => return Target::Healthz,
        "/readyz" => return Target::Readyz,
        "/pods" => return Target::Pods,
        "/status" => return Target::Status,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/openyurt.io/") else {
        return Target::Unknown;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [
            "v1",
            "namespaces",
            namespace,
            "pods",
            pod,
            verb @ ("upgrade" | "imagepull"),
        ] => {
            if !crate::rules::is_dns_label(namespace) {
                Target::Malformed(format!("invalid namespace {namespace:?}"))
            } else if !crate::rules::is_dns_subdomain(pod) {
                Target::Malformed(format!("invalid pod name {pod:?}"))
            } else if *verb == "upgrade" {
                Target::Upgrade { namespace, pod }
            } else {
                Target::ImagePull { namespace, pod }
            }
        }
        _ => Target::Malformed(
            "expected /openyurt.io/v1/namespaces/{ns}/pods/{podname}/upgrade or .../imagepull"
                .to_string(),
        ),
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return text(
            StatusCode::URI_TOO_LONG,
            format!("request target longer than {MAX_URI} bytes"),
        );
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes"),
        );
    }
    if !authorized(&shared, &request) {
        return text(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // A body sent without a length (chunked) is read up to the cap, never further.
    let body = request.into_body();
    if axum::body::to_bytes(body, MAX_BODY as usize).await.is_err() {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY} bytes"),
        );
    }
    let ota = &shared.ota;
    match target(&path) {
        Target::Healthz if method == Method::GET => text(StatusCode::OK, "ok"),
        Target::Readyz if method == Method::GET => {
            if ota.synced() {
                text(StatusCode::OK, "ok")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the agent has not completed its first pass",
                )
            }
        }
        Target::Pods if method == Method::GET => json(
            StatusCode::OK,
            &serde_json::json!({
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {},
                "items": ota.pods(),
            }),
        ),
        Target::Status if method == Method::GET => json(StatusCode::OK, &ota.status().await),
        Target::Healthz | Target::Readyz | Target::Pods | Target::Status => {
            method_not_allowed("GET")
        }
        Target::Upgrade { namespace, pod } if method == Method::POST => {
            match ota.start(namespace, pod).await {
                Ok(message) => text(StatusCode::OK, message),
                Err(r) => text(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    r.message,
                ),
            }
        }
        Target::Upgrade { namespace, pod } if method == Method::GET => {
            match ota.record(namespace, pod) {
                Ok(record) => json(StatusCode::OK, &record),
                Err(r) => text(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    r.message,
                ),
            }
        }
        Target::Upgrade { .. } => method_not_allowed("GET, POST"),
        Target::ImagePull { namespace, pod } if method == Method::POST => {
            match ota.image_pull(namespace, pod) {
                Ok(message) => text(StatusCode::OK, message),
                Err(r) => text(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    r.message,
                ),
            }
        }
        Target::ImagePull { .. } => method_not_allowed("POST"),
        Target::Malformed(reason) => {
            text(StatusCode::BAD_REQUEST, format!("malformed path: {reason}"))
        }
        Target::Unknown => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve `GET /metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve_metrics(addr: std::net::SocketAddr, ota: Arc<Ota>) -> Result<String, ApiError> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let ota = ota.clone();
            async move {
                let mut r = ota.metrics().await.into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        }),
    );
    serve_tcp(addr, app, "the metrics endpoint").await
}

/// Serve `GET /metrics` with the controller's counters.
pub async fn serve_process_metrics(addr: std::net::SocketAddr) -> Result<String, ApiError> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            let mut r =
                crate::metrics::render(crate::metrics::Role::Controller, &[]).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }),
    );
    serve_tcp(addr, app, "the metrics endpoint").await
}

/// Bind `addr` and serve `app` in a task until the process ends; the bound address.
async fn serve_tcp(
    addr: std::net::SocketAddr,
    app: axum::Router,
    what: &'static str,
) -> Result<String, ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            address: addr.to_string(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed_like_yurthub() {
        assert_eq!(target("/pods"), Target::Pods);
        assert_eq!(
            target("/openyurt.io/v1/namespaces/default/pods/nginx-node-1/upgrade"),
            Target::Upgrade {
                namespace: "default",
                pod: "nginx-node-1"
            }
        );
        for bad in [
            "/openyurt.io/v1/namespaces/default/pods/nginx-node-1",
            "/openyurt.io/v1/namespaces/default/pods//upgrade",
            "/openyurt.io/v1/namespaces/Default/pods/x/upgrade",
            "/openyurt.io/v1/namespaces/default/pods/x/upgrade/more",
            "/openyurt.io/v2/namespaces/default/pods/x/upgrade",
        ] {
            assert!(matches!(target(bad), Target::Malformed(_)), "{bad}");
        }
        assert_eq!(target("/metrics"), Target::Unknown);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
