//! The control plane's metrics, rendered in Prometheus text format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    auth_failures: BTreeMap<&'static str, u64>,
    audit_records: BTreeMap<&'static str, u64>,
    audit_write_failures: u64,
    audit_pruned: u64,
    connections_closed: BTreeMap<&'static str, u64>,
    rate_limited: u64,
    failed_auth_limited: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Whether this server runs the controllers now (it leads).
    leading: std::sync::atomic::AtomicBool,
    /// How many times this server has started leading.
    terms: std::sync::atomic::AtomicU64,
}

impl Metrics {
    /// This server started (`true`) or stopped leading the controllers.
    pub fn set_leading(&self, leading: bool) {
        use std::sync::atomic::Ordering;
        if leading && !self.leading.swap(true, Ordering::Relaxed) {
            self.terms.fetch_add(1, Ordering::Relaxed);
        } else if !leading {
            self.leading.store(false, Ordering::Relaxed);
        }
    }

    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.requests.entry((method.to_string(), route.to_string(), status)).or_default() += 1;
        let h = m.latency.entry((method.to_string(), route.to_string())).or_default();
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn auth_failure(&self, reason: &'static str) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.auth_failures.entry(reason).or_default() += 1;
    }

    /// An audit record written, by the result it records.
    pub fn audit_recorded(&self, result: &'static str) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.audit_records.entry(result).or_default() += 1;
    }

    pub fn audit_write_failure(&self) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.audit_write_failures += 1;
    }

    pub fn audit_pruned(&self, n: usize) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.audit_pruned += n as u64;
    }

    /// A connection the server closed at the door (over the cap, a slow handshake, slow
    /// headers or a slow body, idle).
    pub fn connection_closed(&self, reason: &'static str) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.connections_closed.entry(reason).or_default() += 1;
    }

    /// A request refused with 429.
    pub fn rate_limited(&self) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.rate_limited += 1;
    }

    /// A request refused with 429 before authentication: its source address failed to
    /// authenticate too often.
    pub fn failed_auth_limited(&self) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.failed_auth_limited += 1;
    }

    /// The store's counters (`reads`, `keys_read`, `txns`), as counters since it was opened.
    pub fn render_store(stats: enjin_store::StoreStats) -> String {
        let mut out = String::new();
        for (name, help, n) in [
            ("reads", "Reads the state store answered (gets, ranges, watch catch-up reads).", stats.reads),
            ("keys_read", "Keys the state store's gets and ranges returned.", stats.keys_read),
            ("txns", "Transactions submitted to the state store.", stats.txns),
        ] {
            let _ = writeln!(out, "# HELP enjin_store_{name}_total {help}");
            let _ = writeln!(out, "# TYPE enjin_store_{name}_total counter");
            let _ = writeln!(out, "enjin_store_{name}_total {n}");
        }
        out
    }

    pub fn render(&self, store_revision: i64) -> String {
        use std::sync::atomic::Ordering;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP enjin_controllers_leading Whether this server runs the controllers (1) or follows (0)."
        );
        let _ = writeln!(out, "# TYPE enjin_controllers_leading gauge");
        let _ = writeln!(out, "enjin_controllers_leading {}", u8::from(self.leading.load(Ordering::Relaxed)));
        let _ = writeln!(
            out,
            "# HELP enjin_controllers_terms_total Times this server started leading the controllers."
        );
        let _ = writeln!(out, "# TYPE enjin_controllers_terms_total counter");
        let _ = writeln!(out, "enjin_controllers_terms_total {}", self.terms.load(Ordering::Relaxed));
        let Ok(m) = self.inner.lock() else { return out };
        let _ = writeln!(out, "# HELP enjin_http_requests_total API requests by method, route and status.");
        let _ = writeln!(out, "# TYPE enjin_http_requests_total counter");
        for ((method, route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "enjin_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP enjin_http_request_duration_seconds API request latency.");
        let _ = writeln!(out, "# TYPE enjin_http_request_duration_seconds histogram");
        for ((method, route), h) in &m.latency {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            for (le, n) in BUCKETS.iter().zip(h.counts) {
                let _ =
                    writeln!(out, "enjin_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "enjin_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "enjin_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "enjin_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP enjin_auth_failures_total Requests refused by authentication or authorization."
        );
        let _ = writeln!(out, "# TYPE enjin_auth_failures_total counter");
        for (reason, n) in &m.auth_failures {
            let _ = writeln!(out, "enjin_auth_failures_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP enjin_audit_records_total Audit records written, by the result they record."
        );
        let _ = writeln!(out, "# TYPE enjin_audit_records_total counter");
        for (result, n) in &m.audit_records {
            let _ = writeln!(out, "enjin_audit_records_total{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP enjin_audit_write_failures_total Audited requests whose record could not be written."
        );
        let _ = writeln!(out, "# TYPE enjin_audit_write_failures_total counter");
        let _ = writeln!(out, "enjin_audit_write_failures_total {}", m.audit_write_failures);
        let _ = writeln!(
            out,
            "# HELP enjin_audit_pruned_total Audit records deleted after the retention period."
        );
        let _ = writeln!(out, "# TYPE enjin_audit_pruned_total counter");
        let _ = writeln!(out, "enjin_audit_pruned_total {}", m.audit_pruned);
        let _ = writeln!(
            out,
            "# HELP enjin_http_connections_closed_total API connections closed by the server's limits, by reason."
        );
        let _ = writeln!(out, "# TYPE enjin_http_connections_closed_total counter");
        for (reason, n) in &m.connections_closed {
            let _ = writeln!(out, "enjin_http_connections_closed_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP enjin_http_rate_limited_total Requests refused with 429 (a principal over its rate)."
        );
        let _ = writeln!(out, "# TYPE enjin_http_rate_limited_total counter");
        let _ = writeln!(out, "enjin_http_rate_limited_total {}", m.rate_limited);
        let _ = writeln!(
            out,
            "# HELP enjin_http_failed_auth_limited_total Requests refused with 429 before authentication (a source address with too many failed authentications)."
        );
        let _ = writeln!(out, "# TYPE enjin_http_failed_auth_limited_total counter");
        let _ = writeln!(out, "enjin_http_failed_auth_limited_total {}", m.failed_auth_limited);
        let _ = writeln!(out, "# HELP enjin_store_revision The state store's current revision.");
        let _ = writeln!(out, "# TYPE enjin_store_revision gauge");
        let _ = writeln!(out, "enjin_store_revision {store_revision}");
        out
    }
}
