//! A simulated kubelet: turns the files of one node's manifest directory into mirror pods,
//! with the timing measured on a real kubelet (DESIGN.md, "Facts measured").
//!
//! Like kubelet it ignores files whose names start with `.`, names mirror pods
//! `<pod name>-<node name>`, annotates them with `kubernetes.io/config.{source,mirror,hash}`,
//! recreates a mirror pod deleted through the API, keeps pod conditions it does not own, and
//! never makes a pod Ready whose image is broken. It also serves its own pod list on a
//! loopback port, as kubelet's `/pods` does, so readiness can be read without the API server,
//! and its runtime's CRI on a Unix socket; or neither, for fleets of thousands in one process,
//! whose agents reach the runtime in-process.

mod conditions;
mod dir_events;
mod local_pods;
mod manifest;
mod mirror;
mod node;
mod state;
mod sync;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use dir_events::DirEvents;
pub use node::node_object;

use super::resource::ResourceKey;
use super::runtime::ImageStore;
use super::store::{Store, Subresource};
use conditions::{condition, merge_conditions};
use local_pods::LocalPods;
use node::set_node_ready;
use state::{State, lock};
use sync::Sync;

/// Delays between a manifest change and what kubelet reports. `realistic()` uses the figures
/// measured on a real kubelet; `fast()` keeps tests quick while keeping the same order of events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// How often the directory is read and the mirror pods checked when nothing else wakes
    /// the kubelet: it reacts to its directory's changes at once (inotify, as kubelet does) and
    /// to each pod's next transition when it is due.
    pub poll: Duration,
    /// New file → mirror pod exists (not yet Ready).
    pub appear: Duration,
    /// Container started → pod Ready.
    pub ready: Duration,
    /// Changed file → the old pod is killed (no longer Ready).
    pub kill: Duration,
    /// Changed file, renamed into place → the new mirror pod appears.
    pub replace_renamed: Duration,
    /// Changed file, rewritten in place → the new mirror pod appears (kubelet notices later).
    pub replace_rewritten: Duration,
    /// Removed file → mirror pod gone.
    pub remove: Duration,
    /// Mirror pod deleted through the API → recreated.
    pub recreate: Duration,
}

impl Timings {
    pub fn realistic() -> Self {
        Timings {
            poll: Duration::from_millis(50),
            appear: Duration::from_millis(50),
            ready: Duration::from_millis(400),
            kill: Duration::from_millis(700),
            replace_renamed: Duration::from_secs(3),
            replace_rewritten: Duration::from_secs(15),
            remove: Duration::from_millis(3500),
            recreate: Duration::from_secs(2),
        }
    }

    pub fn fast() -> Self {
        Timings {
            poll: Duration::from_millis(25),
            appear: Duration::from_millis(20),
            ready: Duration::from_millis(100),
            kill: Duration::from_millis(50),
            replace_renamed: Duration::from_millis(200),
            replace_rewritten: Duration::from_millis(600),
            remove: Duration::from_millis(200),
            recreate: Duration::from_millis(300),
        }
    }
}

/// Images that never become Ready (shared by all kubelets of a dev cluster).
pub type BrokenImages = Arc<RwLock<HashSet<String>>>;

/// A running simulated kubelet.
pub struct Kubelet {
    node: String,
    manifest_dir: PathBuf,
    reporting: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    store: Arc<Store>,
    /// None: no `/pods` endpoint.
    pods_addr: Option<SocketAddr>,
    images: Arc<ImageStore>,
    /// None: the runtime is reached in-process only.
    cri_socket: Option<PathBuf>,
    dir_events: Arc<DirEvents>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.dir_events.unwatch(&self.manifest_dir);
    }
}

/// What the kubelets of one dev cluster share.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub broken: BrokenImages,
    pub dir_events: Arc<DirEvents>,
}

