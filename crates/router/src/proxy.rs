//! One request through the router: route it, pick a backend, forward, retry on connect failure,
//! and turn what went wrong into a page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::balance;
use crate::body::{Body, InFlight};
use crate::headers;
use crate::page::{Fault, error_page};
use crate::router::{Inner, Upstream};
use crate::server::Stage;
use crate::table::{self, Route};

/// Request bodies up to this size are buffered so that a retry can send them again; bigger
/// ones stream and get one attempt.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// The most attempts a request gets, whatever the config says; it bounds the list of backends
/// a request has tried.
const MAX_ATTEMPTS: usize = 8;

/// What a connection's requests share: the router, and facts about the client.
#[derive(Debug)]
pub(crate) struct Conn {
    pub inner: Arc<Inner>,
    /// The worker's pool of connections to instances.
    pub upstream: Upstream,
    /// The client's IP, made into a header value once per connection.
    pub client_ip: HeaderValue,
    /// Tunnels hold a clone so that shutdown waits for them, and end when it says abort.
    pub stop: watch::Receiver<Stage>,
    /// Held while the connection or a tunnel it started is open, so that its worker knows
    /// when it has nothing left to finish.
    pub alive: mpsc::Sender<()>,
}

pub(crate) async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let inner = &conn.inner;
    let route = {
        let table = inner.table();
        let Some(raw) = headers::request_host(&req) else {
            inner.metrics.unrouted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(error_page(StatusCode::BAD_REQUEST, Fault::Client, "the request names no host"));
        };
        let host = table::normalize_host(raw);
        match table.route(&host, req.uri().path()) {
            Some(route) => route.clone(),
            None => {
                inner.metrics.unrouted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = format!("no app is routed at {host}");
                return Ok(error_page(StatusCode::NOT_FOUND, Fault::Client, &message));
            }
        }
    };
    let flight = InFlight::begin(route.app.clone());
    let response = forward(&conn, &route, req, flight).await;
    route.app.respond(response.status().as_u16(), start.elapsed());
    Ok(response)
}

/// The request's body, as the attempts will send it.
enum Payload {
    /// Empty or buffered: can be sent again.
    Replayable(Option<Bytes>),
    /// Streaming: one attempt only.
    Stream(Incoming),
}

async fn forward(
    conn: &Conn,
    route: &Arc<Route>,
    mut req: Request<Incoming>,
    mut flight: InFlight,
) -> Response<Body> {
    let inner = &conn.inner;
    let app = route.app.name();
    if route.backends.is_empty() {
        let message = format!("app {app} has no instance that can serve it");
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Fault::Upstream, &message);
    }
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let payload = match payload(inner, &parts, body).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    prepare(conn, &mut parts, upgrade);
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));

    let attempts = (inner.config.max_attempts.max(1) as usize).min(MAX_ATTEMPTS);
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut payload = Some(payload);
    let mut last_connect_error = None;
    for attempt in 0..attempts {
        let now_ms = inner.now_ms();
        let Some(index) = balance::pick(&route.backends, &tried[..attempt], now_ms) else { break };
        tried[attempt] = index;
        let backend = &route.backends[index];
        if attempt > 0 {
            route.app.retried();
        }
        flight.attempt(&backend.state);

        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(backend.authority.clone());
        uri.path_and_query = Some(path.clone());
        let Ok(uri) = Uri::from_parts(uri) else {
            return error_page(
                StatusCode::BAD_GATEWAY,
                Fault::Router,
                "the router could not address the instance",
            );
        };
        let last = attempt + 1 == attempts;
        let body = match payload.take() {
            Some(Payload::Replayable(bytes)) => {
                payload = Some(Payload::Replayable(bytes.clone()));
                bytes.map_or(Body::Empty, |b| Body::Full(Some(b)))
            }
            Some(Payload::Stream(body)) => Body::Stream { body, _flight: None },
            None => break,
        };
        // The headers are copied only while another attempt could need them.
        let mut request = if payload.is_some() && !last {
            let mut r = Request::new(body);
            *r.method_mut() = parts.method.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        } else {
            let mut r = Request::new(body);
            *r.method_mut() = std::mem::take(&mut parts.method);
            *r.headers_mut() = std::mem::take(&mut parts.headers);
            r
        };
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;

        let sent = tokio::time::timeout(inner.config.response_timeout, conn.upstream.request(request)).await;
        match sent {
            Err(_elapsed) => {
                tracing::debug!(app, backend = %backend.addr, "no response headers in time");
                let message = format!(
                    "app {app}'s instance at {} sent no response within {} ms",
                    backend.addr,
                    inner.config.response_timeout.as_millis()
                );
                return error_page(StatusCode::GATEWAY_TIMEOUT, Fault::Upstream, &message);
            }
            Ok(Err(e)) if e.is_connect() => {
                route.app.connect_failed();
                let until = now_ms
                    .saturating_add(u64::try_from(inner.config.eject_for.as_millis()).unwrap_or(u64::MAX));
                if backend.state.eject(now_ms, until) {
                    tracing::warn!(app, backend = %backend.addr, error = %source_chain(&e), eject_for = ?inner.config.eject_for, "instance failed to connect; passing it over");
                }
                last_connect_error = Some((backend.addr, source_chain(&e)));
            }
            Ok(Err(e)) => {
                tracing::debug!(app, backend = %backend.addr, error = %source_chain(&e), "instance failed the request");
                let message = format!(
                    "app {app}'s instance at {} did not answer with HTTP: {}",
                    backend.addr,
                    source_chain(&e)
                );
                return error_page(StatusCode::BAD_GATEWAY, Fault::Upstream, &message);
            }
            Ok(Ok(response)) => {
                backend.state.restore();
                return respond(conn, response, client_upgrade, flight);
            }
        }
    }
    let message = match last_connect_error {
        Some((addr, error)) => {
            format!("no instance of app {app} could be reached; the last, at {addr}: {error}")
        }
        None => format!("no instance of app {app} could be reached"),
    };
    error_page(StatusCode::BAD_GATEWAY, Fault::Upstream, &message)
}

