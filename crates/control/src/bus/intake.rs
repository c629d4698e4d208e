//! Intake: what the ring's nodes report on the bus. Every verified message is decoded once into
//! a [`Report`], a closed set of the kinds the control plane acts on, and handled by one task
//! (the monitor) in the order it arrived; each report is stored only when it comes from the key
//! bound to the node it is about (or to that node's supervisor).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::KeyId;
use enjin_bus::trust::{TRUST_UPDATE_TOPIC, Verifier};
use enjin_model::Ring;
use enjin_model::api::{
    BusMessage, CreateRequest, EdgeReport, HostStats, InstanceStats, ListQuery, ObservationReport,
    UpdateRequest,
};
use enjin_model::kinds::{NodeObservationSpec, NodeSpec};
use uuid::Uuid;

use super::{BusAuthority, BusError, KeyRecord, STATS_STALE_AFTER, key_key, now_ms};
use crate::registry::RegistryError;

/// A verified message, by what it is.
#[derive(Debug)]
pub(super) enum Report {
    /// A parent key's change to the ring's trust: applied to the monitor's verifier.
    Trust,
    /// `observe.<node>`: a node's state, from its agent or the agent supervising it.
    Observation(ObservationReport),
    /// `stats.<host>`: a host's and its instances' use.
    Stats(HostStats),
    /// `edge.<node>`: an edge node's router and DNS figures.
    Edge(EdgeReport),
    /// Anything else: only shown to tails.
    Other,
}

/// Why a report was not taken.
fn invalid(e: &serde_json::Error) -> BusError {
    BusError::Invalid { field: "payload", message: e.to_string() }
}

impl Report {
    /// Decodes `env` by its topic; a report about a node other than the one its topic names is
    /// refused here, before anything is looked up.
    pub(super) fn decode(env: &Envelope) -> Result<Report, BusError> {
        let topic = env.topic();
        let payload = env.payload();
        let (kind, node) = topic.split_once('.').unwrap_or((topic, ""));
        let report = match kind {
            _ if topic == TRUST_UPDATE_TOPIC => return Ok(Report::Trust),
            "observe" => Report::Observation(serde_json::from_slice(payload).map_err(|e| invalid(&e))?),
            "stats" => Report::Stats(serde_json::from_slice(payload).map_err(|e| invalid(&e))?),
            "edge" => Report::Edge(serde_json::from_slice(payload).map_err(|e| invalid(&e))?),
            _ => return Ok(Report::Other),
        };
        let about = match &report {
            Report::Observation(r) => r.node,
            Report::Stats(r) => r.node,
            Report::Edge(r) => r.node,
            Report::Trust | Report::Other => return Ok(report),
        };
        if node.parse::<Uuid>().ok() != Some(about) {
            return Err(BusError::Refused("the report's node does not match its topic".into()));
        }
        Ok(report)
    }
}

impl BusAuthority {
    /// Verify everything on the bus: count it, follow trust updates, take reports, relay every
    /// verified message to tails.
    pub(super) async fn monitor(
        self: Arc<Self>,
        mut sub: enjin_bus::transport::Subscription,
        mut verifier: Verifier,
    ) {
        while let Some(m) = sub.next().await {
            let now = now_ms();
            let env = match verifier.accept(&m.payload, now) {
                Ok(env) => env,
                Err(reason) => {
                    tracing::debug!(topic = %m.topic, reason = reason.label(), "bus message rejected");
                    continue;
                }
            };
            let taken = match Report::decode(&env) {
                Ok(Report::Trust) => {
                    if let Err(e) = verifier.apply_update(&env, now) {
                        tracing::warn!(error = %e, "trust update not applied");
                    }
                    continue;
                }
                Ok(Report::Observation(r)) => self.record_observation(&env.sender(), r).await,
                Ok(Report::Stats(r)) => self.record_stats(&env.sender(), r).await,
                Ok(Report::Edge(r)) => self.record_edge(&env.sender(), r).await,
                Ok(Report::Other) => Ok(()),
                Err(e) => Err(e),
            };
            match taken {
                Ok(()) => {}
                // The last words of a node just deleted (an instance stopped by a rollout).
                Err(BusError::Registry(RegistryError::NotFound { .. })) => {
                    tracing::debug!(topic = %env.topic(), "report on a deleted node dropped");
                }
                Err(e @ (BusError::Refused(_) | BusError::Invalid { .. })) => {
                    tracing::debug!(topic = %env.topic(), sender = %env.sender().short(), error = %e, "report refused");
                }
                Err(e) => {
                    tracing::warn!(topic = %env.topic(), sender = %env.sender().short(), error = %e, "report not stored");
                }
            }
            self.relay(&env);
        }
        tracing::info!(ring = self.ring, "bus monitor stopped");
    }

