//! The API's own accept loop, where the limits at the door are kept: at most `max_connections` open
//! connections (one more is closed as soon as it is accepted, so a flood of connections costs the
//! server an accept and a close each, never a queue), a TLS handshake within `handshake_timeout`,
//! each request's headers within `header_timeout` and its body within `body_timeout` of them, and
//! idle keep-alive connections closed after `idle_timeout`. Each connection is HTTP/1.1 (hyper),
//! optionally inside TLS (rustls); requests carry `ConnectInfo<SocketAddr>` like `axum::serve`
//! gives them.
//!
//! How the timeouts are kept: a watchdog beside each connection sees every read (through
//! [`Watched`]) and every request's start and end (the service marks them, and the response
//! body holds a guard until it is finished or dropped). With no request in flight, the first
//! byte read starts the header clock; a connection with no request in flight and nothing read
//! since the last response is idle. hyper's own header timer is off, because it starts as soon as
//! a connection waits for a request and so would cut idle keep-alive connections short. While a
//! request is in flight the watchdog waits (a watch may stream for hours); its body carries its
//! own deadline instead ([`Deadline`]): a body not in by then fails to read, the request is
//! answered 408 and the connection closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::limits::ApiLimits;
use crate::metrics::Metrics;

/// How long in-flight requests get to finish once the server stops taking connections.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);
/// After a connection's last answer, how long (and how many bytes) to keep reading what the
/// client still sends before closing: closing a socket with unread input makes the kernel send
/// a reset, which can destroy the answer before the client reads it (a 413 while the client is
/// still sending its body, say). Like nginx's lingering close.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// How long to wait after `accept` fails (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every connection of one server shares.
struct Door {
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ApiLimits,
    metrics: Arc<Metrics>,
}

