//! `enjin <kind> create|list|get|update|delete`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use enjin_client::Client;
use enjin_control::platform::{SANDBOX_LABEL, Sandbox};
use enjin_model::Kind;
use enjin_model::api::ListQuery;
use enjin_model::kinds::{NodeSpec, Strategy};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::client;
use crate::args::{CreateArgs, Global, ListArgs, ObjectCommand, Output, RunArgs, UpdateArgs};
use crate::output;

pub async fn run(g: &Global, kind: Kind, cmd: ObjectCommand) -> Result<()> {
    let c = client(g)?;
    match cmd {
        ObjectCommand::Create(a) => create(g, &c, kind, a).await,
        ObjectCommand::List(a) => list(g, &c, kind, a).await,
        ObjectCommand::Get { id } => {
            let uuid = resolve(&c, kind, &id).await?;
            show(g, &c.get_json(kind, uuid).await?);
            Ok(())
        }
        ObjectCommand::Update(a) => update(g, &c, kind, a).await,
        ObjectCommand::Delete { id, revision } => {
            let uuid = resolve(&c, kind, &id).await?;
            c.delete(kind, uuid, revision).await?;
            if g.output == Output::Table {
                println!("deleted {kind} {id}");
            }
            Ok(())
        }
    }
}

async fn create(g: &Global, c: &Client, kind: Kind, a: CreateArgs) -> Result<()> {
    let mut body = json!({"ring": a.ring, "spec": {}});
    if let Some(f) = &a.content.file {
        let v = read_document(f)?;
        match v.get("spec") {
            // A whole create request.
            Some(_) => body = v,
            None => body["spec"] = v,
        }
        if body.get("ring").is_none() {
            body["ring"] = json!(a.ring);
        }
    }
    if let Some(l) = &a.label {
        body["label"] = json!(l);
    }
    if let Some(account) = &a.account {
        body["account"] = json!(resolve(c, Kind::Account, account).await?);
    }
    if !a.content.labels.is_empty() {
        body["labels"] = json!(parse_labels(&a.content.labels)?);
    }
    for s in &a.content.set {
        set(c, &mut body["spec"], s).await?;
    }
    let obj = c.create_json(kind, &body).await?;
    match g.output {
        Output::Json => output::json(&obj),
        Output::Table => println!(
            "created {kind} {} ({}) at revision {}",
            obj["label"].as_str().unwrap_or("-"),
            obj["uuid"].as_str().unwrap_or("?"),
            obj["revision"]
        ),
    }
    Ok(())
}

async fn update(g: &Global, c: &Client, kind: Kind, a: UpdateArgs) -> Result<()> {
    let uuid = resolve(c, kind, &a.id).await?;
    let current = c.get_json(kind, uuid).await?;
    let mut body = json!({
        "revision": current["revision"],
        "spec": current["spec"],
    });
    if let Some(l) = current.get("label") {
        body["label"] = l.clone();
    }
    if let Some(l) = current.get("labels") {
        body["labels"] = l.clone();
    }
    if let Some(f) = &a.content.file {
        body["spec"] = read_document(f)?;
    }
    if let Some(l) = &a.label {
        body["label"] = json!(l);
    }
    if !a.content.labels.is_empty() {
        let mut labels: BTreeMap<String, String> =
            serde_json::from_value(body.get("labels").cloned().unwrap_or(json!({}))).unwrap_or_default();
        labels.extend(parse_labels(&a.content.labels)?);
        body["labels"] = json!(labels);
    }
    for s in &a.content.set {
        set(c, &mut body["spec"], s).await?;
    }
    let obj = c.update_json(kind, uuid, &body).await?;
    match g.output {
        Output::Json => output::json(&obj),
        Output::Table => println!("updated {kind} {} at revision {}", a.id, obj["revision"]),
    }
    Ok(())
}

