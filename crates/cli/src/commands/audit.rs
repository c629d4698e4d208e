//! `enjin audit [--since 1h] [--principal P] [--limit N]`: who changed what, newest first.

use anyhow::Result;
use chrono::Utc;
use enjin_model::api::{AuditQuery, AuditRecord};

use super::apps::since;
use super::client;
use crate::args::{AuditArgs, Global, Output};
use crate::output;

pub async fn run(g: &Global, args: &AuditArgs) -> Result<()> {
    let q = AuditQuery {
        since: args.since.as_deref().map(|s| since(s, Utc::now())).transpose()?,
        principal: args.principal.clone(),
        limit: Some(args.limit),
    };
    let list = client(g)?.audit(&q).await?;
    match g.output {
        Output::Json => output::json(&list),
        Output::Table => {
            let rows: Vec<Vec<String>> = list.items.iter().map(row).collect();
            output::table(&["TIME", "PRINCIPAL", "SOURCE", "VERB", "OBJECT", "STATUS"], &rows);
        }
    }
    Ok(())
}

fn row(r: &AuditRecord) -> Vec<String> {
    vec![
        r.time.format("%Y-%m-%d %H:%M:%S").to_string(),
        r.principal.clone(),
        r.source.map_or_else(|| "-".to_string(), |s| s.to_string()),
        r.verb.name().to_string(),
        object(r),
        format!("{} {}", r.status, r.result.name()),
    ]
}

/// `node/0b9e4f3c`; without a uuid, the kind and the path (`release /v1/apps/web/deploys`).
fn object(r: &AuditRecord) -> String {
    match r.object.uuid {
        Some(u) => format!("{}/{}", r.object.kind, &u.simple().to_string()[..8]),
        None => format!("{} {}", r.object.kind, r.path),
    }
}
