//! A whole dev cluster: the store, the HTTPS API server, and one simulated kubelet per node,
//! laid out in a directory a person (or a test) can point kubectl and agents at:
//!
//! ```text
//! <dir>/admin.kubeconfig          cluster-admin (system:masters)
//! <dir>/ca.crt                    the API server's CA
//! <dir>/nodes/<node>/manifests/   the node's static pod directory (its kubelet reads it)
//! <dir>/nodes/<node>/state/       a state directory for the node's agent
//! <dir>/nodes/<node>/agent.kubeconfig   the node agent's own identity
//! <dir>/nodes/<node>/cri.sock     the node's container runtime (CRI ImageService)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::apiserver::{ApiServer, ApiServerError, ApiServerOptions, Identity};
use super::error::ApiError;
use super::kubelet::{self, BrokenImages, DirEvents, Kubelet, Timings, node_object};
use super::resource::ResourceKey;
use super::runtime::{ImageStore, UnpullableImages};
use super::store::{DEFAULT_HISTORY, Store};

/// The group every node agent identity belongs to (RBAC binds it).
pub const AGENT_GROUP: &str = "staticpod-puller:agents";

/// The user name of the agent identity of `node`.
pub fn agent_user(node: &str) -> String {
    format!("staticpod-puller:node:{node}")
}

