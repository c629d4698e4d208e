//! This machine as the ring 0 node: its label (the host name) and its resources.

use chrono::Utc;
use enjin_control::ControlPlane;
use enjin_model::api::{CreateRequest, ListQuery};
use enjin_model::kinds::{NodeSpec, Resources};
use enjin_model::{Object, Ring};

use crate::NodeError;

/// This machine as the ring 0 node, created once and found again on later starts.
pub(crate) async fn register(cp: &ControlPlane) -> Result<Object<NodeSpec>, NodeError> {
    let label = label();
    let q = ListQuery { ring: Some(Ring::META), label: Some(label.clone()), ..ListQuery::default() };
    let (found, _) = cp.registry().list::<NodeSpec>(&q).await.map_err(|source| NodeError::Registry {
        what: format!("failed to look for ring 0 node {label}"),
        source,
    })?;
    if let Some(node) = found.into_iter().next() {
        return Ok(node);
    }
    let spec = NodeSpec { resources: resources(), ..NodeSpec::default() };
    let labels = [("enjin.dev/role".to_string(), "machine".to_string())].into();
    let req = CreateRequest { account: None, ring: Ring::META, label: Some(label.clone()), labels, spec };
    let node = cp.registry().create(req, Utc::now()).await.map_err(|source| NodeError::Registry {
        what: format!("failed to register this machine as ring 0 node {label}"),
        source,
    })?;
    tracing::info!(uuid = %node.meta.uuid, %label, "registered this machine as a ring 0 node");
    Ok(node)
}

/// The host name, made into a valid label.
pub(crate) fn label() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    sanitize_label(raw.trim())
}

fn sanitize_label(raw: &str) -> String {
    let mapped: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() { "machine".into() } else { trimmed.into() }
}

fn resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    Resources { cpu_millis: Some(cpus * 1000), memory_bytes: memory, disk_bytes: None, pids: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_labels() {
        assert_eq!(sanitize_label("Build-Box.local"), "build-box.local");
        assert_eq!(sanitize_label("--weird host!"), "weird-host");
        assert_eq!(sanitize_label(""), "machine");
        assert!(enjin_model::validate_label(&sanitize_label(&"x".repeat(100))).is_ok());
    }
}
