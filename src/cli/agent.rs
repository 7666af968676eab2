//! `staticpod-puller run` (the node agent daemon) and `staticpod-puller sync --once`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use staticpod_puller::agent::{Agent, AgentError};
use staticpod_puller::config::{Config, HumanDuration};

/// Flags that override the configuration file, shared by `run` and `sync`.
#[derive(clap::Args, Debug, Default)]
pub struct AgentFlags {
    /// This node's name (overrides nodeName; default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The agent's own kubeconfig (overrides kubeconfig).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubelet's static pod directory (overrides manifestDir).
    #[arg(long, value_name = "DIR")]
    manifest_dir: Option<PathBuf>,
    /// The agent's state directory (overrides stateDir).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Follow only this namespace; repeatable (overrides namespaces).
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Namespace of the grant Leases (overrides agentNamespace).
    #[arg(long, value_name = "NS")]
    agent_namespace: Option<String>,
    /// Roll back an upgrade not Ready within this (overrides rollout.progressDeadline).
    #[arg(long, value_name = "DURATION")]
    progress_deadline: Option<HumanDuration>,
    /// Slot lease duration (overrides rollout.leaseDuration).
    #[arg(long, value_name = "DURATION")]
    lease_duration: Option<HumanDuration>,
}

impl AgentFlags {
    /// The configuration with these flags applied, validated again.
    pub fn apply(self, mut config: Config) -> anyhow::Result<Config> {
        if let Some(v) = self.node_name {
            config.node_name = v;
        }
        if let Some(v) = self.kubeconfig {
            config.kubeconfig = v;
        }
        if let Some(v) = self.manifest_dir {
            config.manifest_dir = v;
        }
        if let Some(v) = self.state_dir {
            config.state_dir = v;
        }
        if !self.namespaces.is_empty() {
            config.namespaces = self.namespaces;
        }
        if let Some(v) = self.agent_namespace {
            config.agent_namespace = v;
        }
        if let Some(v) = self.progress_deadline {
            config.rollout.progress_deadline = v;
        }
        if let Some(v) = self.lease_duration {
            config.rollout.lease_duration = v;
        }
        // Re-check what the flags changed, naming the flag's key as the file would.
        let yaml = serde_saphyr::to_string(&config)
            .map_err(|e| anyhow::anyhow!("rendering configuration: {e}"))?;
        Ok(Config::parse(
            &yaml,
            std::path::Path::new("command-line flags"),
        )?)
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    flags: AgentFlags,
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// Do one full pass and exit: 0 when the node matches the desired state.
    #[arg(long, required = true)]
    once: bool,
    /// Give up (exit 1, saying what is not converged) after this long.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    timeout: HumanDuration,
    #[command(flatten)]
    flags: AgentFlags,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: an agent is I/O-bound and every edge device runs one; memory matters more.
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `run`'s exit status for a configuration it cannot run with (sysexits' EX_CONFIG). The
/// systemd unit does not restart on it: restarting cannot fix a missing kubeconfig, and a
/// crash loop would bury the message saying what is missing.
pub fn exit_config() -> ExitCode {
    ExitCode::from(78)
}

pub fn run(args: RunArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = match args.flags.apply(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit_config());
        }
    };
    if !config.kubeconfig.is_file() {
        eprintln!(
            "error: no kubeconfig at {}: this node has not been joined yet. Run `staticpod-puller join --kubeconfig FILE ...` (see `man staticpod-puller-join`), or set kubeconfig in the configuration file. Not restarting until the configuration changes.",
            config.kubeconfig.display()
        );
        return Ok(exit_config());
    }
    runtime()?.block_on(async {
        let agent = match Agent::start(config).await {
            Ok(a) => a,
            Err(e @ (AgentError::Config(_) | AgentError::Client { .. })) => {
                eprintln!("error: {e}. Not restarting until the configuration changes.");
                return Ok(exit_config());
            }
            Err(e) => return Err(e.into()),
        };
        agent.serve_local_api().await?;
        agent.serve_metrics().await?;
        agent.watch_drop_dir()?;
        agent.watch_bundle_urls()?;
        tokio::select! {
            r = agent.run() => r?,
            _ = shutdown_signal() => tracing::info!("stopping on signal"),
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

pub fn sync(args: SyncArgs, config: Config) -> anyhow::Result<ExitCode> {
    debug_assert!(args.once, "clap requires --once");
    let config = args.flags.apply(config)?;
    let timeout: Duration = args.timeout.0;
    runtime()?.block_on(async {
        let agent = Agent::start(config).await?;
        match agent.sync_once(timeout).await {
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
