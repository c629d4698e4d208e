//! The edge as its parent sees it: a ring 1 node of this machine (label `edge`, role `edge`)
//! enrolled like a host, its directory prepared, and the command that runs it (`enjin edge`).

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use enjin_agent::{AgentConfig, AgentFile};
use enjin_control::ControlPlane;
use enjin_control::bus::BusAuthority;
use enjin_edge::{EdgeFile, LABEL, ROLE};
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{NodeSpec, Strategy};
use enjin_model::{Object, Ring};
use enjin_supervisor::{ChildId, ChildSpec};

use crate::hosts::{HostsError, registry, ring1_child};

/// The edge node under `machine`, made once; its directory prepared (identity, certificate,
/// bundle, where to listen); and how to run it.
pub async fn prepare(
    cp: &ControlPlane,
    authority: &Arc<BusAuthority>,
    machine: &Object<NodeSpec>,
    dir: &Path,
    hub: std::net::SocketAddr,
    listen: EdgeFile,
    nats: Option<&crate::hosts::NatsPlan>,
) -> Result<ChildSpec, HostsError> {
    let q = ListQuery { parent: Some(machine.meta.uuid), label: Some(LABEL.into()), ..ListQuery::default() };
    let (found, _) =
        cp.registry().list::<NodeSpec>(&q).await.map_err(registry("failed to find the edge node"))?;
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
            cp.registry().create(req, Utc::now()).await.map_err(registry("failed to create the edge node"))?
        }
    };
    authority
        .enroll_local(node.meta.uuid, LABEL, dir)
        .await
        .map_err(|source| HostsError::Enrol { label: "the edge".into(), source })?;
    if let Some(n) = nats {
        let member = enjin_bus::acl::Member::node(enjin_bus::acl::Role::Edge, &node.meta.uuid.to_string())
            .map_err(|e| HostsError::Nats(e.to_string()))?;
        crate::hosts::write_nats_user(n, &member, dir)?;
    }
    let file = AgentFile {
        ring: 1,
        node: node.meta.uuid,
        hub,
        server_name: "localhost".into(),
        sandbox: false,
        rotate_key_after_seconds: None,
        nats: nats.map(|n| n.local_url.clone()),
    };
    AgentConfig::write(dir, &file)?;
    listen.write(dir)?;
    let exe = std::env::current_exe()
        .map_err(|source| HostsError::Exe { what: "cannot find the enjin binary to run the edge", source })?;
    let command = vec![exe.display().to_string(), "edge".into(), "--dir".into(), dir.display().to_string()];
    let id = ChildId::new(node.meta.uuid.to_string())?;
    Ok(ring1_child(id, command, "info,hickory_server=warn"))
}
