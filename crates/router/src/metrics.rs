//! Per-app counters, all atomics so the request path takes no lock, and their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in microseconds. Fine at the low end, where
/// a proxy on the same machine as its instances spends its time.
const BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// The same bounds as Prometheus `le` labels.
const BOUNDS_LABELS: [&str; 16] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1", "2.5", "5", "10",
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counters of one app. They outlive table swaps: a router keeps one per app name it has
/// seen.
#[derive(Debug)]
pub(crate) struct AppMetrics {
    name: Box<str>,
    /// `name` escaped for a Prometheus label value.
    label: Box<str>,
    /// Responses by status class, 1xx to 5xx.
    classes: [AtomicU64; 5],
    /// Latencies to response headers: one count per bucket (not cumulative), the last one
    /// above every bound.
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    in_flight: AtomicI64,
    connect_failures: AtomicU64,
    retries: AtomicU64,
    /// Backends in the table being served; set on apply.
    backends: AtomicU64,
}

impl AppMetrics {
    pub fn new(name: &str) -> AppMetrics {
        AppMetrics {
            name: name.into(),
            label: escape_label(name).into(),
            classes: Default::default(),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            connect_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            backends: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records a response: its status class and the time to its headers.
    pub fn respond(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_backends(&self, n: usize) {
        self.backends.store(n as u64, Ordering::Relaxed);
    }

    fn bucket_counts(&self) -> [u64; BOUNDS_MICROS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> AppStats {
        let c = |i: usize| self.classes[i].load(Ordering::Relaxed);
        let by_class = StatusClasses {
            informational: c(0),
            success: c(1),
            redirection: c(2),
            client_error: c(3),
            server_error: c(4),
        };
        let buckets = self.bucket_counts();
        AppStats {
            app: self.name.to_string(),
            requests: (0..5).map(c).sum(),
            by_class,
            // Counts are taken one by one, so a request ending between two loads could make it
            // dip below zero for a moment.
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            p50: quantile(&buckets, 0.5),
            p99: quantile(&buckets, 0.99),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            backends: self.backends.load(Ordering::Relaxed),
        }
    }
}

/// One app's numbers since the router started, for a status command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStats {
    /// The app's name, as in the route table.
    pub app: String,
    /// Responses sent, of every status (the router's own error pages included).
    pub requests: u64,
    /// `requests` split by status class; the classes add up to `requests`.
    pub by_class: StatusClasses,
    /// Requests whose response has not finished (open tunnels included).
    pub in_flight: u64,
    /// Median time to response headers, estimated from the histogram; `None` before the first
    /// response.
    pub p50: Option<Duration>,
    /// 99th percentile time to response headers, estimated like `p50`.
    pub p99: Option<Duration>,
    /// Connects to the app's instances that failed or timed out.
    pub connect_failures: u64,
    /// Attempts after the first, after a connect failure.
    pub retries: u64,
    /// Instances in the table being served.
    pub backends: u64,
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusClasses {
    /// 1xx (101 for upgrades).
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx and above.
    pub server_error: u64,
}

/// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
/// `histogram_quantile` does; in the last, unbounded bucket it is the highest bound.
fn quantile(buckets: &[u64; BOUNDS_MICROS.len() + 1], q: f64) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = BOUNDS_MICROS.get(i) else {
                return Some(Duration::from_micros(BOUNDS_MICROS[BOUNDS_MICROS.len() - 1]));
            };
            let lower = if i == 0 { 0 } else { BOUNDS_MICROS[i - 1] };
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            let micros = lower as f64 + (upper - lower) as f64 * within;
            return Some(Duration::from_micros(micros as u64));
        }
        below += count;
    }
    None
}

/// Router-wide numbers besides the apps'.
#[derive(Debug, Default)]
pub(crate) struct RouterMetrics {
    /// Requests whose host and path no route matched (or that named no host).
    pub unrouted: AtomicU64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
}

/// Renders everything in the Prometheus text format, apps in the order given.
pub(crate) fn render<'a>(
    version: Option<i64>,
    router: &RouterMetrics,
    apps: impl Iterator<Item = &'a AppMetrics> + Clone,
) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; the results are ignored for that reason.
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    head(
        &mut out,
        "enjin_router_table_version",
        "gauge",
        "Version of the route table being served (-1 before the first).",
    );
    let _ = writeln!(out, "enjin_router_table_version {}", version.unwrap_or(-1));

    head(
        &mut out,
        "enjin_router_unrouted_requests_total",
        "counter",
        "Requests no route matched, answered 400 or 404.",
    );
    let _ = writeln!(out, "enjin_router_unrouted_requests_total {}", router.unrouted.load(Ordering::Relaxed));

    head(&mut out, "enjin_router_connections_open", "gauge", "Client connections open.");
    let _ = writeln!(
        out,
        "enjin_router_connections_open {}",
        router.connections_open.load(Ordering::Relaxed).max(0)
    );

    head(&mut out, "enjin_router_connections_total", "counter", "Client connections accepted.");
    let _ =
        writeln!(out, "enjin_router_connections_total {}", router.connections_total.load(Ordering::Relaxed));

    head(&mut out, "enjin_router_backends", "gauge", "Instances of the app in the table being served.");
    for app in apps.clone() {
        let _ = writeln!(
            out,
            "enjin_router_backends{{app=\"{}\"}} {}",
            app.label,
            app.backends.load(Ordering::Relaxed)
        );
    }

    head(&mut out, "enjin_router_requests_total", "counter", "Responses sent, by app and status class.");
    for app in apps.clone() {
        for (class, count) in CLASSES.iter().zip(&app.classes) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "enjin_router_requests_total{{app=\"{}\",code=\"{class}\"}} {count}",
                app.label
            );
        }
    }

    head(
        &mut out,
        "enjin_router_requests_in_flight",
        "gauge",
        "Requests whose response has not finished, tunnels included.",
    );
    for app in apps.clone() {
        let n = app.in_flight.load(Ordering::Relaxed).max(0);
        let _ = writeln!(out, "enjin_router_requests_in_flight{{app=\"{}\"}} {n}", app.label);
    }

    head(
        &mut out,
        "enjin_router_request_duration_seconds",
        "histogram",
        "Time from request to response headers, by app.",
    );
    for app in apps.clone() {
        let buckets = app.bucket_counts();
        let mut cumulative = 0;
        for (le, count) in BOUNDS_LABELS.iter().zip(&buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "enjin_router_request_duration_seconds_bucket{{app=\"{}\",le=\"{le}\"}} {cumulative}",
                app.label
            );
        }
        cumulative += buckets[BOUNDS_MICROS.len()];
        let _ = writeln!(
            out,
            "enjin_router_request_duration_seconds_bucket{{app=\"{}\",le=\"+Inf\"}} {cumulative}",
            app.label
        );
        let sum = app.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "enjin_router_request_duration_seconds_sum{{app=\"{}\"}} {sum}", app.label);
        let _ = writeln!(
            out,
            "enjin_router_request_duration_seconds_count{{app=\"{}\"}} {cumulative}",
            app.label
        );
    }

    head(
        &mut out,
        "enjin_router_connect_failures_total",
        "counter",
        "Connects to instances that failed or timed out, by app.",
    );
    for app in apps.clone() {
        let n = app.connect_failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "enjin_router_connect_failures_total{{app=\"{}\"}} {n}", app.label);
    }

    head(&mut out, "enjin_router_retries_total", "counter", "Attempts after a connect failure, by app.");
    for app in apps {
        let n = app.retries.load(Ordering::Relaxed);
        let _ = writeln!(out, "enjin_router_retries_total{{app=\"{}\"}} {n}", app.label);
    }
    out
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let m = AppMetrics::new("a");
        assert_eq!(m.stats().p50, None);
        for _ in 0..100 {
            m.respond(200, Duration::from_micros(700)); // (500, 1000]
        }
        let s = m.stats();
        assert_eq!(s.requests, 100);
        assert_eq!(s.by_class.success, 100);
        let p50 = s.p50.expect("a median");
        assert!(p50 > Duration::from_micros(500) && p50 <= Duration::from_micros(1000), "{p50:?}");
        let p99 = s.p99.expect("a p99");
        assert!(p99 >= p50 && p99 <= Duration::from_micros(1000), "{p99:?}");
    }

    #[test]
    fn slow_outliers_move_p99_not_p50() {
        let m = AppMetrics::new("a");
        for _ in 0..98 {
            m.respond(200, Duration::from_micros(50));
        }
        for _ in 0..2 {
            m.respond(504, Duration::from_secs(30));
        }
        let s = m.stats();
        assert!(s.p50.expect("p50") <= Duration::from_micros(100));
        assert_eq!(s.p99, Some(Duration::from_secs(10)));
        assert_eq!(s.by_class.server_error, 2);
    }

    #[test]
    fn odd_statuses_fall_into_the_nearest_class() {
        let m = AppMetrics::new("a");
        m.respond(999, Duration::ZERO);
        m.respond(101, Duration::ZERO);
        let s = m.stats();
        assert_eq!((s.by_class.server_error, s.by_class.informational), (1, 1));
    }

    #[test]
    fn renders_families_with_escaped_labels() {
        let m = AppMetrics::new("we\"ird\\app\n");
        m.respond(200, Duration::from_millis(3));
        m.connect_failed();
        m.retried();
        m.set_backends(2);
        let text = render(Some(5), &RouterMetrics::default(), [&m].into_iter());
        assert!(text.contains("enjin_router_table_version 5\n"), "{text}");
        assert!(text.contains(r#"enjin_router_requests_total{app="we\"ird\\app\n",code="2xx"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"enjin_router_request_duration_seconds_bucket{app="we\"ird\\app\n",le="0.005"} 1"#
            )
        );
        assert!(
            text.contains(
                r#"enjin_router_request_duration_seconds_bucket{app="we\"ird\\app\n",le="0.0025"} 0"#
            )
        );
        assert!(text.contains(r#"enjin_router_request_duration_seconds_count{app="we\"ird\\app\n"} 1"#));
        assert!(text.contains(r#"enjin_router_connect_failures_total{app="we\"ird\\app\n"} 1"#));
        assert!(text.contains(r#"enjin_router_retries_total{app="we\"ird\\app\n"} 1"#));
        assert!(text.contains(r#"enjin_router_backends{app="we\"ird\\app\n"} 2"#));
        // Every sample line belongs to a family declared above it.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
