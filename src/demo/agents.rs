//! The agents: one `staticpod-puller run` process per node, each with its own configuration,
//! identity and directories, logging to its node's directory.

use std::path::PathBuf;

use super::{DemoError, DemoOptions};
use crate::sim::cluster::{DevCluster, SimNode};

/// One agent process per node, killed when dropped.
pub(super) struct Agents {
    pub(super) children: Vec<tokio::process::Child>,
}

fn write_agent_config(node: &SimNode, options: &DemoOptions) -> Result<PathBuf, DemoError> {
    let path = node
        .state_dir
        .parent()
        .unwrap_or(&node.state_dir)
        .join("agent.yaml");
    let text = format!(
        "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: {}\n  leaseDuration: 15s\nlocalApi:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\nlog:\n  level: {:?}\n",
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

pub(super) fn start_agents(
    cluster: &DevCluster,
    options: &DemoOptions,
) -> Result<Agents, DemoError> {
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
        let child = tokio::process::Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DemoError::Agent {
                node: node.name.clone(),
                source,
            })?;
        children.push(child);
    }
    Ok(Agents { children })
}
