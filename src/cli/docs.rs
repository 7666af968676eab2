//! `staticpod-puller completions SHELL` and `staticpod-puller man --out DIR`: shell
//! completions and man pages generated from the command-line definition itself, so they
//! never drift from the flags. The packages install both.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write staticpod-puller.1 and one page per subcommand into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(
        args.shell,
        &mut cmd,
        "staticpod-puller",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut cmd = super::Cli::command();
    // Built, so that each subcommand's page lists the global options (--config, ...) too.
    cmd.build();
    write_page(&cmd, "staticpod-puller", &args.out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("staticpod-puller-{}", sub.get_name());
        write_page(&sub.clone().name(name.clone()), &name, &args.out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_page(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