#[derive(Debug, thiserror::Error)]
pub enum DevClusterError {
    #[error("starting the dev cluster's API server: {0}")]
    ApiServer(#[from] ApiServerError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the simulated kubelet of {node}: {source}")]
    Kubelet {
        node: String,
        source: std::io::Error,
    },
    #[error("registering {what}: {source}")]
    Register { what: String, source: ApiError },
    #[error("building a client from {path}: {reason}")]
    Client { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct DevClusterOptions {
    /// Number of simulated nodes, named `<node_prefix><i>` from 1.
    pub nodes: usize,
    pub node_prefix: String,
    /// Where kubeconfigs and node directories are written.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub timings: Timings,
    /// Changes kept for watches to resume from (older resourceVersions get 410 Gone).
    pub history: usize,
    /// How long a simulated runtime takes to pull one image.
    pub pull_delay: Duration,
    /// Images every node has from the start.
    pub preloaded: Vec<String>,
    /// Whether each node serves its kubelet's `/pods` on a loopback port and its runtime's CRI
    /// on a Unix socket, as a real node does (the default). Without, they are reached
    /// in-process only: a fleet of thousands in one process would otherwise hold four file
    /// descriptors a node (listener, socket, and both ends of each agent's connection).
    pub sockets: bool,
}

impl DevClusterOptions {
    pub fn new(dir: &Path, nodes: usize) -> Self {
        DevClusterOptions {
            nodes,
            node_prefix: "edge-node-".to_string(),
            dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            timings: Timings::fast(),
            history: DEFAULT_HISTORY,
            pull_delay: Duration::ZERO,
            preloaded: Vec::new(),
            sockets: true,
        }
    }
}

/// One simulated node: its kubelet and the paths its agent uses.
pub struct SimNode {
    pub name: String,
    pub manifest_dir: PathBuf,
    pub state_dir: PathBuf,
    pub agent_kubeconfig: PathBuf,
    pub kubelet: Kubelet,
}

pub struct DevCluster {
    store: Arc<Store>,
    api: ApiServer,
    nodes: Vec<SimNode>,
    dir: PathBuf,
    admin_kubeconfig: PathBuf,
    broken: BrokenImages,
    unpullable: UnpullableImages,
    timings: Timings,
    pull_delay: Duration,
    preloaded: Vec<String>,
    sockets: bool,
    dir_events: Arc<DirEvents>,
}

impl DevCluster {
    pub async fn start(options: DevClusterOptions) -> Result<DevCluster, DevClusterError> {
        let store = Store::new(options.history);
        let admin_token = random_token();
        let mut tokens = std::collections::HashMap::new();
        tokens.insert(
            admin_token.clone(),
            Identity {
                user: "admin".to_string(),
                groups: vec!["system:masters".to_string()],
            },
        );
        let api = ApiServer::start(
            store.clone(),
            ApiServerOptions {
                listen: options.listen,
                tokens,
            },
        )
        .await?;
        write(&options.dir.join("ca.crt"), api.ca_pem())?;
        let admin_kubeconfig = options.dir.join("admin.kubeconfig");
        write(&admin_kubeconfig, &api.kubeconfig(&admin_token, "admin"))?;
        let mut cluster = DevCluster {
            store,
            api,
            nodes: Vec::new(),
            dir: options.dir.clone(),
            admin_kubeconfig,
            broken: Arc::new(RwLock::new(Default::default())),
            unpullable: Arc::new(RwLock::new(Default::default())),
            timings: options.timings,
            pull_delay: options.pull_delay,
            preloaded: options.preloaded.clone(),
            sockets: options.sockets,
            dir_events: DirEvents::new(),
        };
        for i in 1..=options.nodes {
            cluster
                .add_node(&format!("{}{i}", options.node_prefix))
                .await?;
        }
        Ok(cluster)
    }

    /// Register a node, start its kubelet and write its agent's kubeconfig.
    pub async fn add_node(&mut self, name: &str) -> Result<&SimNode, DevClusterError> {
        let node_dir = self.dir.join("nodes").join(name);
        let manifest_dir = node_dir.join("manifests");
        let state_dir = node_dir.join("state");
        for d in [&manifest_dir, &state_dir] {
            std::fs::create_dir_all(d).map_err(|source| DevClusterError::Write {
                path: d.clone(),
                source,
            })?;
        }
        let index = self.nodes.len();
        match self.store.create(
            &ResourceKey::core("nodes"),
            None,
            node_object(name, index),
            &(),
        ) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(source) => {
                return Err(DevClusterError::Register {
                    what: format!("node {name}"),
                    source,
                });
            }
        }
        let token = random_token();
        let user = agent_user(name);
        self.api.add_token(
            &token,
            Identity {
                user: user.clone(),
                groups: vec![AGENT_GROUP.to_string(), "system:authenticated".to_string()],
            },
        );
        let agent_kubeconfig = node_dir.join("agent.kubeconfig");
        write(&agent_kubeconfig, &self.api.kubeconfig(&token, &user))?;
        let images = ImageStore::new(self.pull_delay, self.unpullable.clone());
        for image in &self.preloaded {
            images.preload(image);
        }
        let shared = kubelet::Shared {
            store: self.store.clone(),
            broken: self.broken.clone(),
            dir_events: self.dir_events.clone(),
        };
        let kubelet = Kubelet::start(
            shared,
            name,
            &manifest_dir,
            self.timings,
            images,
            self.sockets.then(|| node_dir.join("cri.sock")).as_deref(),
        )
        .await
        .map_err(|source| DevClusterError::Kubelet {
            node: name.to_string(),
            source,
        })?;
        self.nodes.push(SimNode {
            name: name.to_string(),
            manifest_dir,
            state_dir,
            agent_kubeconfig,
            kubelet,
        });
        Ok(&self.nodes[index])
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&SimNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Make pods with this image never become Ready (they report CrashLoopBackOff), or heal it.
    pub fn set_broken_image(&self, image: &str, broken: bool) {
        let mut set = self.broken.write().unwrap_or_else(|e| e.into_inner());
        if broken {
            set.insert(image.to_string());
        } else {
            set.remove(image);
        }
    }

    /// Make `image` one no registry has (true): a pull of it fails as not found.
    pub fn set_unpullable_image(&self, image: &str, unpullable: bool) {
        let mut set = self.unpullable.write().unwrap_or_else(|e| e.into_inner());
        if unpullable {
            set.insert(image.to_string());
        } else {
            set.remove(image);
        }
    }

    /// Create objects as cluster-admin would (CRDs, namespaces, RBAC), skipping existing ones.
    pub fn apply(&self, objects: &[Value]) -> Result<(), DevClusterError> {
        for obj in objects {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let kind = obj["kind"].as_str().unwrap_or_default();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let what = format!("{kind} {name}");
            let rt = self
                .store
                .resource_for_kind(group, version, kind)
                .ok_or_else(|| DevClusterError::Register {
                    what: what.clone(),
                    source: ApiError::not_found_path(&format!("{api_version} {kind}")),
                })?;
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .or(rt.namespaced.then_some("default"));
            match self.store.create(&rt.key(), ns, obj.clone(), &()) {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(source) => return Err(DevClusterError::Register { what, source }),
            }
        }
        Ok(())
    }

    /// A `kube::Client` with cluster-admin rights, over HTTPS like any other client.
    pub async fn admin_client(&self) -> Result<kube::Client, DevClusterError> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    pub async fn shutdown(self) {
        drop(self.nodes);
        self.api.shutdown().await;
    }
}

/// A `kube::Client` from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, DevClusterError> {
    crate::kubeclient::from_kubeconfig(path)
        .await
        .map_err(|reason| DevClusterError::Client {
            path: path.to_path_buf(),
            reason,
        })
}

fn write(path: &Path, contents: &str) -> Result<(), DevClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = (|| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Kubeconfigs hold bearer tokens: owner-only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut f, contents.as_bytes())
    })();
    result.map_err(|source| DevClusterError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn random_token() -> String {
    // A counter keeps tokens distinct even if the random source ever fell back to the clock.
    static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let hex: String = super::store::random_bytes::<24>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}{n:x}")
}