/// Serve `app` on `listener` until `shutdown` completes; then stop accepting, call `stopping`
/// (which ends endless responses), ask every connection to finish its request and close, and
/// wait for them (at most [`DRAIN_PATIENCE`]).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ApiLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: impl FnOnce(),
) -> io::Result<()> {
    let door = Arc::new(Door { app, tls: tls.map(TlsAcceptor::from), limits, metrics });
    let capacity = limits.max_connections.clamp(1, ApiLimits::MAX_MAX_CONNECTIONS);
    let permits = Arc::new(Semaphore::new(capacity));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept an API connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            door.metrics.connection_closed("over-capacity");
            tracing::debug!(%peer, max = capacity, "closed a connection over the cap");
            drop(tcp);
            continue;
        };
        tokio::spawn(connection(tcp, peer, permit, Arc::clone(&door), drain_rx.clone()));
    }
    drop(listener);
    stopping();
    drain_tx.send_replace(true);
    // Every connection holds a permit until it is done: having them all back means drained.
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_PATIENCE, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(patience = ?DRAIN_PATIENCE, "API connections still open after the drain; leaving them");
    }
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    door: Arc<Door>,
    drain: watch::Receiver<bool>,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let Some(acceptor) = &door.tls else {
        return http(tcp, peer, &door, drain).await;
    };
    match tokio::time::timeout(door.limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => http(stream, peer, &door, drain).await,
        Ok(Err(e)) => {
            door.metrics.connection_closed("tls-handshake-failed");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            door.metrics.connection_closed("tls-handshake-timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Serve HTTP/1.1 on one connection, under the watchdog.
async fn http<S>(io: S, peer: SocketAddr, door: &Door, mut drain: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let service = {
        let (app, activity) = (door.app.clone(), Arc::clone(&activity));
        let (metrics, body_timeout) = (Arc::clone(&door.metrics), door.limits.body_timeout);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = InFlight::start(Arc::clone(&activity));
            let timed_out = Arc::new(AtomicBool::new(false));
            let deadline = Instant::now() + body_timeout;
            let mut req = req.map(|body| Body::new(Deadline::new(body, deadline, Arc::clone(&timed_out))));
            req.extensions_mut().insert(ConnectInfo(peer));
            let (mut app, metrics) = (app.clone(), Arc::clone(&metrics));
            let refused = crate::limits::announced_too_large(req.headers());
            // Boxed, so that the connection is `Unpin` and can hand its stream back at the end.
            Box::pin(async move {
                let mut resp = match refused {
                    Some(resp) => resp,
                    // The router is always ready; `call` needs no `poll_ready` first.
                    None => app.call(req).await?,
                };
                // Whatever the handler made of a body that failed to arrive, it was the client's
                // slowness: say so, and close the connection (the rest of the body is unread).
                if timed_out.load(Ordering::Relaxed) {
                    metrics.connection_closed("body-timeout");
                    tracing::debug!(%peer, timeout = ?body_timeout, "a request body did not arrive in time");
                    resp = body_timed_out(body_timeout);
                }
                Ok::<_, std::convert::Infallible>(resp.map(|body| Body::new(Tracked { body, _guard: guard })))
            })
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let mut conn =
        builder.serve_connection(TokioIo::new(Watched { io, activity: Arc::clone(&activity) }), service);
    let mut draining = false;
    let ended = loop {
        let deadline = activity.deadline(&door.limits);
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if let Some(reason) = activity.expired(Instant::now(), &door.limits) {
                    door.metrics.connection_closed(reason);
                    tracing::debug!(%peer, reason, "closed an API connection");
                    // Dropping the connection closes the socket; nothing is in flight.
                    return;
                }
            }
        }
    };
    match ended {
        Ok(()) => linger(conn.into_parts().io.into_inner().io).await,
        Err(e) => tracing::debug!(%peer, error = %e, "API connection ended with an error"),
    }
}

/// Close our side, then read and drop what the client still sends, within [`LINGER`] and
/// [`LINGER_BYTES`], so that the close is a FIN and not a reset.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let drained = async {
        io.shutdown().await?;
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0;
        while total < LINGER_BYTES {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok::<_, io::Error>(())
    };
    // Whatever happens here, the answer has been sent; the socket closes when `io` drops.
    let _ = tokio::time::timeout(LINGER, drained).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What the watchdog knows of one connection.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when the watchdog's deadline may have moved earlier or appeared.
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
struct ActivityState {
    in_flight: usize,
    /// When the headers of the next request began to arrive (or the connection became ready,
    /// for its first request), while no request is in flight.
    head_started: Option<Instant>,
    /// When the last request in flight finished.
    idle_since: Instant,
}

impl Activity {
    fn new(now: Instant) -> Self {
        let state = ActivityState { in_flight: 0, head_started: Some(now), idle_since: now };
        Activity { state: Mutex::new(state), changed: Notify::new() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ActivityState) -> T) -> T {
        // The state is plain data; a panic elsewhere cannot leave it half-written.
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s)
    }

    fn read(&self, now: Instant) {
        let started = self.with(|s| {
            let starts = s.in_flight == 0 && s.head_started.is_none();
            if starts {
                s.head_started = Some(now);
            }
            starts
        });
        if started {
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.with(|s| {
            s.in_flight += 1;
            s.head_started = None;
        });
    }

    fn request_finished(&self, now: Instant) {
        let idle = self.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = now;
            }
            s.in_flight == 0
        });
        if idle {
            self.changed.notify_one();
        }
    }

    /// When the watchdog should look again; `None` while a request is in flight.
    fn deadline(&self, limits: &ApiLimits) -> Option<Instant> {
        self.with(|s| match (s.in_flight, s.head_started) {
            (0, Some(h)) => Some(h + limits.header_timeout),
            (0, None) => Some(s.idle_since + limits.idle_timeout),
            _ => None,
        })
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, now: Instant, limits: &ApiLimits) -> Option<&'static str> {
        self.with(|s| match (s.in_flight, s.head_started) {
            (0, Some(h)) if now >= h + limits.header_timeout => Some("header-timeout"),
            (0, None) if now >= s.idle_since + limits.idle_timeout => Some("idle"),
            _ => None,
        })
    }
}

/// Marks a request in flight from its headers until its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished(Instant::now());
    }
}

/// A response body that keeps its request in flight until hyper has sent it or dropped it.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive in full by a deadline. Past it, reading the body fails and
/// `timed_out` is set, so that the answer is a 408 whatever the handler made of the failure.
struct Deadline {
    body: Incoming,
    at: Instant,
    /// Made on the first read: a request whose body is never read needs no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set once the body has ended: a late read of a body already in is not a timeout.
    done: bool,
    timed_out: Arc<AtomicBool>,
}

/// Why a request body could not be read: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl Deadline {
    fn new(body: Incoming, at: Instant, timed_out: Arc<AtomicBool>) -> Self {
        Deadline { body, at, timer: None, done: false, timed_out }
    }
}

impl hyper::body::Body for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Polled before the body, every time: a body trickling in is always ready with one
        // more byte, and must still be stopped.
        let at = this.at;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.done = true;
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The answer to a request whose body did not arrive within `timeout`: 408, and the
/// connection closes (the rest of the body is never read).
fn body_timed_out(timeout: Duration) -> axum::response::Response {
    use axum::response::IntoResponse;
    let detail =
        format!("the request body did not arrive within {} s of its headers", timeout.as_secs_f64().ceil());
    let mut resp =
        crate::problem::ApiError::new(axum::http::StatusCode::REQUEST_TIMEOUT, "body-timeout", detail)
            .into_response();
    resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    resp
}