async fn list(g: &Global, c: &Client, kind: Kind, a: ListArgs) -> Result<()> {
    let parent_kind = match kind {
        Kind::Compartment => Kind::Compartment,
        _ => Kind::Node,
    };
    let q = ListQuery {
        account: match &a.account {
            Some(id) => Some(resolve(c, Kind::Account, id).await?),
            None => None,
        },
        ring: a.ring,
        compartment: match &a.compartment {
            Some(id) => Some(resolve(c, Kind::Compartment, id).await?),
            None => None,
        },
        tier: match &a.tier {
            Some(id) => Some(resolve(c, Kind::Tier, id).await?),
            None => None,
        },
        label: a.label,
        parent: match &a.parent {
            Some(id) => Some(resolve(c, parent_kind, id).await?),
            None => None,
        },
        selector: a.selector,
    };
    let list = c.list_json(kind, &q).await?;
    if kind == Kind::Node && g.output == Output::Table && !list.items.is_empty() {
        return node_tree(c, &list.items).await;
    }
    match g.output {
        Output::Json => output::json(&list),
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .items
                .iter()
                .map(|o| {
                    let o = serde_json::to_value(o).unwrap_or_default();
                    vec![
                        o["label"].as_str().unwrap_or("-").to_string(),
                        o["uuid"].as_str().unwrap_or("?").to_string(),
                        o["ring"].to_string(),
                        output::age(&o["created_at"]),
                        output::summary(&o["spec"]),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no {}", kind.plural());
            } else {
                output::table(&["LABEL", "UUID", "RING", "AGE", "SPEC"], &rows);
            }
        }
    }
    Ok(())
}

fn show(g: &Global, obj: &Value) {
    match g.output {
        Output::Json => output::json(obj),
        Output::Table => {
            for key in ["kind", "label", "uuid", "ring", "revision", "created_at", "updated_at"] {
                if let Some(v) = obj.get(key) {
                    println!("{key:<11} {}", v.as_str().map_or_else(|| v.to_string(), str::to_string));
                }
            }
            if let Some(l) = obj.get("labels").and_then(Value::as_object) {
                let text: Vec<String> =
                    l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
                println!("{:<11} {}", "labels", text.join(","));
            }
            println!("spec:");
            let spec = serde_json::to_string_pretty(&obj["spec"]).unwrap_or_default();
            for line in spec.lines() {
                println!("  {line}");
            }
        }
    }
}

/// A uuid, or the uuid of the one object of `kind` with that label.
pub async fn resolve(c: &Client, kind: Kind, id: &str) -> Result<Uuid> {
    if let Ok(u) = Uuid::parse_str(id) {
        return Ok(u);
    }
    let q = ListQuery { label: Some(id.to_string()), ..ListQuery::default() };
    let found = c.list_json(kind, &q).await?;
    match found.items.as_slice() {
        [] => bail!("no {kind} is labelled {id:?}: `enjin {kind} list` shows them"),
        [one] => Ok(one.meta.uuid),
        many => {
            let ids: Vec<String> =
                many.iter().map(|o| format!("{} (ring {})", o.meta.uuid, o.meta.ring)).collect();
            bail!("{} {}s are labelled {id:?}; name one by uuid: {}", many.len(), kind, ids.join(", "))
        }
    }
}

/// Spec fields that name other objects, so that `--set parent=m1` can use labels.
fn reference_kind(field: &str) -> Option<Kind> {
    Some(match field {
        "parent" | "node" => Kind::Node,
        "compartment" | "compartments" | "parents" | "links" => Kind::Compartment,
        "tiers" => Kind::Tier,
        "network" => Kind::Network,
        "rule_set" => Kind::AccessRuleSet,
        "account" => Kind::Account,
        "role" => Kind::Role,
        _ => return None,
    })
}

fn is_list_field(field: &str) -> bool {
    matches!(field, "compartments" | "parents" | "links" | "tiers" | "addresses")
}

/// Apply `path=value` to a spec: the value is JSON if it parses, otherwise a string (a
/// comma-separated list for list fields); labels in reference fields become uuids.
async fn set(c: &Client, spec: &mut Value, assignment: &str) -> Result<()> {
    let (path, raw) =
        assignment.split_once('=').ok_or_else(|| anyhow!("--set {assignment:?} is not path=value"))?;
    let field = path.rsplit('.').next().unwrap_or(path);
    let mut value = match serde_json::from_str::<Value>(raw) {
        Ok(v) if !v.is_string() || !is_list_field(field) => v,
        _ if is_list_field(field) => {
            Value::Array(raw.split(',').filter(|s| !s.is_empty()).map(|s| json!(s.trim())).collect())
        }
        _ => json!(raw),
    };
    if let Some(kind) = reference_kind(field) {
        value = match value {
            Value::String(s) => json!(resolve(c, kind, &s).await?),
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    match i {
                        Value::String(s) => out.push(json!(resolve(c, kind, &s).await?)),
                        other => out.push(other),
                    }
                }
                Value::Array(out)
            }
            other => other,
        };
    }
    let mut at = spec;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let map = at.as_object_mut().ok_or_else(|| anyhow!("cannot set {path}"))?;
        if i + 1 == parts.len() {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        at = map.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("label {p:?} is not key=value"))
        })
        .collect()
}

