//! The agents: one `staticpod-puller run` process per node, each with its own configuration,
//! identity and directories, logging to its node's directory; or, with `--agents tasks`, the
//! same agents as tasks of the demo's process.

use std::path::PathBuf;

use super::{AgentMode, DemoError, DemoOptions};
use crate::sim::cluster::{DevCluster, SimNode};

/// The running agents, stopped when dropped.
pub(super) struct Agents {
    pub(super) children: Vec<tokio::process::Child>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agents {
    pub(super) fn len(&self) -> usize {
        self.children.len() + self.tasks.len()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn write_agent_config(node: &SimNode, options: &DemoOptions) -> Result<PathBuf, DemoError> {
    let path = node
        .state_dir
        .parent()
        .unwrap_or(&node.state_dir)
        .join("agent.yaml");
    let cri = match node.kubelet.cri_endpoint() {
        Some(endpoint) => format!("  endpoint: {endpoint}\n"),
        None => {
            "  # The demo's agent tasks reach their node's runtime in-process.\n  endpoint: \"\"\n"
                .into()
        }
    };
    let text = format!(
        "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: {}\n  leaseDuration: 15s\nlocalApi:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\ncri:\n{cri}log:\n  level: {:?}\n",
        node.name,
        node.agent_kubeconfig.display(),
        node.manifest_dir.display(),
        node.state_dir.display(),
        crate::config::HumanDuration(options.progress_deadline),
        options.agent_log_level,
    );
    std::fs::write(&path, text).map_err(|source| DemoError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

pub(super) async fn start_agents(
    cluster: &DevCluster,
    options: &DemoOptions,
) -> Result<Agents, DemoError> {
    if options.agents == AgentMode::Tasks {
        return start_agent_tasks(cluster, options).await;
    }
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        path: "current executable".into(),
        source,
    })?;
    let mut children = Vec::new();
    for node in cluster.nodes() {
        let config = write_agent_config(node, options)?;
        let log = node
            .state_dir
            .parent()
            .unwrap_or(&node.state_dir)
            .join("agent.log");
        let log_file = std::fs::File::create(&log).map_err(|source| DemoError::Io {
            path: log.clone(),
            source,
        })?;
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        super::dies_with_the_demo(&mut command);
        let child = command.spawn().map_err(|source| DemoError::Agent {
            node: node.name.clone(),
            source,
        })?;
        children.push(child);
    }
    Ok(Agents {
        children,
        tasks: Vec::new(),
    })
}

/// The agents as tasks: the library's `Agent` with each node's configuration, without the
/// local API and metrics listeners (thousands of ports would mean nothing here).
async fn start_agent_tasks(
    cluster: &DevCluster,
    options: &DemoOptions,
) -> Result<Agents, DemoError> {
    let mut tasks = Vec::new();
    let pipes = cluster.api().pipe_connector();
    for (i, node) in cluster.nodes().iter().enumerate() {
        // A fleet does not boot in one millisecond: thousands of agents listing at once would
        // measure a stampede, not a rollout.
        if i % 10 == 9 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let path = write_agent_config(node, options)?;
        let mut config = crate::config::Config::load(&path, true)
            .map_err(|e| DemoError::Manifests(e.to_string()))?;
        config.local_api.listen = String::new();
        config.metrics.listen = String::new();
        // The API server and the runtime over in-memory pipes: over sockets, a thousand
        // agents' connections exhaust this process's file descriptors.
        let client = crate::sim::apiserver::pipe_client(&config.kubeconfig, pipes.clone())
            .await
            .map_err(|e| DemoError::Manifests(format!("client of {}: {e}", node.name)))?;
        let cri = crate::images::cri::Cri::over(node.kubelet.images().in_process_channel());
        let agent = crate::agent::Agent::start_with_client(config, client, Some(cri))
            .await
            .map_err(|e| DemoError::Manifests(format!("agent of {}: {e}", node.name)))?;
        let name = node.name.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = agent.run().await {
                tracing::error!(node = %name, error = %e, "agent task ended");
            }
        }));
    }
    Ok(Agents {
        children: Vec::new(),
        tasks,
    })
}
