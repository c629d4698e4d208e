//! The request handler hickory's server calls for every message it could decode: one question,
//! answered from the zone snapshot current when the message arrived. hickory parses the bytes
//! and answers undecodable ones with FORMERR itself; this code only sees typed messages and must
//! answer every one of them, whatever its opcode, count of questions or EDNS version.

use std::sync::Arc;

use hickory_proto::op::{Edns, Header, OpCode, ResponseCode};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_proto::xfer::Protocol;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tracing::Instrument;

use crate::Shared;
use crate::metrics::{protocol_label, qtype_label, rcode_label};
use crate::zone::Answer;

/// Largest UDP payload this server offers in EDNS: the size that avoids IP fragmentation on
/// common paths (the 2020 DNS flag day value). Larger answers are truncated and retried over TCP.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The UDP payload a client without EDNS can take (RFC 1035).
const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// Makes an answer to a client without EDNS fit 512 bytes. hickory would otherwise allow 4096
/// bytes, which a 512-byte client buffer (musl's, for one) cuts into an undecodable message.
/// Additional records go first, which needs no TC bit (RFC 2181 §9); if the answer still does
/// not fit, it is sent empty with TC so the client asks again over TCP.
fn fit_classic_udp(request: &Request, header: &Header, answer: &mut Answer<'_>) {
    if fits(request, header, answer) {
        return;
    }
    answer.additionals.clear();
    if fits(request, header, answer) {
        return;
    }
    answer.answers.clear();
    answer.authority.clear();
    answer.truncated = true;
}

fn fits(request: &Request, header: &Header, answer: &Answer<'_>) -> bool {
    let mut buf = Vec::with_capacity(usize::from(CLASSIC_UDP_PAYLOAD));
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(CLASSIC_UDP_PAYLOAD);
    let response = MessageResponseBuilder::from_message_request(request).build(
        *header,
        answer.answers.iter().copied(),
        std::iter::empty(),
        answer.authority.iter().copied(),
        answer.additionals.iter().copied(),
    );
    // The encoder drops what does not fit and sets TC rather than failing.
    response.destructive_emit(&mut encoder).is_ok_and(|info| !info.truncated())
}