    /// Show `env` to `enjin bus tail`; no tail listening is fine.
    fn relay(&self, env: &Envelope) {
        let (payload, encoding) = match std::str::from_utf8(env.payload()) {
            Ok(text) => (text.to_string(), "utf-8"),
            Err(_) => (env.payload().iter().map(|b| format!("{b:02x}")).collect(), "hex"),
        };
        let msg = BusMessage {
            ring: Ring::new(i64::from(env.ring())).unwrap_or(Ring::INFRASTRUCTURE),
            topic: env.topic().to_string(),
            sender: env.sender().to_string(),
            seq: env.seq(),
            timestamp_ms: env.timestamp_ms(),
            reply_to: env.reply_to().map(str::to_string),
            payload,
            encoding: encoding.into(),
        };
        let _ = self.messages.send(msg);
    }

    /// Store an agent's report as the node's observation for that strategy. A key may report
    /// only on the node it is bound to and on the nodes that node supervises.
    pub(super) async fn record_observation(
        &self,
        sender: &KeyId,
        report: ObservationReport,
    ) -> Result<(), BusError> {
        let Some(reporter) = self.node_of_key(sender).await? else {
            return Err(BusError::Refused("the sender's key is bound to no node".into()));
        };
        let node = self.registry.get::<NodeSpec>(report.node).await?;
        if report.node != reporter && node.spec.parent != Some(reporter) {
            return Err(BusError::Refused(format!(
                "node {reporter} does not supervise node {}",
                report.node
            )));
        }
        self.store_observation(report, node.meta.ring).await
    }

    /// Store `report` as its node's observation for that strategy (one per node and strategy,
    /// updated in place), for observers in this process (the ring 0 supervisor of hosts).
    pub async fn store_observation(&self, report: ObservationReport, ring: Ring) -> Result<(), BusError> {
        let spec = NodeObservationSpec {
            node: report.node,
            strategy: report.strategy,
            state: report.state,
            observed_at: report.observed_at,
            message: report.message,
        };
        let q = ListQuery { parent: Some(report.node), ..ListQuery::default() };
        let (existing, _) = self.registry.list::<NodeObservationSpec>(&q).await?;
        let now = Utc::now();
        match existing.into_iter().find(|o| o.spec.strategy == spec.strategy) {
            Some(o) => {
                let req =
                    UpdateRequest { revision: o.meta.revision, label: None, labels: o.meta.labels, spec };
                self.registry.update(o.meta.uuid, req, now).await?;
            }
            None => {
                let req =
                    CreateRequest { account: None, ring, label: None, labels: Default::default(), spec };
                self.registry.create(req, now).await?;
            }
        }
        Ok(())
    }

    /// The node a key of this ring is bound to: from the admission table the hub checks
    /// members against (rebuilt with every bundle), or the store for a key newer than the table.
    pub(super) async fn node_of_key(&self, key: &KeyId) -> Result<Option<Uuid>, BusError> {
        let known = self.admitted.read().ok().and_then(|t| t.node_of(key));
        if let Some(node) = known {
            return Ok(node);
        }
        let kv = self.store.get(&key_key(self.ring, key)).await?;
        Ok(kv.and_then(|kv| serde_json::from_slice::<KeyRecord>(&kv.value).ok()).and_then(|r| r.node))
    }

    /// Keep a host's use report, if it comes from the key bound to that host.
    async fn record_stats(&self, sender: &KeyId, report: HostStats) -> Result<(), BusError> {
        if self.node_of_key(sender).await? != Some(report.node) {
            return Err(BusError::Refused(format!("the sender's key is not bound to node {}", report.node)));
        }
        if let Ok(mut stats) = self.host_stats.lock() {
            stats.insert(report.node, report);
        }
        Ok(())
    }

