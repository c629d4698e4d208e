//! The zone as the server answers from it: one [`DnsZone`] snapshot turned, once, into records
//! keyed by lowercased name, so that a query is a map lookup and never parses or allocates names.
//! Building never fails on one bad record (it is skipped and counted); only an origin that is not
//! a domain name rejects the whole snapshot.

use std::collections::HashMap;

use enjin_model::api::{DnsRecord, DnsZone};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

/// Why a snapshot cannot be served at all.
#[derive(Debug, thiserror::Error)]
pub enum BuildZoneError {
    /// The zone's origin is empty or not a domain name, so no record in it could be placed; the
    /// snapshot is refused and the previous one stays in service.
    #[error("dns zone version {version} has an invalid origin {origin:?}: {reason}")]
    InvalidOrigin {
        /// The version of the refused snapshot.
        version: i64,
        /// The origin as the snapshot gave it.
        origin: String,
        /// Why it is not a domain name, from hickory's parser (or `empty name`).
        reason: String,
    },
}

/// A zone ready to answer from.
#[derive(Debug)]
pub(crate) struct Zone {
    pub(crate) version: i64,
    origin: LowerName,
    soa: Record,
    /// Every name that exists in the zone: the origin, each record's owner, and every name
    /// between the two (empty non-terminals, which must answer NODATA, not NXDOMAIN: RFC 8020).
    nodes: HashMap<LowerName, Node>,
    /// Records of the snapshot that were left out, for the log and metrics.
    pub(crate) skipped: usize,
    pub(crate) records: usize,
}

#[derive(Debug, Default)]
struct Node {
    a: Vec<Record>,
    srv: Vec<Record>,
    /// The SRV targets, parallel to `srv`, to find their addresses for the additional section.
    srv_targets: Vec<LowerName>,
}

/// What to send back for one question.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer<'z> {
    pub(crate) code: ResponseCode,
    pub(crate) authoritative: bool,
    pub(crate) answers: Vec<&'z Record>,
    pub(crate) authority: Vec<&'z Record>,
    pub(crate) additionals: Vec<&'z Record>,
    /// Set when records were left out for a client's size limit.
    pub(crate) truncated: bool,
}

impl Answer<'_> {
    pub(crate) fn refused() -> Self {
        Self::code(ResponseCode::Refused)
    }

    pub(crate) fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: vec![],
            authority: vec![],
            additionals: vec![],
            truncated: false,
        }
    }
}

/// Parses a name of the wire type: fully qualified, with or without the trailing dot.
fn parse_name(name: &str) -> Result<Name, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("empty name".to_owned());
    }
    let mut parsed = Name::from_ascii(trimmed).map_err(|e| e.to_string())?.to_lowercase();
    parsed.set_fqdn(true);
    Ok(parsed)
}

impl Zone {
    pub(crate) fn build(zone: &DnsZone, ttl: u32) -> Result<Self, BuildZoneError> {
        let origin_name = parse_name(&zone.origin).map_err(|reason| BuildZoneError::InvalidOrigin {
            version: zone.version,
            origin: zone.origin.clone(),
            reason,
        })?;
        let origin = LowerName::new(&origin_name);
        let soa = soa_record(&origin_name, zone.version, ttl);

        let mut nodes: HashMap<LowerName, Node> = HashMap::new();
        nodes.insert(origin.clone(), Node::default());
        let mut skipped = 0;
        let mut records = 0;
        for record in &zone.records {
            match add_record(&mut nodes, &origin_name, record, ttl) {
                Ok(true) => records += 1,
                // A duplicate of a record already in the zone: answering it twice helps no one.
                Ok(false) => {}
                Err(reason) => {
                    tracing::warn!(version = zone.version, ?record, %reason, "skipping dns record");
                    skipped += 1;
                }
            }
        }
        Ok(Self { version: zone.version, origin, soa, nodes, skipped, records })
    }

