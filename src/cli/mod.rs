//! Command-line interface: global flags, logging, and dispatch to one module per subcommand.

mod agent;
mod bundle;
mod config;
mod controller;
mod crd;
mod demo;
mod docs;
mod join;
mod local;
mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use staticpod_puller::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "staticpod-puller",
    version,
    about = "Keeps an edge node's static pods in the state its operators declared (OpenYurt StaticPod / YurtStaticSet)."
)]
pub(crate) struct Cli {
    /// Configuration file [default: /etc/staticpod-puller/config.yaml, defaults if absent].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log level or filter (overrides log.level), e.g. `debug` or `staticpod_puller=debug`.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The node agent daemon: keep this node's static pods in the declared state.
    Run(agent::RunArgs),
    /// One reconcile pass, then exit: 0 when this node matches the desired state.
    Sync(agent::SyncArgs),
    /// Cloud side: coordinate rollouts (grants) and write StaticPod / YurtStaticSet status
    /// (leader-elected).
    Controller(controller::Args),
    /// Operators' view and control of a rollout: status, pause, resume, promote, retry.
    Rollout(rollout::Args),
    /// Print the StaticPod and YurtStaticSet CRDs (one multi-document YAML).
    Crd(crd::Args),
    /// Print the effective configuration (file plus flags), after validating it.
    Config(config::Args),
    /// Run the embedded dev cluster (in-memory API server and simulated kubelets).
    Demo(demo::Args),
    /// Offline bundles: keygen, sign, verify, inspect.
    Bundle(bundle::Args),
    /// This node's pods, from the local agent (NAME READY STATUS HASH NEED-UPGRADE).
    Pods(local::PodsArgs),
    /// Start an OTA upgrade of one static pod through the local agent's API.
    Upgrade(local::UpgradeArgs),
    /// What the local agent believes: objects, local and desired hashes, phases, grants held,
    /// whether the API server answers.
    Status(local::StatusArgs),
    /// Bootstrap this node (run after `yurtadm join`): write the configuration, check the
    /// API server, sync once, enable and start the service.
    Join(join::JoinArgs),
    /// Print a shell completion script.
    Completions(docs::CompletionsArgs),
    /// Write the man pages (packaging).
    #[command(hide = true)]
    Man(docs::ManArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // These need no configuration file: join writes it (and a broken one must not stop its
    // repair); completions and man pages are about the command line.
    let standalone = matches!(
        cli.command,
        Command::Join(_) | Command::Completions(_) | Command::Man(_)
    );
    let config = if standalone {
        Config::default()
    } else {
        match load_config(&cli) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                return if matches!(cli.command, Command::Run(_)) {
                    agent::exit_config()
                } else {
                    ExitCode::from(2)
                };
            }
        }
    };
    // The demo's controller runs in this process: its info lines would land in the middle of
    // the progress table. Warnings still show; --log-level asks for more.
    let mut config = config;
    if matches!(cli.command, Command::Demo(_)) && cli.log_level.is_none() {
        config.log.level = "warn".to_string();
    }
    // A one-shot command reports a failure once, as its own error with context; the client
    // library's log line about the same failure would only come first and confuse.
    let daemon = matches!(cli.command, Command::Run(_) | Command::Controller(_));
    init_logging(&config, daemon);
    let config_path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(staticpod_puller::config::DEFAULT_PATH));
    let result = match cli.command {
        Command::Run(args) => agent::run(args, config),
        Command::Sync(args) => agent::sync(args, config),
        Command::Controller(args) => controller::run(args, config),
        Command::Rollout(args) => rollout::run(args, config),
        Command::Crd(args) => crd::run(args),
        Command::Config(args) => config::run(args, config),
        Command::Demo(args) => demo::run(args),
        Command::Bundle(args) => bundle::run(args),
        Command::Pods(args) => local::pods(args, config),
        Command::Upgrade(args) => local::upgrade(args, config),
        Command::Status(args) => local::status(args, config),
        Command::Join(args) => join::run(args, &config_path),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(
            std::path::Path::new(staticpod_puller::config::DEFAULT_PATH),
            false,
        )?,
    };
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    if let Some(level) = &cli.log_level {
        tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
        config.log.level = level.clone();
    }
    Ok(config)
}

/// Logs go to stderr (stdout carries command output such as `crd`): human lines on a
/// terminal, one JSON object per line with `--log-format json`. Outside the daemons the
/// Kubernetes client's own logs are off unless the level names them (`kube_client=debug`).
fn init_logging(config: &Config, daemon: bool) {
    use std::io::IsTerminal;
    let mut filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !daemon && !config.log.level.contains("kube") {
        for quiet in ["kube_client=off", "kube_runtime=off"] {
            if let Ok(directive) = quiet.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
