//! The accept loop and the graceful shutdown: stop accepting, let connections finish what they
//! are doing for up to the drain timeout, then close what is left.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument as _;

use crate::proxy::{self, Conn};
use crate::router::{Inner, Router};

/// Where the server is in its life; connections and tunnels watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Serving,
    /// Finish the request in flight, then close.
    Draining,
    /// The drain timed out: close now.
    Abort,
}

/// After the drain times out, how long closing the rest may take before `serve` returns anyway.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The first pause after an accept error that is not about one connection (out of file
/// descriptors, say); it doubles up to `ACCEPT_BACKOFF_MAX` while errors go on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The shortest pause between two sweeps of idle connections, however short the idle timeout.
const SWEEP_MIN: Duration = Duration::from_millis(100);

impl Router {
    /// Answers HTTP/1.1 on `listener` until `shutdown` resolves; then stops accepting, lets
    /// each connection finish the request it is on (open tunnels go on too) for up to
    /// [`RouterConfig::drain_timeout`](crate::RouterConfig::drain_timeout), closes what is
    /// left, and returns. With [`RouterConfig::threads`](crate::RouterConfig::threads) above 0
    /// the connections are served by that many worker threads of its own, which all end before
    /// it returns (or are left to end on their own after the abort grace, a second). Errors
    /// accepting connections are logged and waited out, not returned; errors starting the
    /// workers are.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let addr = listener.local_addr()?;
        let span = tracing::info_span!("router", %addr);
        self.serve_inner(listener, shutdown).instrument(span).await
    }

    async fn serve_inner(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let inner = &self.inner;
        let threads = inner.config.threads;
        let (stage, watcher) = watch::channel(Stage::Serving);
        let limit = Arc::new(Semaphore::new(inner.config.max_connections.max(1)));
        if threads == 0 {
            let work = worker(inner.clone(), 0, listener, watcher.clone(), limit);
            tokio::spawn(work.instrument(tracing::Span::current()));
        } else if let Err(e) = start_workers(inner, listener, &watcher, &limit, threads) {
            // The ones that did start stop at once; nothing has been accepted by them yet that
            // could be worth draining.
            stage.send_replace(Stage::Abort);
            return Err(e);
        }
        drop(watcher);
        tracing::info!(threads, max_connections = inner.config.max_connections, "serving");
        shutdown.await;

        let open = inner.metrics.connections_open.load(Ordering::Relaxed);
        tracing::info!(open, drain_timeout = ?inner.config.drain_timeout, "shutting down: draining connections");
        stage.send_replace(Stage::Draining);
        // Every worker, connection and tunnel holds a receiver; all are gone once they finish.
        if tokio::time::timeout(inner.config.drain_timeout, stage.closed()).await.is_err() {
            let open = inner.metrics.connections_open.load(Ordering::Relaxed);
            tracing::warn!(open, "drain timed out; closing the connections left");
            stage.send_replace(Stage::Abort);
            if tokio::time::timeout(ABORT_GRACE, stage.closed()).await.is_err() {
                tracing::warn!("connections still closing when the router stopped");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts `threads` workers, each a thread with a single-threaded runtime accepting from its
/// own registration of the same listening socket.
fn start_workers(
    inner: &Arc<Inner>,
    listener: TcpListener,
    watcher: &watch::Receiver<Stage>,
    limit: &Arc<Semaphore>,
    threads: usize,
) -> io::Result<()> {
    let listener = listener.into_std()?;
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (inner, watcher, limit) = (inner.clone(), watcher.clone(), limit.clone());
        let span = tracing::Span::current();
        std::thread::Builder::new().name(format!("enjin-router-{i}")).spawn(move || {
            runtime.block_on(
                async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(inner, i, listener, watcher, limit).await,
                        Err(e) => tracing::error!(error = %e, "worker failed to register the listener"),
                    }
                }
                .instrument(tracing::debug_span!(parent: &span, "worker", i)),
            );
            // Dropping the runtime here ends whatever an abort left running on it.
        })?;
    }
    Ok(())
}

/// One worker: accepts until the stage leaves `Serving`, then waits until its connections and
/// tunnels are done, or until the order to abort.
async fn worker(
    inner: Arc<Inner>,
    index: usize,
    listener: TcpListener,
    mut stage: watch::Receiver<Stage>,
    limit: Arc<Semaphore>,
) {
    tokio::spawn(sweep(inner.clone(), index, stage.clone()));
    let (alive, mut finished) = mpsc::channel::<()>(1);
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let permit = tokio::select! {
            biased;
            _ = stage.wait_for(|s| *s != Stage::Serving) => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed; if it were, there is nothing left to serve.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stage.wait_for(|s| *s != Stage::Serving) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF;
                let conn =
                    connection(inner.clone(), index, stream, peer, stage.clone(), alive.clone(), permit);
                tokio::spawn(conn.instrument(tracing::debug_span!("connection", %peer)));
            }
            // About one connection that went away before it was accepted.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                tracing::debug!(error = %e, "accept failed");
            }
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                tokio::select! {
                    _ = stage.wait_for(|s| *s != Stage::Serving) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    drop(alive);
    tokio::select! {
        _ = finished.recv() => {}
        _ = stage.wait_for(|s| *s == Stage::Abort) => {}
    }
}

/// Closes this worker's idle connections to instances once they are older than the pool's idle
/// timeout, until shutdown starts.
async fn sweep(inner: Arc<Inner>, worker: usize, mut stage: watch::Receiver<Stage>) {
    let idle = inner.config.pool_idle_timeout;
    let every = (idle / 2).max(SWEEP_MIN);
    loop {
        tokio::select! {
            _ = stage.wait_for(|s| *s != Stage::Serving) => return,
            () = tokio::time::sleep(every) => {}
        }
        let table = inner.table();
        for backend in table.hosts.values().flatten().flat_map(|r| r.backends.iter()) {
            backend.state.pools().sweep(worker, idle);
        }
    }
}

async fn connection(
    inner: Arc<Inner>,
    worker: usize,
    stream: TcpStream,
    peer: SocketAddr,
    mut stage: watch::Receiver<Stage>,
    alive: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
) {
    // Small requests and responses must not wait for Nagle's algorithm.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "failed to set TCP_NODELAY");
    }
    let metrics = &inner.metrics;
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    let client_timeout = inner.config.client_timeout;
    let conn = Arc::new(Conn {
        client_ip: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        stop: stage.clone(),
        alive,
        worker,
        inner,
    });
    let service = {
        let conn = conn.clone();
        service_fn(move |req| proxy::handle(conn.clone(), req))
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut served = pin!(served);
    let mut watching = true;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            changed = stage.changed(), if watching => {
                match changed.map(|()| *stage.borrow_and_update()) {
                    Ok(Stage::Serving) => {}
                    Ok(Stage::Draining) => served.as_mut().graceful_shutdown(),
                    Ok(Stage::Abort) => break,
                    // The server is gone without saying abort; let the connection finish.
                    Err(_) => watching = false,
                }
            }
        }
    }
    conn.inner.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
}
