//! `enjin watch`: follow committed changes until Ctrl-C.

use std::future::Future;
use std::io::Write;

use anyhow::Result;

use super::client;
use crate::args::{Global, Output, WatchArgs};

/// Follow until the server ends the watch or `shutdown` completes (Ctrl-C).
pub async fn run(g: &Global, args: &WatchArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let c = client(g)?;
    let mut watch = c.watch(args.kind, args.from);
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            b = watch.next() => b,
            () = &mut shutdown => return Ok(()),
        };
        let Some(batch) = batch else { return Ok(()) };
        let batch = batch?;
        let mut out = std::io::stdout().lock();
        let written = match g.output {
            Output::Json => writeln!(out, "{}", serde_json::to_string(&batch)?),
            Output::Table => batch.events.iter().try_for_each(|e| {
                let o = &e.object;
                let event_type = match e.event_type {
                    enjin_model::api::EventType::Put => "put",
                    enjin_model::api::EventType::Deleted => "deleted",
                };
                writeln!(
                    out,
                    "{:>6}  {:<7}  {:<17}  {:<20}  {}",
                    batch.revision,
                    event_type,
                    e.kind.name(),
                    o["label"].as_str().unwrap_or("-"),
                    o["uuid"].as_str().unwrap_or("?"),
                )
            }),
        };
        match written.and_then(|()| out.flush()) {
            // The reader went away (`enjin watch | head`): that is the end, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
}
