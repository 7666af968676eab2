//! kubelet's local pod list (`GET /pods` on kubelet's port), read for readiness while the API
//! server is unreachable. Polled only while an offline upgrade waits on it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;

use crate::manifest::mirror::{pod_hash, pod_ready};
use crate::rollout::plan::MirrorState;
use crate::rollout::upgrade::MirrorPods;

/// How often the list is read while someone waits on it.
const POLL: Duration = Duration::from_millis(250);
/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error(
        "ota.kubeletPodsUrl {0:?}: only http:// URLs are supported (kubelet's read-only port or a local proxy)"
    )]
    Url(String),
    #[error("reading kubelet's pod list at {url}: {reason}")]
    Read { url: String, reason: String },
}

/// The pods kubelet runs, as its local list shows them.
pub struct KubeletPods {
    url: String,
    token: Option<String>,
    pods: Mutex<Vec<Pod>>,
    changed: tokio::sync::watch::Sender<()>,
}

impl KubeletPods {
    /// Start polling `url` (http only) until the returned value is dropped.
    pub fn start(url: &str, token: Option<String>) -> Result<Arc<KubeletPods>, KubeletError> {
        if !url.starts_with("http://") {
            return Err(KubeletError::Url(url.to_string()));
        }
        let pods = Arc::new(KubeletPods {
            url: url.to_string(),
            token,
            pods: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::Sender::new(()),
        });
        let weak: Weak<KubeletPods> = Arc::downgrade(&pods);
        tokio::spawn(async move {
            while let Some(pods) = weak.upgrade() {
                match pods.read().await {
                    Ok(list) => {
                        *pods.pods.lock().unwrap_or_else(|e| e.into_inner()) = list;
                        pods.changed.send_replace(());
                    }
                    Err(e) => tracing::warn!(error = %e, "offline: kubelet's pod list"),
                }
                drop(pods);
                tokio::time::sleep(POLL).await;
            }
        });
        Ok(pods)
    }

    /// Read the list now (also updating what `mirror` answers).
    pub async fn read_now(&self) -> Result<Vec<Pod>, KubeletError> {
        let list = self.read().await?;
        *self.pods.lock().unwrap_or_else(|e| e.into_inner()) = list.clone();
        Ok(list)
    }

    async fn read(&self) -> Result<Vec<Pod>, KubeletError> {
        let err = |reason: String| KubeletError::Read {
            url: self.url.clone(),
            reason,
        };
        let body = tokio::time::timeout(TIMEOUT, get(&self.url, self.token.as_deref()))
            .await
            .map_err(|_| err(format!("no answer within {TIMEOUT:?}")))?
            .map_err(err)?;
        let list: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| err(format!("not a PodList: {e}")))?;
        serde_json::from_value(list["items"].clone())
            .map_err(|e| err(format!("not a PodList: {e}")))
    }
}

impl MirrorPods for KubeletPods {
    fn mirror(&self, namespace: &str, pod_name: &str) -> Option<MirrorState> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let pod = pods.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(pod_name)
        })?;
        Some(MirrorState {
            hash: pod_hash(pod).map(str::to_string),
            ready: pod_ready(pod),
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn node_ready(&self) -> bool {
        // kubelet answering is the node being up.
        true
    }
}

/// `GET` an http:// URL; the body on 200.
async fn get(url: &str, token: Option<&str>) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, authority);
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    Ok(body)
}
