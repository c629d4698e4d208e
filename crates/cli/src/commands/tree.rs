//! `enjin compartment tree`: the compartment DAG drawn in the terminal. A compartment with
//! several parents is drawn in full under its first parent and referred to under the others.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use enjin_model::Kind;
use enjin_model::api::ListQuery;
use serde_json::Value;

use super::client;
use crate::args::{Global, Output};
use crate::output;

#[derive(Debug, Clone)]
struct Entry {
    uuid: String,
    label: String,
    ring: String,
    kind: String,
    parents: Vec<String>,
}

pub async fn run(g: &Global) -> Result<()> {
    let c = client(g)?;
    let list = c.list_json(Kind::Compartment, &ListQuery::default()).await?;
    if g.output == Output::Json {
        output::json(&list);
        return Ok(());
    }
    let entries: Vec<Entry> = list
        .items
        .iter()
        .map(|o| {
            let spec = &o.spec;
            Entry {
                uuid: o.meta.uuid.to_string(),
                label: o.meta.label.clone().unwrap_or_default(),
                ring: o.meta.ring.to_string(),
                kind: spec["type"].as_str().unwrap_or("?").to_string(),
                parents: spec["parents"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    if entries.is_empty() {
        println!("no compartments");
        return Ok(());
    }
    print!("{}", draw(&entries));
    Ok(())
}

fn draw(entries: &[Entry]) -> String {
    let by_id: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.uuid.as_str(), e)).collect();
    let mut children: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        for p in &e.parents {
            children.entry(p.as_str()).or_default().push(e);
        }
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.label.cmp(&b.label));
    }
    let mut roots: Vec<&Entry> =
        entries.iter().filter(|e| e.parents.iter().all(|p| !by_id.contains_key(p.as_str()))).collect();
    roots.sort_by(|a, b| a.label.cmp(&b.label));
    let mut out = String::new();
    let mut drawn = HashSet::new();
    for r in roots {
        walk(r, "", None, &by_id, &children, &mut drawn, &mut out);
    }
    out
}

fn walk<'a>(
    e: &'a Entry,
    prefix: &str,
    branch: Option<bool>,
    by_id: &BTreeMap<&str, &'a Entry>,
    children: &BTreeMap<&str, Vec<&'a Entry>>,
    drawn: &mut HashSet<&'a str>,
    out: &mut String,
) {
    let (connector, child_prefix) = match branch {
        None => (String::new(), String::new()),
        Some(true) => (format!("{prefix}└── "), format!("{prefix}    ")),
        Some(false) => (format!("{prefix}├── "), format!("{prefix}│   ")),
    };
    let seen_before = !drawn.insert(e.uuid.as_str());
    if seen_before {
        let first = e.parents.first().and_then(|p| by_id.get(p.as_str())).map_or("?", |p| p.label.as_str());
        out.push_str(&format!("{connector}{} ↗ (drawn under {first})\n", e.label));
        return;
    }
    out.push_str(&format!("{connector}{} ({}, ring {})\n", e.label, e.kind, e.ring));
    let kids = children.get(e.uuid.as_str()).cloned().unwrap_or_default();
    let n = kids.len();
    for (i, k) in kids.into_iter().enumerate() {
        walk(k, &child_prefix, Some(i + 1 == n), by_id, children, drawn, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(uuid: &str, label: &str, parents: &[&str]) -> Entry {
        Entry {
            uuid: uuid.into(),
            label: label.into(),
            ring: "0".into(),
            kind: "zone".into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn draws_a_dag() {
        let entries = [
            e("1", "eu", &[]),
            e("2", "dc-a", &["1"]),
            e("3", "dc-b", &["1"]),
            e("4", "shared-rack", &["2", "3"]),
        ];
        let text = draw(&entries);
        let expected = "eu (zone, ring 0)\n\
                        ├── dc-a (zone, ring 0)\n\
                        │   └── shared-rack (zone, ring 0)\n\
                        └── dc-b (zone, ring 0)\n    \
                        └── shared-rack ↗ (drawn under dc-a)\n";
        assert_eq!(text, expected);
    }
}
