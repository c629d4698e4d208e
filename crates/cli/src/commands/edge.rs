//! `enjin edge --dir D`: the edge (`enjin_edge`), stopped gracefully by SIGTERM or Ctrl-C.

use anyhow::Result;

use crate::args::EdgeArgs;

/// `enjin edge --dir D`, stopped gracefully by SIGTERM or Ctrl-C.
pub async fn run(args: &EdgeArgs) -> Result<()> {
    let term = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    Ok(enjin_edge::run(enjin_edge::EdgeConfig { dir: args.dir.clone() }, term).await?)
}
