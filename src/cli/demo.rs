//! `staticpod-puller demo`: the embedded dev cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use staticpod_puller::config::HumanDuration;
use staticpod_puller::demo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Start the dev cluster and keep it running for kubectl (prints the kubeconfig path).
    #[arg(long)]
    serve: bool,
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=2000))]
    nodes: u16,
    /// Directory for kubeconfigs and node directories [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// API server address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How long a started static pod takes to become Ready.
    #[arg(long, default_value = "400ms", value_name = "DURATION")]
    ready_delay: HumanDuration,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.serve {
        anyhow::bail!(
            "only `demo --serve` is available in this version: the rollout scenario needs the node agent"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo::serve(demo::ServeOptions {
        nodes: args.nodes.into(),
        dir: args.dir,
        listen: args.listen,
        ready_delay: args.ready_delay.0,
    }))?;
    Ok(ExitCode::SUCCESS)
}
