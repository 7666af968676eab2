//! The `staticpod-puller` command: parse the command line, load the configuration, and call
//! into the library. One file per subcommand under `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
