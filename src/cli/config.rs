//! `staticpod-puller config`: show the configuration the agent would run with.

use std::process::ExitCode;

use staticpod_puller::config::Config;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, config: Config) -> anyhow::Result<ExitCode> {
    let yaml = serde_saphyr::to_string(&config)
        .map_err(|e| anyhow::anyhow!("rendering the configuration as YAML: {e}"))?;
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}
