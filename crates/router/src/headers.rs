//! Header rules of a proxy: which headers belong to one hop and are dropped, and which the
//! router adds.

use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_ENJIN_FAULT: HeaderName = HeaderName::from_static("x-enjin-fault");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are dropped whether or not `Connection` names
/// them. `TE` is handled on its own: `TE: trailers` may pass.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The host a request is for, as sent: the authority of an absolute target, else `Host`.
/// `None` if there is none or it is not text.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok())
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Drops the hop-by-hop headers and the ones `Connection` names. With `upgrade`, keeps
/// `Upgrade` and says `Connection: upgrade`, which the next hop needs to switch protocols.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Collected first: the names borrow from the map that is about to change. Only
        // requests that name extra headers pay for this.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(upgrade && *n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Sets `X-Forwarded-For` (the client's address appended to what it sent), `-Proto` and
/// `-Host`. The router is the edge: a `-Proto` or `-Host` the client sent is replaced.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, host: Option<HeaderValue>) {
    let forwarded_for = match headers.get(X_FORWARDED_FOR) {
        None => client_ip.clone(),
        Some(earlier) => {
            let mut joined = Vec::with_capacity(earlier.len() + 2 + client_ip.len());
            joined.extend_from_slice(earlier.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("a name"),
                HeaderValue::from_str(v).expect("a value"),
            );
        }
        m
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn keeps_upgrade_and_te_trailers() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("te", "trailers")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(h.get("connection").map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade(&map(&[("connection", "keep-alive, UPGRADE"), ("upgrade", "h2c")])));
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https")]);
        add_forwarded(&mut h, &ip, Some(HeaderValue::from_static("a.example")));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &ip, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    proptest::proptest! {
        #[test]
        fn stripping_never_panics(conn in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&conn) {
                h.insert(header::CONNECTION, v.clone());
                h.insert(X_FORWARDED_FOR, v);
            }
            let _ = is_upgrade(&h);
            strip_hop_by_hop(&mut h, true);
            add_forwarded(&mut h, &HeaderValue::from_static("::1"), None);
        }
    }
}