    /// Answers one question. `name` is already lowercased by hickory's `LowerName`.
    pub(crate) fn answer(&self, name: &LowerName, qtype: RecordType, class: DNSClass) -> Answer<'_> {
        if !self.origin.zone_of(name) {
            return Answer::refused();
        }
        // Only the Internet class exists here; a CHAOS query (version.bind, …) is not ours.
        if class != DNSClass::IN && class != DNSClass::ANY {
            return Answer::refused();
        }
        let Some(node) = self.nodes.get(name) else {
            return Answer {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: vec![],
                authority: vec![&self.soa],
                additionals: vec![],
                truncated: false,
            };
        };
        let mut answer = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: vec![],
            authority: vec![],
            additionals: vec![],
            truncated: false,
        };
        match qtype {
            RecordType::A => answer.answers.extend(&node.a),
            RecordType::SRV => {
                answer.answers.extend(&node.srv);
                for (i, target) in node.srv_targets.iter().enumerate() {
                    // Several SRV records often share a target; list its addresses once.
                    if node.srv_targets[..i].contains(target) {
                        continue;
                    }
                    if let Some(t) = self.nodes.get(target) {
                        answer.additionals.extend(&t.a);
                    }
                }
            }
            RecordType::SOA if *name == self.origin => answer.answers.push(&self.soa),
            // ANY is answered as NODATA on purpose: RFC 8482 lets a server decline to list
            // everything, and nothing here needs it.
            _ => {}
        }
        if answer.answers.is_empty() {
            // NODATA: the SOA tells resolvers how long they may cache the absence (RFC 2308).
            answer.authority.push(&self.soa);
        }
        answer
    }
}

fn soa_record(origin: &Name, version: i64, ttl: u32) -> Record {
    // The SOA names no real primary server or mailbox; resolvers only need its serial and
    // minimum. Names under the origin are always valid, so failure falls back to the origin.
    let under = |label: &str| {
        Name::from_ascii(label).and_then(|n| n.append_domain(origin)).unwrap_or_else(|_| origin.clone())
    };
    let (mname, rname) = (under("ns"), under("hostmaster"));
    // Serial numbers are 32-bit and compared with wrap-around (RFC 1982), so the low 32 bits of
    // the version keep increasing as far as any secondary or cache can tell.
    let serial = version as u32;
    let soa = SOA::new(mname, rname, serial, 60, 60, 3600, ttl);
    Record::from_rdata(origin.clone(), ttl, RData::SOA(soa))
}

/// Adds one record; `Ok(false)` for an exact duplicate.
fn add_record(
    nodes: &mut HashMap<LowerName, Node>,
    origin: &Name,
    record: &DnsRecord,
    ttl: u32,
) -> Result<bool, String> {
    let owner = match record {
        DnsRecord::A { name, .. } | DnsRecord::Srv { name, .. } => parse_name(name)?,
    };
    if !origin.zone_of(&owner) {
        return Err(format!("{owner} is outside the origin {origin}"));
    }
    let key = LowerName::new(&owner);
    let node = nodes.entry(key).or_default();
    let added = match record {
        DnsRecord::A { addr, .. } => {
            let rec = Record::from_rdata(owner.clone(), ttl, RData::A(A(*addr)));
            push_unique(&mut node.a, rec)
        }
        DnsRecord::Srv { priority, weight, port, target, .. } => {
            let target = parse_name(target)?;
            let rec = Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(*priority, *weight, *port, target.clone())),
            );
            let added = push_unique(&mut node.srv, rec);
            if added {
                node.srv_targets.push(LowerName::new(&target));
            }
            added
        }
    };
    // Every name between the owner and the origin exists too.
    let mut parent = owner.base_name();
    while origin.zone_of(&parent) && parent.num_labels() > origin.num_labels() {
        nodes.entry(LowerName::new(&parent)).or_default();
        parent = parent.base_name();
    }
    Ok(added)
}

