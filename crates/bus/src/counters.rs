//! Counters for one ring's bus traffic — envelopes published, delivered, and rejected by reason —
//! rendered in Prometheus text format. Every rejection is counted under exactly one reason, so an
//! operator can tell an attack (tampered, unknown key) from a misconfiguration (wrong ring, stale
//! clock) without reading logs. Counting must never block or fail: plain atomics, no locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an envelope or trust update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    /// The bytes do not decode as an envelope.
    #[error("envelope rejected: malformed")]
    Malformed,
    /// The envelope carries no signature.
    #[error("envelope rejected: unsigned")]
    Unsigned,
    /// The signature does not verify under the sender's trusted key: forged, or changed in
    /// transit. Also counted when a trust update's signature fails its second check.
    #[error("envelope rejected: signature does not verify (tampered)")]
    Tampered,
    /// The sender is not in the ring's trust bundle at all.
    #[error("envelope rejected: sender key is not trusted in this ring")]
    UnknownKey,
    /// The sender is listed but revoked, or past the end of its rotation overlap.
    #[error("envelope rejected: sender key is revoked or past its rotation window")]
    RevokedKey,
    /// The sequence number is at or below the last one accepted from that sender.
    #[error("envelope rejected: sequence number not above the last one seen from its sender (replayed)")]
    Replayed,
    /// The sender's timestamp is further from the receiver's clock than the verifier's window
    /// allows: an old capture, or a clock that is off.
    #[error("envelope rejected: timestamp outside the accepted window (stale)")]
    Stale,
    /// The envelope names a ring other than the receiver's.
    #[error("envelope rejected: addressed to another ring")]
    WrongRing,
    /// A trust update signed by a key that is not a usable parent key.
    #[error("trust update rejected: not signed by a parent key")]
    UntrustedUpdate,
}

impl RejectReason {
    /// Every reason, in declaration order (which is also each one's counter slot), so that
    /// metrics list them all, zeros included.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Malformed,
        RejectReason::Unsigned,
        RejectReason::Tampered,
        RejectReason::UnknownKey,
        RejectReason::RevokedKey,
        RejectReason::Replayed,
        RejectReason::Stale,
        RejectReason::WrongRing,
        RejectReason::UntrustedUpdate,
    ];

    /// The `reason` label value in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Unsigned => "unsigned",
            RejectReason::Tampered => "tampered",
            RejectReason::UnknownKey => "unknown_key",
            RejectReason::RevokedKey => "revoked_key",
            RejectReason::Replayed => "replayed",
            RejectReason::Stale => "stale",
            RejectReason::WrongRing => "wrong_ring",
            RejectReason::UntrustedUpdate => "untrusted_update",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// One ring's bus counters; shared (`Arc`) between the verifier, the publisher and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    trust_updates_applied: AtomicU64,
    replies_refused: AtomicU64,
}

// Relaxed ordering throughout: each counter is independent and only ever read for reporting,
// so no other memory needs to be ordered against it.
impl Counters {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// An envelope was signed and encoded for sending (by [`crate::trust::Publisher::seal`]);
    /// says nothing about whether it reached anyone.
    pub fn record_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }
    /// A received envelope passed every check of [`crate::trust::Verifier::accept`].
    pub fn record_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    /// A received envelope or trust update was refused, under exactly one reason.
    pub fn record_rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    /// A trust update changed this node's bundle (not counted when it was already applied).
    pub fn record_trust_update_applied(&self) {
        self.trust_updates_applied.fetch_add(1, Ordering::Relaxed);
    }
    /// A request named a reply-to that is not its sender's own inbox; no reply was sent.
    pub fn reply_refused(&self) {
        self.replies_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Envelopes sealed since start (see [`Counters::record_published`]).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Envelopes received and accepted since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Refusals for `reason` since start.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }
    /// Refusals for every reason together; each counter is read separately, so under
    /// concurrent traffic the sum is approximate.
    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.rejected(*r)).sum()
    }
    /// Trust updates that changed the bundle since start.
    pub fn trust_updates_applied(&self) -> u64 {
        self.trust_updates_applied.load(Ordering::Relaxed)
    }
    /// Requests left unanswered because their reply-to was not the sender's own inbox.
    pub fn replies_refused(&self) -> u64 {
        self.replies_refused.load(Ordering::Relaxed)
    }

    /// This ring's counters as a complete Prometheus exposition.
    pub fn render_prometheus(&self, ring: u8) -> String {
        render_prometheus(&[(ring, self)])
    }
}

