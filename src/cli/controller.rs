//! `staticpod-puller controller`: rollout coordination and status, one active replica (leader
//! election).

use std::path::PathBuf;
use std::process::ExitCode;

use staticpod_puller::config::{Config, HumanDuration};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kubeconfig to use [default: the config file's kubeconfig].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease [default: agentNamespace].
    #[arg(long, value_name = "NS")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease [default: the host name].
    #[arg(long)]
    identity: Option<String>,
    /// How long the leader's Lease lasts without renewal.
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    lease_duration: HumanDuration,
    /// Serve Prometheus metrics (reconcile counts and durations, status writes) on this
    /// host:port [default: none].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

pub fn run(args: Args, config: Config) -> anyhow::Result<ExitCode> {
    let kubeconfig = args.kubeconfig.unwrap_or(config.kubeconfig.clone());
    let namespace = args
        .lease_namespace
        .unwrap_or(config.agent_namespace.clone());
    let identity = match args.identity {
        Some(i) => i,
        None => config
            .resolved_node_name()
            .map_err(|e| anyhow::anyhow!("{e}; pass --identity"))?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        if let Some(addr) = args.metrics_listen {
            let bound = staticpod_puller::ota::api::serve_process_metrics(addr).await?;
            tracing::info!(address = %bound, "metrics listening");
        }
        let client = staticpod_puller::kubeclient::from_kubeconfig(&kubeconfig)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", kubeconfig.display()))?;
        tokio::select! {
            _ = staticpod_puller::controller::run(client, &namespace, &identity, args.lease_duration.0) => {}
            _ = super::agent::shutdown_signal() => tracing::info!("stopping on signal"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
