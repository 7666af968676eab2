//! `staticpod-puller crd`: print the CRDs generated from the Rust types.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    print!("{}", staticpod_puller::resources::crds_yaml()?);
    Ok(ExitCode::SUCCESS)
}
