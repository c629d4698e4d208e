//! `enjin host add` (a machine that runs its own agent becomes a ring 1 host) and `enjin agent
//! join` (on that machine: join with the token `host add` printed).

use anyhow::{Context, Result, bail};
use enjin_client::Client;
use enjin_control::platform::{SANDBOX_LABEL, Sandbox};
use enjin_model::api::{CreateRequest, JoinTokenCreateRequest, ListQuery};
use enjin_model::kinds::{NetworkInterfaceSpec, NetworkSpec, NodeSpec, Strategy};
use enjin_model::{Kind, Ring};
use uuid::Uuid;

use super::client;
use super::objects::resolve;
use crate::args::{AgentJoinArgs, Global, HostAddArgs, Output};
use crate::{config, output};

/// The label of the ring 1 network the hosts live on (`enjin up` makes it).
const HOSTS_NETWORK: &str = "hosts";

pub async fn add(g: &Global, args: &HostAddArgs) -> Result<()> {
    let c = client(g)?;
    let parent = match &args.parent {
        Some(p) => resolve(&c, Kind::Node, p).await?,
        None => only_machine(&c).await?,
    };
    let network = hosts_network(&c).await?;
    let node = c
        .create(&CreateRequest {
            account: None,
            ring: Ring::INFRASTRUCTURE,
            label: Some(args.name.clone()),
            // The agent joins only as root (`enjin agent join` checks), so it sandboxes.
            labels: [(SANDBOX_LABEL.to_string(), Sandbox::UnixUser.label_value().to_string())].into(),
            spec: NodeSpec { parent: Some(parent), strategy: Some(Strategy::Joined), ..NodeSpec::default() },
        })
        .await
        .with_context(|| format!("failed to create host {}", args.name))?;
    let uuid = node.meta.uuid;
    let rest = async {
        let iface = c
            .create(&CreateRequest {
                account: None,
                ring: Ring::INFRASTRUCTURE,
                label: None,
                labels: Default::default(),
                spec: NetworkInterfaceSpec {
                    network,
                    node: uuid,
                    addresses: args.address.into_iter().collect(),
                    mac: None,
                },
            })
            .await
            .context("failed to give the host its address on the hosts network")?;
        let token = c
            .join_token_create(&JoinTokenCreateRequest {
                ring: Ring::INFRASTRUCTURE,
                parent,
                ttl_seconds: args.ttl,
                node: Some(uuid),
            })
            .await
            .context("failed to issue the host's join token")?;
        anyhow::Ok((iface, token))
    };
    let (iface, token) = match rest.await {
        Ok(r) => r,
        Err(e) => {
            // Nothing half-made stays behind: the node goes (and its interface with it).
            if let Err(undo) = c.delete(Kind::Node, uuid, None).await {
                tracing::warn!(error = %undo, node = %uuid, "could not remove the host again");
            }
            return Err(e);
        }
    };
    let address = iface.spec.addresses.first().map(ToString::to_string).unwrap_or_default();
    let server = config::target(g)?.server;
    match g.output {
        Output::Json => output::json(&serde_json::json!({
            "node": uuid,
            "label": args.name,
            "address": address,
            "join_token": token,
        })),
        Output::Table => {
            println!("host {} ({uuid}) at {address} on the hosts network", args.name);
            println!(
                "the machine needs that address on the hosts network; then, on it, as root, within {}:",
                token.expires_at.to_rfc3339()
            );
            println!("  enjin agent join --server {server} --ca ca.crt --token {}", token.token);
            println!("  enjin agent --ring 1 --dir /var/lib/enjin/agent   (or the unit in dist/)");
        }
    }
    Ok(())
}

/// The ring 0 machine, when the cloud has exactly one.
async fn only_machine(c: &Client) -> Result<Uuid> {
    let q = ListQuery { ring: Some(Ring::META), ..ListQuery::default() };
    let machines = c.list::<NodeSpec>(&q).await?;
    match machines.items.as_slice() {
        [one] => Ok(one.meta.uuid),
        [] => bail!("the cloud has no ring 0 machine to be the host's parent"),
        many => bail!("the cloud has {} ring 0 machines: name the host's parent with --parent", many.len()),
    }
}

async fn hosts_network(c: &Client) -> Result<Uuid> {
    let q = ListQuery {
        ring: Some(Ring::INFRASTRUCTURE),
        label: Some(HOSTS_NETWORK.into()),
        ..ListQuery::default()
    };
    let found = c.list::<NetworkSpec>(&q).await?;
    match found.items.as_slice() {
        [one] => Ok(one.meta.uuid),
        [] => bail!(
            "the cloud has no hosts network (`enjin up` makes one when it runs as root); joined hosts are \
             reached on it"
        ),
        _ => bail!("the cloud has several networks labelled {HOSTS_NETWORK:?}"),
    }
}

pub async fn join(g: &Global, args: &AgentJoinArgs) -> Result<()> {
    let (Some(server), Some(token), Some(ca)) = (&g.server, &g.token, &g.ca) else {
        bail!("`enjin agent join` needs --server, --token (the join token) and --ca (the server's ca.crt)");
    };
    if !enjin_node::hosts::can_netns() {
        bail!(
            "`enjin agent join` must run as root (with iproute2): a host runs its instances in the sandbox"
        );
    }
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("failed to read the CA file {}", ca.display()))?;
    let label = match &args.label {
        Some(l) => l.clone(),
        None => hostname(),
    };
    let joining = enjin_agent::join::Joining::new(&label)?;
    let c = Client::with_ca(server, Some(token.clone()), Some(&ca_pem))?;
    let answer = c.join(&joining.request).await.context("the join was refused")?;
    let file = joining.finish(&args.dir, &answer, args.hub, true)?;
    match g.output {
        Output::Json => output::json(&serde_json::json!({
            "node": file.node,
            "hub": file.hub.to_string(),
            "dir": args.dir,
        })),
        Output::Table => {
            println!("joined ring 1 as host {} (hub {})", file.node, file.hub);
            println!("run it: enjin agent --ring 1 --dir {}", args.dir.display());
        }
    }
    Ok(())
}

/// This machine's name, as a key label (`machine` when it has none that is usable).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 63)
        .unwrap_or_else(|| "machine".into())
}
