//! `enjin token create|list|revoke`.

use anyhow::Result;

use super::client;
use crate::args::{Global, Output, TokenCommand};
use crate::output;

pub async fn run(g: &Global, cmd: TokenCommand) -> Result<()> {
    let c = client(g)?;
    match cmd {
        TokenCommand::Create { principal, description } => {
            let t = c.token_create(&principal, &description).await?;
            match g.output {
                Output::Json => output::json(&t),
                Output::Table => {
                    println!("token {} for principal {} (shown only now):", t.info.id, t.info.principal);
                    println!("{}", t.token);
                }
            }
        }
        TokenCommand::List => {
            let list = c.token_list().await?;
            match g.output {
                Output::Json => output::json(&list),
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .items
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.principal.clone(),
                                t.created_at.to_rfc3339(),
                                t.description.clone(),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "PRINCIPAL", "CREATED", "DESCRIPTION"], &rows);
                }
            }
        }
        TokenCommand::Revoke { id } => {
            c.token_revoke(id).await?;
            if g.output == Output::Table {
                println!("revoked token {id}");
            }
        }
    }
    Ok(())
}
