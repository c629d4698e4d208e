//! `enjin key list|rotate|revoke` and `enjin join-token create`.

use anyhow::{Result, bail};
use enjin_client::Client;
use enjin_model::Kind;
use enjin_model::api::{JoinTokenCreateRequest, KeyInfo};

use super::client;
use super::objects::resolve;
use crate::args::{Global, JoinTokenCommand, KeyCommand, Output};
use crate::output;

pub async fn run(g: &Global, cmd: KeyCommand) -> Result<()> {
    let c = client(g)?;
    match cmd {
        KeyCommand::List => {
            let list = c.key_list().await?;
            match g.output {
                Output::Json => output::json(&list),
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .items
                        .iter()
                        .map(|k| {
                            vec![
                                k.id[..16.min(k.id.len())].to_string(),
                                k.ring.to_string(),
                                k.role.clone(),
                                k.label.clone(),
                                k.state.clone(),
                                k.not_after.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                                if k.local { "yes".into() } else { "no".into() },
                            ]
                        })
                        .collect();
                    output::table(
                        &["KEY", "RING", "ROLE", "LABEL", "STATE", "ACCEPTED UNTIL", "LOCAL"],
                        &rows,
                    );
                }
            }
        }
        KeyCommand::Rotate { id, overlap } => {
            let id = full_id(&c, &id).await?;
            let new = c.key_rotate(&id, overlap).await?;
            print_key(g, "rotated; new key", &new);
        }
        KeyCommand::Revoke { id } => {
            let id = full_id(&c, &id).await?;
            let k = c.key_revoke(&id).await?;
            print_key(g, "revoked", &k);
        }
    }
    Ok(())
}

pub async fn join_token(g: &Global, cmd: JoinTokenCommand) -> Result<()> {
    let c = client(g)?;
    let JoinTokenCommand::Create { ring, parent, ttl, node } = cmd;
    let parent = resolve(&c, Kind::Node, &parent).await?;
    let node = match node {
        Some(n) => Some(resolve(&c, Kind::Node, &n).await?),
        None => None,
    };
    let t = c.join_token_create(&JoinTokenCreateRequest { ring, parent, ttl_seconds: ttl, node }).await?;
    match g.output {
        Output::Json => output::json(&t),
        Output::Table => {
            println!(
                "join token {} for ring {} under {} (valid until {}, works once):",
                t.id,
                t.ring,
                t.parent,
                t.expires_at.to_rfc3339()
            );
            println!("{}", t.token);
        }
    }
    Ok(())
}

fn print_key(g: &Global, what: &str, k: &KeyInfo) {
    match g.output {
        Output::Json => output::json(k),
        Output::Table => println!("{what} {} ({} of ring {}, {})", k.id, k.label, k.ring, k.state),
    }
}

/// A full key id from a unique prefix.
async fn full_id(c: &Client, prefix: &str) -> Result<String> {
    let list = c.key_list().await?;
    let matches: Vec<&KeyInfo> = list.items.iter().filter(|k| k.id.starts_with(prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => bail!("no key starts with {prefix:?}: `enjin key list` shows them"),
        many => bail!("{} keys start with {prefix:?}; give more of the id", many.len()),
    }
}