/// Several rings' counters in one exposition, each metric's HELP and TYPE written once (the
/// text format does not allow a metric family to be declared twice). Every reason is written
/// for every ring, zeros included, so that `rate()` sees a series from its first increment.
pub fn render_prometheus(rings: &[(u8, &Counters)]) -> String {
    type Get = fn(&Counters) -> u64;
    let per_ring: [(&str, &str, Get); 4] = [
        ("published", "Envelopes signed for publication on the ring bus.", Counters::published),
        ("delivered", "Envelopes received that passed every check and were delivered.", Counters::delivered),
        (
            "trust_updates_applied",
            "Trust updates from the parent ring applied to this node's trust bundle.",
            Counters::trust_updates_applied,
        ),
        (
            "replies_refused",
            "Requests not answered because their reply-to was not an inbox of their sender.",
            Counters::replies_refused,
        ),
    ];
    // Writing to a String cannot fail, hence the ignored results.
    let mut out = String::new();
    for (name, help, get) in per_ring {
        let _ = writeln!(out, "# HELP enjin_bus_{name}_total {help}");
        let _ = writeln!(out, "# TYPE enjin_bus_{name}_total counter");
        for (ring, c) in rings {
            let _ = writeln!(out, "enjin_bus_{name}_total{{ring=\"{ring}\"}} {}", get(c));
        }
    }
    let _ = writeln!(out, "# HELP enjin_bus_rejected_total Envelopes and trust updates refused, by reason.");
    let _ = writeln!(out, "# TYPE enjin_bus_rejected_total counter");
    for (ring, c) in rings {
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "enjin_bus_rejected_total{{ring=\"{ring}\",reason=\"{}\"}} {}",
                reason.label(),
                c.rejected(reason)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexes_match() {
        let mut labels: Vec<_> = RejectReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(RejectReason::Stale.label(), "stale");
    }

    #[test]
    fn counts_and_renders_one_ring() {
        let c = Counters::new();
        for _ in 0..10 {
            c.record_published();
        }
        for _ in 0..9 {
            c.record_delivered();
        }
        for _ in 0..3 {
            c.record_rejected(RejectReason::Tampered);
        }
        c.record_rejected(RejectReason::Stale);
        c.record_trust_update_applied();
        c.reply_refused();
        assert_eq!(c.rejected_total(), 4);
        let text = c.render_prometheus(1);
        for line in [
            "# HELP enjin_bus_rejected_total Envelopes and trust updates refused, by reason.",
            "# TYPE enjin_bus_rejected_total counter",
            "enjin_bus_rejected_total{ring=\"1\",reason=\"tampered\"} 3",
            "enjin_bus_rejected_total{ring=\"1\",reason=\"stale\"} 1",
            "enjin_bus_rejected_total{ring=\"1\",reason=\"unknown_key\"} 0",
            "enjin_bus_published_total{ring=\"1\"} 10",
            "enjin_bus_delivered_total{ring=\"1\"} 9",
            "enjin_bus_trust_updates_applied_total{ring=\"1\"} 1",
            "enjin_bus_replies_refused_total{ring=\"1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn several_rings_declare_each_family_once() {
        let (a, b) = (Counters::new(), Counters::new());
        a.record_published();
        b.record_rejected(RejectReason::WrongRing);
        let text = render_prometheus(&[(1, &a), (2, &b)]);
        for name in [
            "enjin_bus_published_total",
            "enjin_bus_delivered_total",
            "enjin_bus_rejected_total",
            "enjin_bus_trust_updates_applied_total",
        ] {
            assert_eq!(text.matches(&format!("# TYPE {name} counter\n")).count(), 1, "{name}");
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
        }
        assert!(text.contains("enjin_bus_published_total{ring=\"1\"} 1\n"));
        assert!(text.contains("enjin_bus_published_total{ring=\"2\"} 0\n"));
        assert!(text.contains("enjin_bus_rejected_total{ring=\"2\",reason=\"wrong_ring\"} 1\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(series.ends_with('}') && value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
