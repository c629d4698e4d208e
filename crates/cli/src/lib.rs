//! The enjin command line: argument parsing, configuration read once at the edge (flags,
//! environment, `enjin.toml`), and one module per command. It is the application's edge, so it
//! alone (with the binary) uses `anyhow`. It runs nothing long-lived itself: `up` and `server`
//! are `enjin_node`, `agent` is `enjin_agent::process`, `edge` is `enjin_edge`, each given the
//! shutdown future the binary passes in; it installs no signal handler.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod args;
mod commands;
mod config;
mod contexts;
mod output;

use std::future::Future;

use anyhow::Result;

pub use args::Cli;

/// Run a parsed command line until it is done or, for the long-running commands, until
/// `shutdown` completes (the binary's one signal handler: SIGINT or SIGTERM).
pub async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    commands::run(cli, shutdown).await
}