    /// Keep an edge node's report, if it comes from the key bound to that node.
    async fn record_edge(&self, sender: &KeyId, report: EdgeReport) -> Result<(), BusError> {
        if self.node_of_key(sender).await? != Some(report.node) {
            return Err(BusError::Refused(format!("the sender's key is not bound to node {}", report.node)));
        }
        if let Ok(mut reports) = self.edge_reports.lock() {
            reports.insert(report.node, report);
        }
        Ok(())
    }

    /// The latest report of every edge node fresher than [`STATS_STALE_AFTER`].
    pub fn edge_reports(&self) -> Vec<EdgeReport> {
        let stale = Utc::now() - TimeDelta::from_std(STATS_STALE_AFTER).unwrap_or(TimeDelta::MAX);
        let Ok(reports) = self.edge_reports.lock() else { return Vec::new() };
        let mut out: Vec<_> = reports.values().filter(|r| r.at >= stale).cloned().collect();
        out.sort_by_key(|r| r.node);
        out
    }

    /// The latest reported use of every instance, with when its host reported it.
    pub fn instance_stats(&self) -> std::collections::HashMap<Uuid, (InstanceStats, DateTime<Utc>)> {
        let Ok(stats) = self.host_stats.lock() else { return Default::default() };
        stats
            .values()
            .flat_map(|h| h.instances.iter().map(move |i| (i.instance, (i.clone(), h.at))))
            .collect()
    }

    /// `/metrics` lines of instances' use, from reports fresher than [`STATS_STALE_AFTER`].
    pub(super) fn render_instance_metrics(&self) -> String {
        let stale = Utc::now() - TimeDelta::from_std(STATS_STALE_AFTER).unwrap_or(TimeDelta::MAX);
        let mut instances: Vec<_> =
            self.instance_stats().into_values().filter(|(_, at)| *at >= stale).map(|(i, _)| i).collect();
        if instances.is_empty() {
            return String::new();
        }
        instances.sort_by_key(|i| i.instance);
        let mut out = String::from(
            "# HELP enjin_instance_cpu_seconds_total CPU time used by an instance since it started.\n\
             # TYPE enjin_instance_cpu_seconds_total counter\n",
        );
        for i in &instances {
            let seconds = i.cpu_usage_ns as f64 / 1e9;
            out.push_str(&format!(
                "enjin_instance_cpu_seconds_total{{instance=\"{}\"}} {seconds}\n",
                i.instance
            ));
        }
        out.push_str(
            "# HELP enjin_instance_memory_bytes Memory charged to an instance now.\n\
             # TYPE enjin_instance_memory_bytes gauge\n",
        );
        for i in &instances {
            out.push_str(&format!(
                "enjin_instance_memory_bytes{{instance=\"{}\"}} {}\n",
                i.instance, i.memory_bytes
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use enjin_bus::identity::Identity;
    use enjin_bus::trust::Publisher;

    use super::*;

    fn sealed(topic: &str, payload: &[u8]) -> Envelope {
        let publisher = Publisher::new(Identity::generate().expect("key"), 1, 1, Default::default());
        let bytes = publisher.seal(topic, None, payload.to_vec(), now_ms()).expect("seal");
        Envelope::decode(&bytes).expect("decode")
    }

    #[test]
    fn reports_are_decoded_by_topic_and_must_be_about_the_node_it_names() {
        let node = Uuid::new_v4();
        let other = Uuid::new_v4();
        let stats =
            serde_json::to_vec(&HostStats { node, at: Utc::now(), instances: Vec::new() }).expect("json");
        assert!(matches!(Report::decode(&sealed(&format!("stats.{node}"), &stats)), Ok(Report::Stats(_))));
        let refused = Report::decode(&sealed(&format!("stats.{other}"), &stats));
        assert!(matches!(refused, Err(BusError::Refused(_))), "{refused:?}");
        let garbage = Report::decode(&sealed(&format!("observe.{node}"), b"\xff{not json"));
        assert!(matches!(garbage, Err(BusError::Invalid { .. })), "{garbage:?}");
        assert!(matches!(Report::decode(&sealed("apps.chat", b"hello")), Ok(Report::Other)));
        assert!(matches!(Report::decode(&sealed(TRUST_UPDATE_TOPIC, b"{}")), Ok(Report::Trust)));
    }
}