/// A JSON or TOML document from a file, or from stdin for `-`.
fn read_document(path: &Path) -> Result<Value> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("failed to read stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?
    };
    let looks_json = text.trim_start().starts_with('{') || path.extension().is_some_and(|e| e == "json");
    if looks_json {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))
    }
}

/// The strategy `enjin node run` records a node with on a host that sandboxes (or not): what
/// was asked, except that `unix-user` on a host that cannot sandbox becomes `process` — what
/// the host really does — with a warning to say so. The record never claims isolation the
/// host does not give.
fn strategy_on(asked: &str, host: &str, sandbox: Sandbox) -> (String, Option<String>) {
    if asked == Strategy::UnixUser.name() && sandbox == Sandbox::None {
        let warning = format!(
            "warning: host {host} cannot sandbox (its label {SANDBOX_LABEL} is not unix-user: enjin up runs \
             without root): the node runs as a plain process of the operator's user, not isolated, and is \
             recorded with strategy process"
        );
        (Strategy::Process.name().to_string(), Some(warning))
    } else {
        (asked.to_string(), None)
    }
}

/// `enjin node run`: a ring 2 node that runs a command on a ring 1 host.
pub async fn run_node(g: &Global, a: RunArgs) -> Result<()> {
    let c = client(g)?;
    let host = resolve(&c, Kind::Node, &a.host).await?;
    let sandbox = Sandbox::of(&c.get::<NodeSpec>(host).await?.meta.labels);
    let (strategy, warning) = strategy_on(&a.strategy, &a.host, sandbox);
    if let Some(w) = &warning {
        eprintln!("{w}");
    }
    let probe = match a.probe.as_deref() {
        None => Value::Null,
        Some("process") => json!({"strategy": "process"}),
        Some(p) => {
            let (kind, rest) = p
                .split_once(':')
                .ok_or_else(|| anyhow!("--probe {p:?}: use tcp:PORT, http:PORT[/PATH] or process"))?;
            let (port, path) = match rest.split_once('/') {
                Some((port, path)) => (port, Some(format!("/{path}"))),
                None => (rest, None),
            };
            let port: u16 = port.parse().map_err(|_| anyhow!("--probe {p:?}: {port:?} is not a port"))?;
            match kind {
                "tcp" => json!({"strategy": "tcp", "port": port}),
                "http" => {
                    json!({"strategy": "http", "port": port, "path": path.unwrap_or_else(|| "/".into())})
                }
                other => bail!("--probe {p:?}: unknown probe {other:?}"),
            }
        }
    };
    let env = parse_labels(&a.env)?;
    let mut run = json!({
        "command": a.command,
        "env": env,
        "restart": {"kind": a.restart, "max_restarts": a.max_restarts, "period_seconds": a.period},
    });
    if !probe.is_null() {
        run["probe"] = probe;
    }
    let mut resources = Map::new();
    for (k, v) in [("memory_bytes", a.memory), ("cpu_millis", a.cpu_millis), ("pids", a.pids)] {
        if let Some(v) = v {
            resources.insert(k.into(), json!(v));
        }
    }
    let body = json!({
        "ring": 2,
        "label": a.label,
        "spec": {"parent": host, "strategy": strategy, "run": run, "resources": resources},
    });
    let obj = c.create_json(Kind::Node, &body).await?;
    match g.output {
        Output::Json => output::json(&obj),
        Output::Table => println!(
            "node {} ({}) will run on {}; `enjin node-observation list --parent {}` shows how it goes",
            obj["label"].as_str().unwrap_or("?"),
            obj["uuid"].as_str().unwrap_or("?"),
            a.host,
            obj["label"].as_str().unwrap_or("?"),
        ),
    }
    Ok(())
}

