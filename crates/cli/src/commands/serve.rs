//! `enjin up` and `enjin server`: the configuration merged once, then `enjin_node` runs until
//! the shutdown signal.

use std::future::Future;

use anyhow::Result;
use enjin_node::Mode;

use crate::args::{Global, ServeArgs};
use crate::config;

pub async fn run(
    g: &Global,
    args: &ServeArgs,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = config::node_config(g, args, mode)?;
    enjin_node::run(node, shutdown).await?;
    println!("enjin: stopped cleanly; run it again to resume");
    Ok(())
}