/// The body as the attempts will send it: empty and small bodies of idempotent requests are
/// kept for retries, everything else streams.
async fn payload(inner: &Inner, parts: &Parts, body: Incoming) -> Result<Payload, Response<Body>> {
    if !headers::is_idempotent(&parts.method) {
        return Ok(Payload::Stream(body));
    }
    if body.is_end_stream() {
        return Ok(Payload::Replayable(None));
    }
    if body.size_hint().upper().is_none_or(|n| n > REPLAY_LIMIT) {
        return Ok(Payload::Stream(body));
    }
    let read = Limited::new(body, REPLAY_LIMIT as usize).collect();
    match tokio::time::timeout(inner.config.client_timeout, read).await {
        Ok(Ok(collected)) => Ok(Payload::Replayable(Some(collected.to_bytes()))),
        Ok(Err(e)) => Err(error_page(
            StatusCode::BAD_REQUEST,
            Fault::Client,
            &format!("failed to read the request body: {e}"),
        )),
        Err(_) => Err(error_page(
            StatusCode::REQUEST_TIMEOUT,
            Fault::Client,
            "the request body did not arrive in time",
        )),
    }
}

/// The request's headers as the backend should see them.
fn prepare(conn: &Conn, parts: &mut Parts, upgrade: bool) {
    let headers = &mut parts.headers;
    headers::strip_hop_by_hop(headers, upgrade);
    // An absolute target may have come without `Host`; the backend still gets the host the
    // client asked for, not the instance's address.
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let h = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(h) = &h {
                headers.insert(header::HOST, h.clone());
            }
            h
        }
    };
    headers::add_forwarded(headers, &conn.client_ip, host);
}

fn respond(
    conn: &Conn,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    flight: InFlight,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 the client did not ask for cannot be followed: neither side would agree on
            // what the bytes after it mean.
            let message = "the instance switched protocols on a request that did not ask to";
            return error_page(StatusCode::BAD_GATEWAY, Fault::Upstream, message);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (stop, alive) = (conn.stop.clone(), conn.alive.clone());
        let app = flight.app().name().to_string();
        tokio::spawn(async move {
            tunnel(app, client_upgrade, upstream_upgrade, stop, flight).await;
            drop(alive);
        });
        let (mut parts, _) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, Body::Empty);
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, Body::Stream { body, _flight: Some(flight) })
}

/// Copies bytes both ways between an upgraded client and instance until either closes, or
/// shutdown gives up waiting.
async fn tunnel(
    app: String,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut stop: watch::Receiver<Stage>,
    flight: InFlight,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(app, error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(app, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(app, error = %e, "tunnel broke"),
        },
        _ = stop.wait_for(|s| *s == Stage::Abort) => tracing::debug!(app, "tunnel closed by shutdown"),
    }
    drop(flight);
}

/// An error with its causes, which hyper's errors keep apart ("client error (Connect)" says
/// little without "connection refused").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
