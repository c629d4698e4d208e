//! The ring 1 edge as `enjin up` sees it: a ring 1 node (label `edge`, `enjin.dev/role=edge`)
//! enrolled like a host, its directory prepared, and supervised as `enjin edge --dir D`, whose
//! runtime is `enjin_edge`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile};
use enjin_control::ControlPlane;
use enjin_control::bus::BusAuthority;
pub use enjin_edge::{EdgeFile, LABEL, Listening, ROLE};
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{NodeSpec, Strategy};
use enjin_model::{Object, Ring};
use enjin_supervisor::{ChildId, ChildSpec};

use crate::args::EdgeArgs;

/// The edge node under `machine`, made once; its directory prepared (identity, certificate,
/// bundle, where to listen); and how to run it.
pub async fn prepare(
    cp: &ControlPlane,
    authority: &Arc<BusAuthority>,
    machine: &Object<NodeSpec>,
    dir: &Path,
    hub: SocketAddr,
    listen: EdgeFile,
) -> Result<ChildSpec> {
    let q = ListQuery { parent: Some(machine.meta.uuid), label: Some(LABEL.into()), ..ListQuery::default() };
    let (found, _) = cp.registry().list::<NodeSpec>(&q).await?;
    let node = match found.into_iter().next() {
        Some(n) => n,
        None => {
            let spec = NodeSpec {
                parent: Some(machine.meta.uuid),
                strategy: Some(Strategy::Process),
                ..NodeSpec::default()
            };
            let labels = [(ROLE.0.to_string(), ROLE.1.to_string())].into();
            let req = CreateRequest {
                account: None,
                ring: Ring::INFRASTRUCTURE,
                label: Some(LABEL.into()),
                labels,
                spec,
            };
            cp.registry().create(req, Utc::now()).await.context("failed to create the edge node")?
        }
    };
    authority.enroll_local(node.meta.uuid, LABEL, dir).await.context("failed to enrol the edge")?;
    let file = AgentFile {
        ring: 1,
        node: node.meta.uuid,
        hub,
        server_name: "localhost".into(),
        sandbox: false,
        rotate_key_after_seconds: None,
    };
    AgentConfig::write(dir, &file)?;
    listen.write(dir)?;
    let exe = std::env::current_exe().context("cannot find the enjin binary to run the edge")?;
    let command = vec![exe.display().to_string(), "edge".into(), "--dir".into(), dir.display().to_string()];
    let id = ChildId::new(node.meta.uuid.to_string())?;
    Ok(super::hosts::ring1_child(id, command, "info,hickory_server=warn"))
}

/// Where the edge in `dir` listens, once it does (the running process's own word).
pub async fn wait_listening(dir: &Path, patience: Duration) -> Result<Listening> {
    Ok(enjin_edge::wait_listening(dir, patience).await?)
}

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
