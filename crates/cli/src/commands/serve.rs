//! `enjin up` and `enjin server`: the configuration merged once, then `enjin_node` runs until
//! Ctrl-C or SIGTERM.

use anyhow::Result;
use enjin_node::Mode;

use crate::args::{Global, ServeArgs};
use crate::config;

pub async fn run(g: &Global, args: &ServeArgs, mode: Mode) -> Result<()> {
    let node = config::node_config(g, args, mode)?;
    enjin_node::run(node, shutdown_signal()).await?;
    println!("enjin: stopped cleanly; run it again to resume");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
