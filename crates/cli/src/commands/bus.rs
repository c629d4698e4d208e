//! `enjin bus tail <topic>`: verified messages, as the control plane sees them.

use std::future::Future;
use std::io::Write;

use anyhow::{Result, anyhow};

use super::client;
use crate::args::{BusCommand, Global, Output};

/// Tail until the topic ends or `shutdown` completes (Ctrl-C).
pub async fn run(g: &Global, cmd: BusCommand, shutdown: impl Future<Output = ()>) -> Result<()> {
    let BusCommand::Tail { topic, ring } = cmd;
    let c = client(g)?;
    let mut tail = c.bus_tail(ring, &topic).await?;
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            m = tail.next() => m,
            () = &mut shutdown => return Ok(()),
        };
        let Some(m) = next else { return Ok(()) };
        let m = m.map_err(|e| anyhow!("bus tail ended: {e}"))?;
        let mut out = std::io::stdout().lock();
        let written = match g.output {
            Output::Json => writeln!(out, "{}", serde_json::to_string(&m)?),
            Output::Table => writeln!(
                out,
                "{} {} from {} #{}: {}",
                m.timestamp_ms,
                m.topic,
                &m.sender[..16.min(m.sender.len())],
                m.seq,
                m.payload
            ),
        };
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
}
