//! `staticpod-puller demo`: the seed scenario on the embedded dev cluster, or `--serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use staticpod_puller::config::HumanDuration;

/// How the demo runs its agents. Its own enum, not the dev cluster's `AgentMode`: the
/// arguments parse in packaged builds too, which carry no dev cluster.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Agents {
    /// One `staticpod-puller run` process per node, as users run it.
    Processes,
    /// Tasks of the demo's process, each with its own client, identity and directories.
    Tasks,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only start the dev cluster and keep it running for kubectl (prints the kubeconfig path).
    #[arg(long)]
    serve: bool,
    /// Number of simulated nodes (with `--agents processes`, one process each: past a few
    /// hundred, use `--agents tasks`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=10000))]
    nodes: u16,
    /// The StaticPod's maxUnavailable (a number or a percentage).
    #[arg(long, default_value = "3", value_name = "N|P%")]
    max_unavailable: String,
    /// How long after its manifest is written an upgraded static pod is Ready (kubelet's
    /// replacement of the old pod included).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    ready_delay: HumanDuration,
    /// How long each node's simulated container runtime takes to pull an image (the agents
    /// pull the new one before they upgrade).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pull_delay: HumanDuration,
    /// Make the new image never become Ready, to show the rollback.
    #[arg(long)]
    bad_image: bool,
    /// How long the agents wait for Ready before rolling back.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    progress_deadline: HumanDuration,
    /// Leave the cluster and agents running after the scenario, for kubectl.
    #[arg(long)]
    keep_running: bool,
    /// Directory for kubeconfigs and node directories [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// API server address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The StaticPod's upgrade strategy: AdvancedRollingUpdate (rolling, bounded by
    /// --max-unavailable) or OTA (each node announces the upgrade; the demo upgrades one node
    /// through its local API).
    #[arg(long, default_value = "AdvancedRollingUpdate", value_name = "STRATEGY")]
    strategy: String,
    /// Run the agents as processes (what users run) or as tasks of this process (own client,
    /// identity and directories each: fleets of thousands fit on one machine).
    #[arg(long, value_enum, default_value = "processes")]
    agents: Agents,
    /// After the rollout, measure the agents' API cost while idle for this long (0s: skip).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    idle_window: HumanDuration,
    /// Log level of the agent processes (their logs go to `DIR/nodes/NODE/agent.log`).
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    agent_log_level: String,
}

/// A packaged build (`--no-default-features`) carries no dev cluster: say so, and how to get one.
#[cfg(not(feature = "dev-cluster"))]
pub fn run(_: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this build of staticpod-puller has no dev cluster (the packages are built without the \
         `dev-cluster` feature, to keep it off edge nodes); run the demo from a source checkout: \
         cargo run --release -- demo"
    )
}

#[cfg(feature = "dev-cluster")]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use staticpod_puller::demo;

    staticpod_puller::resources::MaxUnavailable::parse(Some(&if let Ok(n) =
        args.max_unavailable.parse::<i32>()
    {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)
    } else {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            args.max_unavailable.clone(),
        )
    }))
    .map_err(|e| anyhow::anyhow!("--max-unavailable: {e}"))?;
    let strategy = staticpod_puller::resources::Strategy::parse(Some(&args.strategy))
        .map_err(|e| anyhow::anyhow!("--strategy: {e}"))?;
    let options = demo::DemoOptions {
        nodes: args.nodes.into(),
        dir: args.dir,
        listen: args.listen,
        ready_delay: args.ready_delay.0,
        pull_delay: args.pull_delay.0,
        max_unavailable: args.max_unavailable,
        bad_image: args.bad_image,
        progress_deadline: args.progress_deadline.0,
        keep_running: args.keep_running,
        agent_log_level: args.agent_log_level,
        agents: match args.agents {
            Agents::Processes => demo::AgentMode::Processes,
            Agents::Tasks => demo::AgentMode::Tasks,
        },
        idle_window: args.idle_window.0,
        strategy,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    if args.serve {
        runtime.block_on(demo::serve(options))?;
    } else {
        runtime.block_on(demo::play(options))?;
    }
    Ok(ExitCode::SUCCESS)
}
