//! What the edge tells its parent: its traffic per app and its metrics.

use std::time::Duration;

use chrono::Utc;
use enjin_bus::node::BusNode;
use enjin_dns::DnsServer;
use enjin_model::api::{AppTraffic, EdgeReport};
use enjin_router::Router;
use serde::Serialize;

pub(crate) fn publish<T: Serialize>(node: &BusNode, topic: &str, value: &T) {
    let Ok(payload) = serde_json::to_vec(value) else { return };
    if let Err(e) = node.publish(topic, payload) {
        // Level-triggered: the next one repairs a dropped one.
        tracing::debug!(%topic, error = %e, "report not sent");
    }
}

pub(crate) fn edge_report(node: uuid::Uuid, apps: &[String], router: &Router, dns: &DnsServer) -> EdgeReport {
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
    let apps = apps
        .iter()
        .filter_map(|app| router.stats(app))
        .map(|s| AppTraffic {
            app: s.app.clone(),
            requests: s.requests,
            responses_5xx: s.by_class.server_error,
            in_flight: s.in_flight,
            p50_ms: ms(s.p50),
            p99_ms: ms(s.p99),
            connect_failures: s.connect_failures,
            retries: s.retries,
            backends: s.backends,
        })
        .collect();
    EdgeReport {
        node,
        at: Utc::now(),
        routes_version: router.version(),
        apps,
        metrics: format!("{}{}", router.metrics_text(), dns.metrics_text()),
    }
}