impl Kubelet {
    /// Start a kubelet for `node` reading `manifest_dir`; with `cri_socket`, its local `/pods`
    /// endpoint and its runtime's CRI on that socket too (without, each would cost this
    /// process a file descriptor or more per node).
    pub async fn start(
        shared: Shared,
        node: &str,
        manifest_dir: &Path,
        timings: Timings,
        images: Arc<ImageStore>,
        cri_socket: Option<&Path>,
    ) -> std::io::Result<Kubelet> {
        let Shared {
            store,
            broken,
            dir_events,
        } = shared;
        std::fs::create_dir_all(manifest_dir)?;
        let state = Arc::new(Mutex::new(State::default()));
        let reporting = Arc::new(AtomicBool::new(true));

        let sync = Sync {
            node: node.to_string(),
            dir: manifest_dir.to_path_buf(),
            timings,
            broken: broken.clone(),
            images: images.clone(),
            store: store.clone(),
            state: state.clone(),
            reporting: reporting.clone(),
        };

        // The endpoints first: a port or socket that cannot be had leaves no task running.
        let mut tasks = Vec::new();
        let pods_addr = match cri_socket {
            Some(socket) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                tasks.push(images.serve(socket)?);
                let local = LocalPods {
                    node: node.to_string(),
                    state: state.clone(),
                    broken,
                };
                let app = axum::Router::new().route(
                    "/pods",
                    axum::routing::get(move || {
                        let local = local.clone();
                        async move { axum::Json(local.pod_list(Instant::now())) }
                    }),
                );
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::warn!(error = %e, "simulated kubelet /pods endpoint stopped");
                    }
                }));
                Some(addr)
            }
            None => None,
        };
        let changed = dir_events.watch(manifest_dir);
        tasks.push(tokio::spawn(async move {
            loop {
                let now = Instant::now();
                sync.once(now);
                let due = lock(&sync.state).next_due(now);
                let next = due.map_or(now + timings.poll, |at| at.min(now + timings.poll));
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = changed.notified() => {}
                }
            }
        }));

        Ok(Kubelet {
            node: node.to_string(),
            manifest_dir: manifest_dir.to_path_buf(),
            reporting,
            state,
            store,
            pods_addr,
            images,
            cri_socket: cri_socket.map(Path::to_path_buf),
            dir_events,
            tasks,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    /// The node's container runtime: its images.
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// The node's CRI socket, as `cri.endpoint` takes it; None if it is reached in-process only
    /// ([`ImageStore::in_process_channel`]).
    pub fn cri_endpoint(&self) -> Option<String> {
        self.cri_socket
            .as_ref()
            .map(|s| format!("unix://{}", s.display()))
    }

    /// The kubelet's local pod list, as `http://127.0.0.1:PORT/pods`; None if not served.
    pub fn pods_url(&self) -> Option<String> {
        self.pods_addr.map(|a| format!("http://{a}/pods"))
    }

    /// Take the node NotReady (false) or bring it back (true). A NotReady node's kubelet stops
    /// reporting; as the node lifecycle controller does, its Node and its pods turn not Ready.
    pub fn set_reporting(&self, on: bool) {
        self.reporting.store(on, Ordering::SeqCst);
        // Back from NotReady: mirror pods of files removed meanwhile go at the next tick.
        lock(&self.state).next_sweep = None;
        set_node_ready(&self.store, &self.node, on);
        if !on {
            let pods: Vec<_> = lock(&self.state).pods.values().cloned().collect();
            for pod in pods {
                let _ = self.store.modify(
                    &pods_key(),
                    Some(&pod.namespace),
                    &pod.mirror_name,
                    Subresource::Status,
                    |obj| {
                        merge_conditions(obj, &[condition("Ready", false, Some("NodeNotReady"))]);
                    },
                );
            }
        }
    }

    pub fn is_reporting(&self) -> bool {
        self.reporting.load(Ordering::SeqCst)
    }
}

fn pods_key() -> ResourceKey {
    ResourceKey::core("pods")
}
