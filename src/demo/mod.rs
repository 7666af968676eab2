//! `staticpod-puller demo`: the embedded dev cluster for people.
//!
//! Without `--serve` it plays the seed scenario of the OpenYurt StaticPod guide: nodes each
//! holding a hand-placed `nginx.yaml` (nginx:1.19.1), the StaticPod `nginx` created, its
//! template changed to nginx:1.19.2, and real agents (one `staticpod-puller run` process per
//! node, each with its own identity and directories) plus the controller rolling it out, while
//! the demo prints `kubectl get staticpods` as it changes. `--serve` starts the cluster with the
//! CRDs and RBAC installed and keeps it running for kubectl.

mod agents;
mod cluster;
mod grants;
mod ota;
mod progress;
mod scenario;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cluster::bootstrap_objects;
pub use scenario::play;

use crate::resources;
use crate::sim::cluster::DevClusterError;
use cluster::{print_access, start_cluster};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] DevClusterError),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the shipped cluster manifests: {0}")]
    Manifests(String),
    #[error("waiting for a shutdown signal: {0}")]
    Signal(std::io::Error),
    #[error("talking to the dev cluster: {0}")]
    Api(#[from] kube::Error),
    #[error("starting the agent of {node}: {source}")]
    Agent {
        node: String,
        source: std::io::Error,
    },
    #[error("starting the controller process: {0}")]
    Controller(std::io::Error),
    #[error("{0}")]
    Timeout(String),
}

/// Options shared by the scenario and `--serve`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    /// Where kubeconfigs and node directories go; a fresh temporary directory if None.
    pub dir: Option<PathBuf>,
    pub listen: SocketAddr,
    /// How long after its manifest is written an upgraded pod is Ready.
    pub ready_delay: Duration,
    /// How long a node's simulated runtime takes to pull one image.
    pub pull_delay: Duration,
    /// The seed's `maxUnavailable`.
    pub max_unavailable: String,
    /// The new image never becomes Ready: show the rollback.
    pub bad_image: bool,
    /// The agents' progress deadline (how long before rollback).
    pub progress_deadline: Duration,
    /// Keep the cluster (and agents) running after the scenario, for kubectl.
    pub keep_running: bool,
    /// The agents' `log.level`.
    pub agent_log_level: String,
    /// The StaticPod's upgrade strategy.
    pub strategy: resources::Strategy,
    /// Agents as processes (what users run) or as tasks in this process (fleets of thousands).
    pub agents: AgentMode,
    /// How long to measure the agents' API cost while idle after the rollout (0: not).
    pub idle_window: Duration,
}

/// How the demo runs its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// One `staticpod-puller run` process per node, as users run it.
    Processes,
    /// Every agent a task in the demo's process, each with its own client, identity and
    /// directories (no local API or metrics listener): fleets of thousands on one machine.
    Tasks,
}

/// `demo --serve`: start the dev cluster and keep it running until Ctrl-C or SIGTERM.
pub async fn serve(options: DemoOptions) -> Result<(), DemoError> {
    let cluster = start_cluster(&options).await?;
    print_access(&cluster);
    println!("Press Ctrl-C to stop.");
    wait_for_shutdown().await?;
    cluster.shutdown().await;
    Ok(())
}

/// Have a child of the demo (an agent or the controller) killed when the demo dies, however
/// it dies: `kill_on_drop` covers a demo that ends or is interrupted, not one sent SIGTERM
/// or SIGKILL on its own.
fn dies_with_the_demo(command: &mut tokio::process::Command) {
    let demo = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (prctl,
    // getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo may have died before the prctl: then nothing would ever signal.
            if libc::getppid() != demo {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

async fn wait_for_shutdown() -> Result<(), DemoError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DemoError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(DemoError::Signal),
        _ = term.recv() => Ok(()),
    }
}
