//! One request through the router: route it, pick a backend, forward, retry on connect failure,
//! and turn what went wrong into a page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::balance;
use crate::body::{Body, InFlight, Stream};
use crate::headers;
use crate::page::{Fault, error_page};
use crate::pool::{self, Checkin, ConnectError};
use crate::router::Inner;
use crate::server::Stage;
use crate::table::{self, Backend, Route};

/// The most attempts a request gets, whatever the config says; it bounds the list of backends
/// a request has tried.
const MAX_ATTEMPTS: usize = 8;

/// What a connection's requests share: the router, and facts about the client.
#[derive(Debug)]
pub(crate) struct Conn {
    pub inner: Arc<Inner>,
    /// The worker serving the connection: the index of its idle lists in each backend's pools.
    pub worker: usize,
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

async fn forward(
    conn: &Conn,
    route: &Arc<Route>,
    mut req: Request<Incoming>,
    mut flight: InFlight,
) -> Response<Body> {
    let inner = &conn.inner;
    let config = &inner.config;
    let app = route.app.name();
    if route.backends.is_empty() {
        let message = format!("app {app} has no instance that can serve it");
        return error_page(StatusCode::SERVICE_UNAVAILABLE, Fault::Upstream, &message);
    }
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    prepare(conn, &mut parts, upgrade);
    // An idempotent request without a body can also be sent again after an instance took it
    // and failed before answering (it died mid-request): keep what a second copy needs.
    let resendable = (!upgrade && is_idempotent(&parts.method) && hyper::body::Body::is_end_stream(&body))
        .then(|| resend_parts(&parts));
    let mut request = Some(Request::from_parts(parts, Body::Stream(Stream::new(body, None, None))));

    // Connecting comes before sending, so a connect failure has sent nothing and any request,
    // idempotent or not, can go to another backend whole; no body needs to be buffered.
    let deadline = tokio::time::Instant::now() + config.response_timeout;
    let attempts = (config.max_attempts.max(1) as usize).min(MAX_ATTEMPTS);
    let mut tried = [0usize; MAX_ATTEMPTS];
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
        let Some(req) = request.take() else { break };
        let exchanged = tokio::time::timeout_at(deadline, exchange(conn, backend, req)).await;
        match exchanged {
            Err(_elapsed) => {
                tracing::debug!(app, backend = %backend.addr, "no response headers in time");
                let message = format!(
                    "app {app}'s instance at {} sent no response within {} ms",
                    backend.addr,
                    config.response_timeout.as_millis()
                );
                return error_page(StatusCode::GATEWAY_TIMEOUT, Fault::Upstream, &message);
            }
            Ok(Exchange::Answered(response, sender)) => {
                backend.state.restore();
                let checkin = Checkin {
                    sender,
                    backend: backend.state.clone(),
                    worker: conn.worker,
                    max_idle: config.pool_max_idle_per_host,
                };
                return respond(conn, response, client_upgrade, flight, checkin);
            }
            Ok(Exchange::ConnectFailed(e, req)) => {
                request = Some(req);
                route.app.connect_failed();
                let eject_ms = u64::try_from(config.eject_for.as_millis()).unwrap_or(u64::MAX);
                if backend.state.eject(now_ms, now_ms.saturating_add(eject_ms)) {
                    tracing::warn!(app, backend = %backend.addr, error = %e, eject_for = ?config.eject_for, "instance failed to connect; passing it over");
                }
                last_connect_error = Some((backend.addr, e));
            }
            Ok(Exchange::Failed(e))
                if resendable.is_some() && attempt + 1 < attempts && route.backends.len() > 1 =>
            {
                tracing::debug!(app, backend = %backend.addr, error = %source_chain(&e), "instance failed an idempotent request; sending it to another");
                route.app.connect_failed();
                let eject_ms = u64::try_from(config.eject_for.as_millis()).unwrap_or(u64::MAX);
                backend.state.eject(now_ms, now_ms.saturating_add(eject_ms));
                request = resendable.as_ref().map(|p| Request::from_parts(p.clone(), Body::Empty));
            }
            Ok(Exchange::Failed(e)) => {
                tracing::debug!(app, backend = %backend.addr, error = %source_chain(&e), "instance failed the request");
                let message = format!(
                    "app {app}'s instance at {} did not answer with HTTP: {}",
                    backend.addr,
                    source_chain(&e)
                );
                return error_page(StatusCode::BAD_GATEWAY, Fault::Upstream, &message);
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

/// Methods RFC 9110 (9.2.2) calls idempotent: sending one twice does what sending it once does.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE, Method::TRACE].contains(method)
}

/// A copy of a prepared request's head, to send it again without a body.
fn resend_parts(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// How one attempt on one backend ended.
enum Exchange {
    /// Response headers, and the connection that carried them.
    Answered(Response<Incoming>, SendRequest<Body>),
    /// No connection could be had; the request, unsent, comes back.
    ConnectFailed(ConnectError, Request<Body>),
    /// The request went out and no HTTP response came back.
    Failed(hyper::Error),
}

/// Sends `req` on an idle connection to `backend`, or a new one. An idle connection the
/// instance closed before the request went out is replaced by a new one (hyper hands the
/// request back in that case).
async fn exchange(conn: &Conn, backend: &Backend, mut req: Request<Body>) -> Exchange {
    let config = &conn.inner.config;
    let pools = backend.state.pools();
    let mut reused = true;
    let mut sender = match pools.take(conn.worker, config.pool_idle_timeout).await {
        Some(s) => s,
        None => {
            reused = false;
            match pool::connect(backend.addr, config.connect_timeout).await {
                Ok(s) => s,
                Err(e) => return Exchange::ConnectFailed(e, req),
            }
        }
    };
    loop {
        match sender.try_send_request(req).await {
            Ok(response) => return Exchange::Answered(response, sender),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => {
                    tracing::debug!(backend = %backend.addr, error = %e.error(), "idle connection was closed; connecting anew");
                    req = unsent;
                    reused = false;
                    sender = match pool::connect(backend.addr, config.connect_timeout).await {
                        Ok(s) => s,
                        Err(e) => return Exchange::ConnectFailed(e, req),
                    };
                }
                _ => return Exchange::Failed(e.into_error()),
            },
        }
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
    // The instance gets the origin form; an absolute target already gave its host above.
    if parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    // Keep-alive to instances, whatever the client spoke.
    parts.version = Version::HTTP_11;
}

fn respond(
    conn: &Conn,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    flight: InFlight,
    checkin: Checkin,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 the client did not ask for cannot be followed: neither side would agree on
            // what the bytes after it mean.
            let message = "the instance switched protocols on a request that did not ask to";
            return error_page(StatusCode::BAD_GATEWAY, Fault::Upstream, message);
        };
        // The connection becomes the tunnel; it never goes back to the pool.
        drop(checkin);
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
    Response::from_parts(parts, Body::Stream(Stream::new(body, Some(checkin), Some(flight))))
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
