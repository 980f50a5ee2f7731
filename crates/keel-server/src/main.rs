//! `keel`: `keel serve` runs a node; `keel put/get/del/cas/status/leader` are clients.

use clap::Parser;
use keel_server::cli::{self, Cli, CommandLine};
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprint!("{}", error.render());
            return ExitCode::from(cli::EXIT_USAGE);
        }
        Err(error) => {
            eprintln!("{}", cli::one_line_usage_error(&error));
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    let code = match cli.command {
        CommandLine::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the tokio runtime");
            let code = runtime.block_on(cli::serve(args));
            runtime.shutdown_timeout(Duration::from_secs(1));
            code
        }
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the tokio runtime");
            runtime.block_on(cli::run_client(command))
        }
    };
    ExitCode::from(code)
}
