//! The enjin command line: argument parsing, configuration read once at the edge (flags,
//! environment, `enjin.toml`), and one module per command. It is the application's edge, so it
//! alone (with the binary) uses `anyhow`; it must never touch the store except to start a
//! control plane (`up`, `server`).

#![forbid(unsafe_code)]

mod args;
mod commands;
mod config;
mod contexts;
mod output;

use anyhow::Result;

pub use args::Cli;

/// Run a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    commands::run(cli).await
}