fn push_unique(records: &mut Vec<Record>, record: Record) -> bool {
    if records.contains(&record) {
        return false;
    }
    records.push(record);
    true
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn lower(name: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(name).expect("test name parses"))
    }

    fn sample() -> DnsZone {
        DnsZone {
            version: 7,
            origin: "enjin.internal".into(),
            records: vec![
                DnsRecord::A { name: "web.app.enjin.internal".into(), addr: Ipv4Addr::new(10, 0, 0, 1) },
                DnsRecord::A { name: "web.app.enjin.internal".into(), addr: Ipv4Addr::new(10, 0, 0, 2) },
                DnsRecord::A { name: "web.app.enjin.internal".into(), addr: Ipv4Addr::new(10, 0, 0, 2) },
                DnsRecord::A { name: "host1.enjin.internal".into(), addr: Ipv4Addr::new(10, 1, 0, 1) },
                DnsRecord::Srv {
                    name: "_http._tcp.web.app.enjin.internal".into(),
                    priority: 0,
                    weight: 10,
                    port: 8080,
                    target: "host1.enjin.internal".into(),
                },
                DnsRecord::Srv {
                    name: "_http._tcp.web.app.enjin.internal".into(),
                    priority: 0,
                    weight: 10,
                    port: 8081,
                    target: "host1.enjin.internal".into(),
                },
                DnsRecord::A { name: "elsewhere.example.com".into(), addr: Ipv4Addr::new(1, 1, 1, 1) },
                DnsRecord::A { name: "bad..name.enjin.internal".into(), addr: Ipv4Addr::new(1, 1, 1, 1) },
            ],
        }
    }

    #[test]
    fn skips_bad_records_and_duplicates() {
        let zone = Zone::build(&sample(), 5).expect("zone builds");
        assert_eq!(zone.records, 5);
        assert_eq!(zone.skipped, 2);
    }

    #[test]
    fn an_invalid_origin_rejects_the_snapshot() {
        let zone = DnsZone { version: 1, origin: String::new(), records: vec![] };
        assert!(Zone::build(&zone, 5).is_err());
    }

    #[test]
    fn answers_a_srv_nxdomain_nodata_and_refused() {
        let zone = Zone::build(&sample(), 5).expect("zone builds");
        let a = zone.answer(&lower("web.app.enjin.internal."), RecordType::A, DNSClass::IN);
        assert_eq!((a.code, a.authoritative, a.answers.len()), (ResponseCode::NoError, true, 2));
        assert!(a.authority.is_empty());

        let srv = zone.answer(&lower("_http._tcp.web.app.enjin.internal."), RecordType::SRV, DNSClass::IN);
        assert_eq!(srv.answers.len(), 2);
        assert_eq!(srv.additionals.len(), 1, "the shared target is listed once");

        let nx = zone.answer(&lower("nope.enjin.internal."), RecordType::A, DNSClass::IN);
        assert_eq!(nx.code, ResponseCode::NXDomain);
        assert_eq!(nx.authority[0].record_type(), RecordType::SOA);

        let ent = zone.answer(&lower("_tcp.web.app.enjin.internal."), RecordType::A, DNSClass::IN);
        assert_eq!((ent.code, ent.answers.len(), ent.authority.len()), (ResponseCode::NoError, 0, 1));

        let any = zone.answer(&lower("web.app.enjin.internal."), RecordType::ANY, DNSClass::IN);
        assert_eq!((any.code, any.answers.len()), (ResponseCode::NoError, 0));

        let soa = zone.answer(&lower("enjin.internal."), RecordType::SOA, DNSClass::IN);
        assert_eq!(soa.answers.len(), 1);
        match soa.answers[0].data() {
            RData::SOA(s) => assert_eq!(s.serial(), 7),
            other => panic!("not a soa: {other:?}"),
        }

        let out = zone.answer(&lower("example.com."), RecordType::A, DNSClass::IN);
        assert_eq!((out.code, out.authoritative), (ResponseCode::Refused, false));
        let chaos = zone.answer(&lower("web.app.enjin.internal."), RecordType::TXT, DNSClass::CH);
        assert_eq!(chaos.code, ResponseCode::Refused);
    }

    #[test]
    fn serial_keeps_the_low_bits_of_the_version() {
        let zone = DnsZone { version: (1 << 32) + 3, origin: "z".into(), records: vec![] };
        let zone = Zone::build(&zone, 5).expect("zone builds");
        let soa = zone.answer(&lower("z."), RecordType::SOA, DNSClass::IN);
        match soa.answers[0].data() {
            RData::SOA(s) => assert_eq!(s.serial(), 3),
            other => panic!("not a soa: {other:?}"),
        }
    }

    proptest! {
        /// Any record names and any question give an answer, and the rules hold: REFUSED
        /// exactly outside the zone, an SOA with every empty authoritative answer.
        #[test]
        fn any_zone_and_question_answers_by_the_rules(
            names in proptest::collection::vec("[a-zA-Z0-9_.-]{0,40}", 0..8),
            qname in "[a-zA-Z0-9_.-]{1,40}",
            qtype in any::<u16>(),
        ) {
            let records = names
                .iter()
                .enumerate()
                .map(|(i, n)| if i % 2 == 0 {
                    DnsRecord::A { name: format!("{n}.enjin.internal"), addr: Ipv4Addr::LOCALHOST }
                } else {
                    DnsRecord::Srv {
                        name: format!("{n}.enjin.internal"),
                        priority: 1, weight: 1, port: 1,
                        target: format!("{}.enjin.internal", names[0]),
                    }
                })
                .collect();
            let zone = DnsZone { version: 1, origin: "enjin.internal".into(), records };
            let zone = Zone::build(&zone, 5).expect("origin is valid");
            if let Ok(name) = Name::from_ascii(&qname) {
                let mut name = name;
                name.set_fqdn(true);
                let name = LowerName::new(&name);
                let answer = zone.answer(&name, RecordType::from(qtype), DNSClass::IN);
                let inside = lower("enjin.internal.").zone_of(&name);
                prop_assert_eq!(answer.code == ResponseCode::Refused, !inside);
                if inside && answer.answers.is_empty() {
                    prop_assert_eq!(answer.authority.len(), 1);
                }
            }
        }
    }
}
