//! `enjin bus tail <topic>`: verified messages, as the control plane sees them.

use std::io::Write;

use anyhow::{Result, anyhow};

use super::client;
use crate::args::{BusCommand, Global, Output};

pub async fn run(g: &Global, cmd: BusCommand) -> Result<()> {
    let BusCommand::Tail { topic, ring } = cmd;
    let c = client(g)?;
    let mut tail = c.bus_tail(ring, &topic).await?;
    loop {
        let next = tokio::select! {
            m = tail.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
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
