//! The router's own answers: small HTML pages that say what went wrong and whose fault it was.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::headers::X_ENJIN_FAULT;

/// Who has to act for the error to go away; sent as `x-enjin-fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The request itself (no host, a host nothing is routed at, an unreadable body).
    Client,
    /// The app: no instance, instances that do not connect, answer garbage or too slowly.
    Upstream,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
        }
    }
}

pub(crate) fn error_page(status: StatusCode, fault: Fault, message: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let message = escape_html(message);
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1>\n<p>{message}</p>\n<hr><p>enjin router</p></body></html>\n"
    );
    let mut response = Response::new(Body::full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_ENJIN_FAULT, HeaderValue::from_static(fault.as_str()));
    response
}

/// Hosts and app names come from clients and tables; they must not become markup.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_and_say_whose_fault() {
        let r = error_page(StatusCode::NOT_FOUND, Fault::Client, "no app is routed at <script>");
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-enjin-fault"], "client");
        let Body::Full(Some(bytes)) = r.into_body() else { panic!("a full body") };
        let html = std::str::from_utf8(&bytes).expect("utf-8");
        assert!(html.contains("no app is routed at &lt;script&gt;"), "{html}");
        assert!(html.contains("404 Not Found"));
    }
}