/// Nodes as the ring tree (each under its supervisor), with the latest observed state.
async fn node_tree(c: &Client, nodes: &[enjin_model::Object<Value>]) -> Result<()> {
    let observations = c.list_json(Kind::NodeObservation, &ListQuery::default()).await?;
    let mut state: BTreeMap<String, (String, String)> = BTreeMap::new();
    for o in &observations.items {
        let node = o.spec["node"].as_str().unwrap_or_default().to_string();
        let at = o.spec["observed_at"].as_str().unwrap_or_default().to_string();
        let s = o.spec["state"].as_str().unwrap_or("?").to_string();
        if state.get(&node).is_none_or(|(t, _)| *t < at) {
            state.insert(node, (at, s));
        }
    }
    let ids: std::collections::HashSet<String> = nodes.iter().map(|n| n.meta.uuid.to_string()).collect();
    let parent_of = |n: &enjin_model::Object<Value>| n.spec["parent"].as_str().map(str::to_string);
    let mut rows = Vec::new();
    fn walk(
        at: &enjin_model::Object<Value>,
        depth: usize,
        nodes: &[enjin_model::Object<Value>],
        state: &BTreeMap<String, (String, String)>,
        rows: &mut Vec<Vec<String>>,
    ) {
        let uuid = at.meta.uuid.to_string();
        let indent = if depth == 0 { String::new() } else { format!("{}└─ ", "   ".repeat(depth - 1)) };
        rows.push(vec![
            format!("{indent}{}", at.meta.label.as_deref().unwrap_or("-")),
            at.meta.ring.to_string(),
            at.spec["strategy"].as_str().unwrap_or("-").to_string(),
            state.get(&uuid).map_or_else(|| "-".to_string(), |(_, s)| s.clone()),
            uuid.clone(),
            output::age(&serde_json::to_value(at.meta.created_at).unwrap_or_default()),
        ]);
        for child in nodes.iter().filter(|n| n.spec["parent"].as_str() == Some(uuid.as_str())) {
            walk(child, depth + 1, nodes, state, rows);
        }
    }
    for root in nodes.iter().filter(|n| parent_of(n).is_none_or(|p| !ids.contains(&p))) {
        walk(root, 0, nodes, &state, &mut rows);
    }
    output::table(&["NODE", "RING", "STRATEGY", "STATE", "UUID", "AGE"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_run_records_what_the_host_really_does() {
        assert_eq!(strategy_on("unix-user", "h", Sandbox::UnixUser), ("unix-user".to_string(), None));
        let (s, warning) = strategy_on("unix-user", "host-1", Sandbox::None);
        assert_eq!(s, "process");
        assert!(warning.is_some_and(|w| w.contains("host-1") && w.contains("not isolated")));
        assert_eq!(strategy_on("process", "h", Sandbox::None), ("process".to_string(), None));
        assert_eq!(strategy_on("process", "h", Sandbox::UnixUser), ("process".to_string(), None));
    }
}