#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub(crate) shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let query = request.queries().first();
        let span = tracing::debug_span!(
            "dns_query",
            id = request.id(),
            src = %request.src(),
            name = query.map(|q| q.name().to_string()),
            qtype = query.map(|q| q.query_type().to_string()),
        );
        self.respond(request, response_handle).instrument(span).await
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let zone = self.shared.current();
        let queries = request.queries();
        let mut answer = if request.edns().is_some_and(|e| e.version() > 0) {
            Answer::code(ResponseCode::BADVERS)
        } else if request.op_code() != OpCode::Query {
            // No updates, notifies or zone transfers: the zone comes from the control plane.
            Answer::code(ResponseCode::NotImp)
        } else if queries.len() != 1 {
            Answer::code(ResponseCode::FormErr)
        } else if let Some(zone) = &zone {
            let q = &queries[0];
            zone.answer(q.name(), q.query_type(), q.query_class())
        } else {
            // Not loaded yet: SERVFAIL sends resolvers to another server, where REFUSED would
            // claim the zone is not ours.
            Answer::code(ResponseCode::ServFail)
        };

        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(answer.authoritative);
        header.set_response_code(answer.code);
        if request.protocol() == Protocol::Udp && request.edns().is_none() {
            fit_classic_udp(request, &header, &mut answer);
            header.set_truncated(answer.truncated);
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(req_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(req_edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            // Response codes above 15 (BADVERS) keep their high bits in the OPT record.
            edns.set_rcode_high(answer.code.high());
            builder.edns(edns);
        }
        let response = builder.build(
            header,
            answer.answers.iter().copied(),
            std::iter::empty(),
            answer.authority.iter().copied(),
            answer.additionals.iter().copied(),
        );

        let protocol = protocol_label(request.protocol());
        let qtype = qtype_label(queries.first().map(|q| q.query_type()));
        match response_handle.send_response(response).await {
            Ok(info) => {
                tracing::debug!(rcode = %info.response_code(), answers = info.answer_count(), "dns response sent");
                self.shared.metrics.query(protocol, qtype, rcode_label(info.response_code()));
                info
            }
            Err(error) => {
                // Debug, not warn: a flood of these is an attack or a dead client, and is counted.
                tracing::debug!(%error, src = %request.src(), "failed to send dns response");
                self.shared.metrics.send_error();
                let mut failed = Header::response_from_request(request.header());
                failed.set_response_code(ResponseCode::ServFail);
                failed.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Mutex;

    use enjin_model::api::{DnsRecord, DnsZone};
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
    use hickory_proto::xfer::Protocol;
    use hickory_server::authority::{MessageRequest, MessageResponse};
    use proptest::prelude::*;

    use super::*;
    use crate::{DnsConfig, DnsServer};

    /// Captures the encoded response instead of sending it.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    #[async_trait::async_trait]
    impl ResponseHandler for Capture {
        async fn send_response<'a>(
            &mut self,
            response: MessageResponse<
                '_,
                'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
                impl Iterator<Item = &'a Record> + Send + 'a,
            >,
        ) -> io::Result<ResponseInfo> {
            let mut buf = Vec::new();
            let info = response.destructive_emit(&mut BinEncoder::new(&mut buf)).map_err(io::Error::other)?;
            *self.0.lock().expect("capture lock") = buf;
            Ok(info)
        }
    }

    fn handler() -> Handler {
        let server = DnsServer::new(DnsConfig::default());
        server.apply(DnsZone {
            version: 1,
            origin: "enjin.internal".into(),
            records: vec![DnsRecord::A { name: "a.enjin.internal".into(), addr: Ipv4Addr::LOCALHOST }],
        });
        Handler { shared: server.shared.clone() }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime")
    }

    /// Decodes `bytes` as hickory's server would and, if they decode, runs the handler on them;
    /// returns the response it sent.
    fn handle(rt: &tokio::runtime::Runtime, handler: &Handler, bytes: &[u8]) -> Option<Message> {
        let message = MessageRequest::read(&mut BinDecoder::new(bytes)).ok()?;
        let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
        let request = Request::new(message, src, Protocol::Udp);
        let capture = Capture::default();
        rt.block_on(handler.handle_request(&request, capture.clone()));
        let buf = capture.0.lock().expect("capture lock").clone();
        Some(Message::from_vec(&buf).expect("the handler's response decodes"))
    }

    fn query_bytes(name: Name, qtype: RecordType, class: DNSClass, op: OpCode, edns: Option<u8>) -> Vec<u8> {
        let mut q = Query::query(name, qtype);
        q.set_query_class(class);
        let mut m = Message::new();
        m.set_id(42).set_message_type(MessageType::Query).set_op_code(op).add_query(q);
        if let Some(version) = edns {
            let mut e = Edns::new();
            e.set_version(version);
            m.set_edns(e);
        }
        m.to_vec().expect("query encodes")
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name parses")
    }

    #[test]
    fn answers_odd_requests_with_the_right_codes() {
        let rt = runtime();
        let h = handler();
        let cases = [
            (OpCode::Query, None, ResponseCode::NoError),
            (OpCode::Update, None, ResponseCode::NotImp),
            (OpCode::Notify, None, ResponseCode::NotImp),
            (OpCode::Query, Some(0), ResponseCode::NoError),
            (OpCode::Query, Some(1), ResponseCode::BADVERS),
        ];
        for (op, edns, want) in cases {
            let bytes = query_bytes(name("a.enjin.internal."), RecordType::A, DNSClass::IN, op, edns);
            let response = handle(&rt, &h, &bytes).expect("decodes");
            // Compared as numbers: 16 decodes as BADSIG, which shares BADVERS's code.
            assert_eq!(u16::from(response.response_code()), u16::from(want), "{op:?} edns {edns:?}");
            assert_eq!(response.id(), 42);
        }
    }

    #[test]
    fn big_answers_fit_a_client_without_edns() {
        let rt = runtime();
        let server = DnsServer::new(DnsConfig::default());
        let mut records: Vec<DnsRecord> = (0..60u8)
            .map(|i| DnsRecord::A { name: "many.enjin.internal".into(), addr: Ipv4Addr::new(10, 0, 0, i) })
            .collect();
        // Five SRV records with long targets fit in 512 bytes; with their addresses they do not.
        let target = |i: u8| format!("{}{i}.enjin.internal", "t".repeat(44));
        records.extend((0..5u8).map(|i| DnsRecord::A { name: target(i), addr: Ipv4Addr::new(10, 1, 0, i) }));
        records.extend((0..5u8).map(|i| DnsRecord::Srv {
            name: "_x._tcp.enjin.internal".into(),
            priority: 0,
            weight: 0,
            port: 1,
            target: target(i),
        }));
        server.apply(DnsZone { version: 1, origin: "enjin.internal".into(), records });
        let h = Handler { shared: server.shared.clone() };

        let classic =
            query_bytes(name("many.enjin.internal."), RecordType::A, DNSClass::IN, OpCode::Query, None);
        let r = handle(&rt, &h, &classic).expect("decodes");
        assert!(r.truncated());
        assert!(r.answers().is_empty());
        let with_edns =
            query_bytes(name("many.enjin.internal."), RecordType::A, DNSClass::IN, OpCode::Query, Some(0));
        let r = handle(&rt, &h, &with_edns).expect("decodes");
        assert_eq!((r.truncated(), r.answers().len()), (false, 60));

        let srv =
            query_bytes(name("_x._tcp.enjin.internal."), RecordType::SRV, DNSClass::IN, OpCode::Query, None);
        let r = handle(&rt, &h, &srv).expect("decodes");
        assert_eq!((r.truncated(), r.answers().len(), r.additionals().len()), (false, 5, 0));
        let srv = query_bytes(
            name("_x._tcp.enjin.internal."),
            RecordType::SRV,
            DNSClass::IN,
            OpCode::Query,
            Some(0),
        );
        let r = handle(&rt, &h, &srv).expect("decodes");
        assert_eq!((r.truncated(), r.answers().len(), r.additionals().len()), (false, 5, 5));
    }

    #[test]
    fn no_zone_yet_is_servfail() {
        let rt = runtime();
        let h = Handler { shared: DnsServer::new(DnsConfig::default()).shared.clone() };
        let bytes = query_bytes(name("a.enjin.internal."), RecordType::A, DNSClass::IN, OpCode::Query, None);
        let response = handle(&rt, &h, &bytes).expect("decodes");
        assert_eq!(response.response_code(), ResponseCode::ServFail);
    }

    proptest! {
        /// Random bytes: whatever hickory decodes, the handler answers without panicking, with
        /// a response that decodes again.
        #[test]
        fn random_bytes_never_panic_the_handler(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let rt = runtime();
            let _ = handle(&rt, &handler(), &bytes);
        }

        /// A valid query with random bytes overwritten: mostly near-misses that hickory still
        /// decodes, with odd counts, flags and lengths.
        #[test]
        fn mutated_queries_never_panic_the_handler(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = query_bytes(
                name("_http._tcp.a.enjin.internal."), RecordType::SRV, DNSClass::IN, OpCode::Query, Some(0),
            );
            let len = bytes.len();
            for (at, byte) in edits {
                bytes[at % len] = byte;
            }
            bytes.truncate(len - cut % 4);
            let rt = runtime();
            let _ = handle(&rt, &handler(), &bytes);
        }

        /// Random well-formed questions (random names, types, classes, opcodes, EDNS versions)
        /// reach the handler far more often than random bytes do.
        #[test]
        fn random_questions_never_panic_the_handler(
            labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..5),
            inside in any::<bool>(),
            qtype in any::<u16>(),
            class in any::<u16>(),
            op in 0u8..16,
            edns in proptest::option::of(any::<u8>()),
        ) {
            let suffix: &[&[u8]] = if inside { &[b"enjin", b"internal"] } else { &[b"example"] };
            let all = labels.iter().map(Vec::as_slice).chain(suffix.iter().copied());
            // Random bytes make any label, dots and all; only over-long names are skipped.
            let Ok(qname) = Name::from_labels(all) else { return Ok(()) };
            let rt = runtime();
            let bytes = query_bytes(
                qname,
                RecordType::from(qtype),
                DNSClass::from(class),
                OpCode::from_u8(op),
                edns,
            );
            let response = handle(&rt, &handler(), &bytes);
            prop_assert!(response.is_some());
        }
    }
}