/// A connection's stream, telling the watchdog when bytes arrive.
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    /// A request's whole answer over a fresh plain connection.
    async fn exchange(addr: SocketAddr, request: &str) -> (SocketAddr, String) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let local = tcp.local_addr().expect("local address");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await.expect("read");
        (local, String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_and_oversize_bodies_stop_at_the_door() {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::new(Metrics::default());
        let shutdown = async move {
            let _ = stopped.await;
        };
        let serving =
            tokio::spawn(serve(listener, app, None, ApiLimits::default(), metrics, shutdown, || {}));

        let (local, answer) =
            exchange(addr, "GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "the handler saw {local}: {answer}");

        let huge = crate::limits::MAX_REQUEST_BODY_BYTES + 1;
        let (_, answer) =
            exchange(addr, &format!("POST /peer HTTP/1.1\r\nHost: x\r\nContent-Length: {huge}\r\n\r\n"))
                .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        stop.send(()).expect("still serving");
        let served = tokio::time::timeout(Duration::from_secs(10), serving).await.expect("stopped in time");
        served.expect("no panic").expect("no error");
    }

    /// Read until the peer closes the connection (or `limit` passes): what was read, and when
    /// the close came.
    async fn until_closed(mut read: impl AsyncRead + Unpin, limit: Duration) -> (String, Duration) {
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(limit.saturating_sub(started.elapsed()), read.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), started.elapsed()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("still open after {limit:?}: {}", String::from_utf8_lossy(&got)),
            }
        }
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_off_with_408_and_a_body_in_time_is_served() {
        let app = Router::new().route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::new(Metrics::default());
        let timeout = Duration::from_millis(700);
        let limits = ApiLimits { body_timeout: timeout, ..limits() };
        let shutdown = async move {
            let _ = stopped.await;
        };
        let serving = tokio::spawn(serve(listener, app, None, limits, Arc::clone(&metrics), shutdown, || {}));

        // Headers at once, then the body a byte every 100 ms: 100 bytes would take 10 s.
        let (read, mut write) = TcpStream::connect(addr).await.expect("connect").into_split();
        let sent = std::time::Instant::now();
        write
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await
            .expect("head");
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if write.write_all(b"a").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (answer, _) = until_closed(read, Duration::from_secs(8)).await;
        let took = sent.elapsed();
        trickle.abort();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        assert!(answer.contains("application/problem+json") && answer.contains("body-timeout"), "{answer}");
        assert!(took >= timeout, "cut only after the body timeout: {took:?}");
        assert!(took < Duration::from_secs(5), "cut soon after it, not when the body ends: {took:?}");
        assert!(metrics.render(0).contains("enjin_http_connections_closed_total{reason=\"body-timeout\"} 1"));

        // A body sent in time is read and answered as usual.
        let (_, answer) = exchange(
            addr,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n5"), "{answer}");

        stop.send(()).expect("still serving");
        let served = tokio::time::timeout(Duration::from_secs(10), serving).await.expect("stopped in time");
        served.expect("no panic").expect("no error");
    }

    fn limits() -> ApiLimits {
        ApiLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ApiLimits::default()
        }
    }

    #[test]
    fn a_new_connection_must_send_its_headers_in_time() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        let l = limits();
        assert_eq!(a.deadline(&l), Some(t0 + l.header_timeout));
        // Bytes dribbling in do not move the clock.
        a.read(t0 + Duration::from_secs(5));
        assert_eq!(a.expired(t0 + Duration::from_secs(9), &l), None);
        assert_eq!(a.expired(t0 + Duration::from_secs(10), &l), Some("header-timeout"));
    }

    #[test]
    fn a_request_in_flight_is_never_cut_and_then_idleness_counts() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        let l = limits();
        a.read(t0);
        a.request_started();
        assert_eq!(a.deadline(&l), None);
        assert_eq!(a.expired(t0 + Duration::from_secs(3600), &l), None, "a long watch stays open");
        let done = t0 + Duration::from_secs(3600);
        a.request_finished(done);
        assert_eq!(a.deadline(&l), Some(done + l.idle_timeout));
        assert_eq!(a.expired(done + Duration::from_secs(59), &l), None);
        assert_eq!(a.expired(done + Duration::from_secs(60), &l), Some("idle"));
    }

    #[test]
    fn the_next_requests_header_clock_starts_at_its_first_byte() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        let l = limits();
        a.request_started();
        a.request_finished(t0);
        let first_byte = t0 + Duration::from_secs(30);
        a.read(first_byte);
        assert_eq!(a.deadline(&l), Some(first_byte + l.header_timeout));
        assert_eq!(a.expired(first_byte + Duration::from_secs(10), &l), Some("header-timeout"));
    }
}
