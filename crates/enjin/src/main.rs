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
    match runtime.block_on(enjin_cli::run(cli, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process's one signal handler: SIGINT (Ctrl-C) or SIGTERM asks the running command to
/// stop gracefully. It is installed when first polled, so commands that never wait for it
/// (the API clients) keep the default: a signal ends them at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let on = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = on(SignalKind::interrupt(), "SIGINT") => {}
        () = on(SignalKind::terminate(), "SIGTERM") => {}
    }
    tracing::info!("shutting down");
}
