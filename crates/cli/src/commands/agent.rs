//! `enjin agent --ring N --dir D`: the agent process (`enjin_agent::process`), stopped
//! gracefully by SIGTERM or Ctrl-C.

use anyhow::Result;
use enjin_agent::process::{self, ProcessConfig};

use crate::args::AgentArgs;

pub async fn run(args: &AgentArgs) -> Result<()> {
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let config = ProcessConfig { ring: args.ring, dir: args.dir.clone() };
    Ok(process::run(config, stop).await?)
}
