//! `enjin token create|list|revoke|attenuate|revoke-derived` and `enjin account status`.

use anyhow::{Context, Result, bail};
use enjin_control::biscuits::{BISCUIT_MARK, Restriction};
use enjin_model::Kind;
use enjin_model::api::TokenCreateRequest;
use enjin_model::kinds::Verb;

use super::client;
use super::objects::resolve;
use crate::args::{Global, Output, TokenCommand};
use crate::output;

/// `90s`, `30m`, `12h`, `30d` (or plain seconds) in seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        digits.parse().map_err(|_| anyhow::anyhow!("{s:?} is not a duration like 90s, 30m, 12h or 30d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{s:?} is not a duration like 90s, 30m, 12h or 30d"),
    };
    n.checked_mul(scale).ok_or_else(|| anyhow::anyhow!("{s:?} is too long"))
}

/// A biscuit named on the command line, or read from standard input for `-`.
fn biscuit_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("failed to read standard input")?;
    Ok(s.trim().to_string())
}

/// `enjin token attenuate`: no server is asked; the biscuit's last block signs the new one.
fn attenuate(
    g: &Global,
    verbs: &[String],
    app: Option<String>,
    expires: Option<&str>,
    checks: Vec<String>,
) -> Result<()> {
    let Some(token) = g.token.as_deref() else {
        bail!("name the biscuit to narrow with --token (or --token - to read it from standard input)");
    };
    let bearer = biscuit_arg(token)?;
    if !bearer.starts_with(BISCUIT_MARK) {
        bail!("--token is not a biscuit (enjinb_…); `enjin token create` prints one beside the token");
    }
    let verbs = verbs
        .iter()
        .map(|v| {
            Verb::CONCRETE.into_iter().find(|c| c.name() == v.trim()).ok_or_else(|| {
                anyhow::anyhow!("{v:?} is not a verb: get, list, create, update, delete, watch")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let expires_at = match expires {
        Some(e) => {
            let secs = i64::try_from(parse_duration(e)?).context("--expires is too long")?;
            Some(chrono::Utc::now() + chrono::TimeDelta::try_seconds(secs).context("--expires is too long")?)
        }
        None => None,
    };
    let restriction = Restriction { verbs, app, expires_at, checks };
    let derived =
        enjin_control::biscuits::attenuate(&bearer, &restriction).context("cannot narrow the biscuit")?;
    match g.output {
        Output::Json => output::json(&serde_json::json!({"biscuit": derived, "expires_at": expires_at})),
        Output::Table => println!("{derived}"),
    }
    Ok(())
}

pub async fn run(g: &Global, cmd: TokenCommand) -> Result<()> {
    if let TokenCommand::Attenuate { verbs, app, expires, checks } = cmd {
        return attenuate(g, &verbs, app, expires.as_deref(), checks);
    }
    let c = client(g)?;
    match cmd {
        TokenCommand::Attenuate { .. } => {}
        TokenCommand::RevokeDerived { biscuit } => {
            c.token_revoke_derived(&biscuit_arg(&biscuit)?).await?;
            if g.output == Output::Table {
                println!("revoked the biscuit and every token derived from it");
            }
        }
        TokenCommand::Create { principal, description, account, role, expires } => {
            let account = match &account {
                Some(a) => Some(resolve(&c, Kind::Account, a).await?),
                None => None,
            };
            let role = match &role {
                Some(r) => Some(resolve(&c, Kind::Role, r).await?),
                None => None,
            };
            let expires_in_seconds = expires.as_deref().map(parse_duration).transpose()?;
            let req = TokenCreateRequest { principal, description, account, role, expires_in_seconds };
            let t = c.token_create(&req).await?;
            match g.output {
                Output::Json => output::json(&t),
                Output::Table => {
                    let until =
                        t.info.expires_at.map_or_else(String::new, |e| format!(", until {}", e.to_rfc3339()));
                    println!(
                        "token {} for principal {} in account {}{until} (shown only now):",
                        t.info.id, t.info.principal, t.info.account
                    );
                    println!("{}", t.token);
                    if let Some(b) = &t.biscuit {
                        println!("as a biscuit, to narrow offline with `enjin token attenuate`:");
                        println!("{b}");
                    }
                }
            }
        }
        TokenCommand::List => {
            let list = c.token_list().await?;
            match g.output {
                Output::Json => output::json(&list),
                Output::Table => {
                    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or_else(|| "-".into(), |t| t.to_rfc3339())
                    };
                    let rows: Vec<Vec<String>> = list
                        .items
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.principal.clone(),
                                t.account.to_string(),
                                t.created_by.clone(),
                                t.created_at.to_rfc3339(),
                                at(t.expires_at),
                                at(t.last_used_at),
                                t.description.clone(),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "ID",
                            "PRINCIPAL",
                            "ACCOUNT",
                            "BY",
                            "CREATED",
                            "EXPIRES",
                            "LAST USED",
                            "DESCRIPTION",
                        ],
                        &rows,
                    );
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

/// `enjin account status [ACCOUNT]`.
pub async fn account_status(g: &Global, account: Option<String>) -> Result<()> {
    let c = client(g)?;
    let mut list = c.account_status().await?;
    if let Some(a) = &account {
        list.items.retain(|s| {
            s.account.meta.label.as_deref() == Some(a.as_str()) || s.account.meta.uuid.to_string() == *a
        });
        if list.items.is_empty() {
            bail!("no account {a:?} that you may read");
        }
    }
    match g.output {
        Output::Json => output::json(&list),
        Output::Table => {
            let limit = |l: Option<u64>| l.map_or_else(|| "-".into(), |l| l.to_string());
            let mut rows = Vec::new();
            for s in &list.items {
                let q = s.account.spec.quota;
                let u = s.usage;
                let name = s.account.meta.label.clone().unwrap_or_else(|| s.account.meta.uuid.to_string());
                for (what, used, max) in [
                    ("apps", u64::from(u.apps), q.apps.map(u64::from)),
                    ("instances", u64::from(u.instances), q.instances.map(u64::from)),
                    ("memory_bytes", u.memory_bytes, q.memory_bytes),
                    ("disk_bytes", u.disk_bytes, q.disk_bytes),
                    ("package_bytes", u.package_bytes, q.package_bytes),
                ] {
                    rows.push(vec![name.clone(), what.to_string(), used.to_string(), limit(max)]);
                }
            }
            output::table(&["ACCOUNT", "QUOTA", "USED", "LIMIT"], &rows);
        }
    }
    Ok(())
}
