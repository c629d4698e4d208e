//! `enjin login` and `enjin context list|use|current|remove`.

use anyhow::{Context as _, Result, bail};
use enjin_client::Client;

use crate::args::{ContextCommand, Global, LoginArgs, Output};
use crate::config;
use crate::contexts::{self, Contexts, LoginContext};
use crate::output;

/// Check that the server answers and takes the token, then keep both (with the CA) as a
/// context and make it current.
pub async fn login(g: &Global, args: &LoginArgs) -> Result<()> {
    let Some(server) = g.server.as_deref().map(|s| s.trim_end_matches('/').to_string()) else {
        bail!("enjin login needs --server https://HOST:PORT");
    };
    let Some(token) = g.token.clone().filter(|t| !t.is_empty()) else {
        bail!("enjin login needs --token TOKEN (e.g. from `enjin token create NAME`)");
    };
    let ca = login_ca(g, &server)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => contexts::name_for(&server),
    };
    contexts::check_name(&name)?;

    let client = Client::with_ca(&server, Some(token.clone()), ca.as_deref())?;
    client.health().await.with_context(|| format!("{server} does not answer as an enjin server"))?;
    client.check_token().await.with_context(|| format!("{server} does not accept the token"))?;

    let dir = contexts::config_dir()?;
    let mut all = Contexts::load(&dir)?;
    all.upsert(&name, LoginContext { server: server.clone(), token, ca });
    all.save(&dir)?;
    match g.output {
        Output::Json => output::json(&serde_json::json!({"context": name, "server": server})),
        Output::Table => println!("logged in to {server}; context {name} is current"),
    }
    Ok(())
}

/// The CA to keep: `--ca`, else the one of the local data directory when it runs this very
/// server. An `https://` server without either is refused: trusting whatever certificate it
/// shows would defeat the point.
fn login_ca(g: &Global, server: &str) -> Result<Option<String>> {
    if let Some(path) = &g.ca {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the CA file {}", path.display()))?;
        return Ok(Some(pem));
    }
    let local = config::data_dir(g).ok().and_then(|d| config::local_target(&d));
    if let Some(pem) = local.filter(|l| contexts::same_server(&l.server, server)).and_then(|l| l.ca_pem) {
        return Ok(Some(pem));
    }
    if server.starts_with("https://") {
        bail!(
            "no CA for {server}: pass --ca FILE with the server's CA certificate \
             (`<data-dir>/{}` on the machine that runs it)",
            config::CA_FILE
        );
    }
    Ok(None)
}

pub fn context(g: &Global, cmd: ContextCommand) -> Result<()> {
    let dir = contexts::config_dir()?;
    let mut all = Contexts::load(&dir)?;
    match cmd {
        ContextCommand::List => list(g, &all),
        ContextCommand::Current => match &all.current {
            Some(name) => println!("{name}"),
            None => bail!("no current context; `enjin login` makes one"),
        },
        ContextCommand::Use { name } => {
            all.use_context(&name)?;
            all.save(&dir)?;
            println!("context {name} is current");
        }
        ContextCommand::Remove { name } => {
            all.remove(&name)?;
            all.save(&dir)?;
            println!("context {name} removed");
        }
    }
    Ok(())
}

fn list(g: &Global, all: &Contexts) {
    let current = |n: &str| all.current.as_deref() == Some(n);
    match g.output {
        Output::Json => {
            let items: Vec<_> = all
                .contexts
                .iter()
                .map(|(n, c)| {
                    serde_json::json!({"name": n, "server": c.server, "current": current(n), "ca": c.ca.is_some()})
                })
                .collect();
            output::json(&serde_json::json!({ "items": items }));
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = all
                .contexts
                .iter()
                .map(|(n, c)| {
                    vec![if current(n) { "*".into() } else { String::new() }, n.clone(), c.server.clone()]
                })
                .collect();
            output::table(&["CURRENT", "NAME", "SERVER"], &rows);
        }
    }
}
