//! The DNS server's counters, rendered in Prometheus text format. Label values come from fixed
//! lists (query types the zone knows, response codes, protocols), so a client sending random
//! query types cannot grow the series without bound.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_proto::xfer::Protocol;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (protocol, query type, response code) → count. A mutex is enough: it is held for one
    /// map update, never across an await.
    queries: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    send_errors: AtomicU64,
    zones_applied: AtomicU64,
    zones_stale: AtomicU64,
    zones_invalid: AtomicU64,
    records_skipped: AtomicU64,
}

pub(crate) fn qtype_label(qtype: Option<RecordType>) -> &'static str {
    match qtype {
        None => "none",
        Some(RecordType::A) => "A",
        Some(RecordType::AAAA) => "AAAA",
        Some(RecordType::SRV) => "SRV",
        Some(RecordType::SOA) => "SOA",
        Some(RecordType::NS) => "NS",
        Some(RecordType::ANY) => "ANY",
        Some(RecordType::CNAME) => "CNAME",
        Some(RecordType::PTR) => "PTR",
        Some(RecordType::TXT) => "TXT",
        Some(RecordType::MX) => "MX",
        Some(RecordType::HTTPS) => "HTTPS",
        Some(_) => "other",
    }
}

pub(crate) fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

pub(crate) fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
        Protocol::Tcp => "tcp",
        _ => "other",
    }
}

// Relaxed ordering: each counter is independent and only read for reporting.
impl Metrics {
    pub(crate) fn query(&self, protocol: &'static str, qtype: &'static str, rcode: &'static str) {
        let mut map = self.queries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((protocol, qtype, rcode)).or_default() += 1;
    }

    pub(crate) fn send_error(&self) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn zone_applied(&self, skipped: usize) {
        self.zones_applied.fetch_add(1, Ordering::Relaxed);
        self.records_skipped.fetch_add(skipped as u64, Ordering::Relaxed);
    }

    pub(crate) fn zone_stale(&self) {
        self.zones_stale.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn zone_invalid(&self) {
        self.zones_invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// `zone` is the served zone's version and record count, if any.
    pub(crate) fn render(&self, zone: Option<(i64, usize)>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP enjin_dns_queries_total DNS queries answered, by protocol, query type and response code."
        );
        let _ = writeln!(out, "# TYPE enjin_dns_queries_total counter");
        {
            let map = self.queries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((protocol, qtype, rcode), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "enjin_dns_queries_total{{protocol=\"{protocol}\",qtype=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP enjin_dns_send_errors_total DNS responses that could not be sent.");
        let _ = writeln!(out, "# TYPE enjin_dns_send_errors_total counter");
        let _ = writeln!(out, "enjin_dns_send_errors_total {}", self.send_errors.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP enjin_dns_zone_updates_total Zone snapshots offered, by outcome.");
        let _ = writeln!(out, "# TYPE enjin_dns_zone_updates_total counter");
        for (outcome, counter) in
            [("applied", &self.zones_applied), ("stale", &self.zones_stale), ("invalid", &self.zones_invalid)]
        {
            let _ = writeln!(
                out,
                "enjin_dns_zone_updates_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP enjin_dns_records_skipped_total Records left out of applied zones as invalid."
        );
        let _ = writeln!(out, "# TYPE enjin_dns_records_skipped_total counter");
        let _ =
            writeln!(out, "enjin_dns_records_skipped_total {}", self.records_skipped.load(Ordering::Relaxed));
        // A gauge must always have a value; before the first zone it reads -1, which no store
        // revision is.
        let (version, records) = zone.map_or((-1, 0), |(v, n)| (v, n as i64));
        let _ = writeln!(
            out,
            "# HELP enjin_dns_zone_version The version of the zone being served (-1 before the first)."
        );
        let _ = writeln!(out, "# TYPE enjin_dns_zone_version gauge");
        let _ = writeln!(out, "enjin_dns_zone_version {version}");
        let _ = writeln!(out, "# HELP enjin_dns_zone_records Records in the zone being served.");
        let _ = writeln!(out, "# TYPE enjin_dns_zone_records gauge");
        let _ = writeln!(out, "enjin_dns_zone_records {records}");
        out
    }
}
