//! The `enjin` binary: parse arguments, set up logging and the runtime, run, and map errors to
//! exit codes. Everything else lives in the libraries.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use enjin_cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = cli.is_server();
    let default_level = if serving { "info" } else { "warn" };
    // The DNS library logs every query at info: only its warnings are worth a line.
    let filter = EnvFilter::try_from_env("ENJIN_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},hickory_server=warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(enjin_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
