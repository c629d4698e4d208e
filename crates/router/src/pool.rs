//! Kept-alive HTTP/1.1 connections to instances: one idle list per backend and worker, so a
//! worker reuses only connections its own thread drives. A connection goes back to its list
//! when the response body it carried has been read to the end, and is taken out of it again
//! most-recently-used first.
//!
//! This replaces hyper-util's pooled client, which spawns a task per request to notice when a
//! connection is free again and keys its pool by hashing the authority; here the body that
//! finishes hands the connection back itself, and the pool is found through the backend.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;

/// Why no connection to a backend could be had. Nothing was sent: it is always safe to try
/// another backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// A connection not carrying a request, and since when.
#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The idle connections to one backend, one list per worker.
#[derive(Debug)]
pub(crate) struct Pools {
    slots: Box<[Mutex<Vec<Idle>>]>,
}

impl Pools {
    pub fn new(workers: usize) -> Pools {
        Pools { slots: (0..workers.max(1)).map(|_| Mutex::new(Vec::new())).collect() }
    }

    fn slot(&self, worker: usize) -> &Mutex<Vec<Idle>> {
        // `worker` always comes from the same router's worker count; the modulo only keeps a
        // mistake from becoming a panic.
        &self.slots[worker % self.slots.len()]
    }

    /// The most recently used idle connection that is still open and younger than
    /// `idle_timeout`, ready to send.
    pub async fn take(&self, worker: usize, idle_timeout: Duration) -> Option<SendRequest<Body>> {
        loop {
            let idle = self.slot(worker).lock().unwrap_or_else(PoisonError::into_inner).pop()?;
            if idle.since.elapsed() >= idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // A connection is put back when its response body ends; its task may not have
            // noticed yet, which takes no more than one turn of it.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Puts a connection back, unless the list is full or the connection cannot take another
    /// request.
    pub fn put(&self, worker: usize, sender: SendRequest<Body>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut slot = self.slot(worker).lock().unwrap_or_else(PoisonError::into_inner);
        if slot.len() < max_idle {
            slot.push(Idle { sender, since: Instant::now() });
        }
    }

    /// Closes the idle connections of `worker` older than `idle_timeout` (dropping the sender
    /// ends the connection's task, which closes the socket).
    pub fn sweep(&self, worker: usize, idle_timeout: Duration) {
        let mut slot = self.slot(worker).lock().unwrap_or_else(PoisonError::into_inner);
        slot.retain(|idle| idle.since.elapsed() < idle_timeout && !idle.sender.is_closed());
    }

    #[cfg(test)]
    pub fn idle(&self, worker: usize) -> usize {
        self.slot(worker).lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A new connection to `addr`, its task spawned on the current runtime.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<Body>, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    // Requests and responses are small and latency-bound; Nagle would hold them back.
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "connection to instance ended with an error");
        }
    });
    Ok(sender)
}

/// Where a connection goes back when the response it carried has been read whole.
#[derive(Debug)]
pub(crate) struct Checkin {
    pub sender: SendRequest<Body>,
    pub backend: Arc<crate::balance::BackendState>,
    pub worker: usize,
    pub max_idle: usize,
}

impl Checkin {
    pub fn put(self) {
        self.backend.pools().put(self.worker, self.sender, self.max_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_reused_and_expire() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new()))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service),
                );
            }
        });
        let pools = Pools::new(2);
        assert!(pools.take(0, Duration::from_secs(60)).await.is_none());
        let sender = connect(addr, Duration::from_secs(5)).await.expect("connect");
        pools.put(1, sender, 8);
        assert_eq!((pools.idle(0), pools.idle(1)), (0, 1));
        assert!(pools.take(0, Duration::from_secs(60)).await.is_none(), "another worker's connection");
        let mut sender = pools.take(1, Duration::from_secs(60)).await.expect("reused");
        let req = http::Request::builder().uri("/").header("host", "x").body(Body::Empty).expect("request");
        assert_eq!(sender.send_request(req).await.expect("response").status(), 200);
        pools.put(1, sender, 8);
        pools.put(1, connect(addr, Duration::from_secs(5)).await.expect("connect"), 1);
        assert_eq!(pools.idle(1), 1, "the list is full at max_idle");
        pools.sweep(1, Duration::ZERO);
        assert_eq!(pools.idle(1), 0);
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(connect(dead, Duration::from_secs(5)).await, Err(ConnectError::Io(_))));
    }
}
