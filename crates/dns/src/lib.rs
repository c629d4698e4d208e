//! The DNS service: answers A and SRV queries for apps, instances and hosts, authoritatively,
//! from the last zone snapshot it was given (or saved to disk); it must never reach the control
//! plane or the store to answer, never resolve names outside its zone, and never panic on a query.
//!
//! The zone arrives whole, versioned ([`DnsZone`]); [`DnsServer::apply`] swaps it in if it is
//! newer, and queries read whichever snapshot is current when they arrive. hickory-server does
//! the wire protocol (UDP and TCP, parsing, truncation); this crate decides the answers.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod handler;
mod metrics;
pub mod snapshot;
mod zone;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use enjin_model::api::DnsZone;
use hickory_server::ServerFuture;
use serde::{Deserialize, Serialize};

use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::zone::Zone;

pub use crate::zone::BuildZoneError;

/// The DNS server's settings, validated by whoever reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// TTL of every record, and how long resolvers may cache a negative answer. Short, because
    /// instances come and go and the zone is rebuilt on every change (default 5).
    pub ttl_secs: u32,
    /// A TCP connection that sends no complete query for this long is closed (default 10).
    pub tcp_idle_timeout_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self { ttl_secs: 5, tcp_idle_timeout_secs: 10 }
    }
}

/// Why [`DnsServer::serve`] stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket handed to [`DnsServer::serve`] has no local address (it was never bound, or is
    /// broken); nothing was served.
    #[error("failed to read the local address of a dns socket: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// hickory's server on one socket failed; the other socket is stopped as well, so the
    /// service is down until it is started again.
    #[error("dns server on {protocol} {addr} stopped: {source}")]
    Stopped {
        /// `"udp"` or `"tcp"`: which of the two servers failed.
        protocol: &'static str,
        /// The local address of the socket that failed.
        addr: SocketAddr,
        /// hickory's reason.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// hickory's server on one socket finished without an error before shutdown was asked
    /// for, which means its socket went away; the other socket is stopped as well.
    #[error("dns server on {protocol} {addr} stopped unexpectedly")]
    Ended {
        /// `"udp"` or `"tcp"`: which of the two servers ended.
        protocol: &'static str,
        /// The local address of the socket that went away.
        addr: SocketAddr,
    },
}

/// The state every clone of a [`DnsServer`] and every query shares.
#[derive(Debug)]
pub(crate) struct Shared {
    config: DnsConfig,
    /// The current snapshot. Readers clone the `Arc` and drop the lock at once, so a swap never
    /// waits for a query and no lock is ever held across an await.
    zone: RwLock<Option<Arc<Zone>>>,
    metrics: Metrics,
}

impl Shared {
    pub(crate) fn current(&self) -> Option<Arc<Zone>> {
        self.zone.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// An authoritative DNS server for one zone; clones share the zone and the counters.
#[derive(Debug, Clone)]
pub struct DnsServer {
    shared: Arc<Shared>,
}

impl DnsServer {
    /// A server with no zone yet: until the first [`apply`](Self::apply) it answers SERVFAIL.
    pub fn new(config: DnsConfig) -> Self {
        Self { shared: Arc::new(Shared { config, zone: RwLock::new(None), metrics: Metrics::default() }) }
    }

    /// Serves `zone` from now on if its version is newer than the current one (or there is
    /// none). Returns false if it is not newer, or if its origin is not a domain name; records
    /// that are invalid or outside the origin are left out and logged, the rest served.
    pub fn apply(&self, zone: DnsZone) -> bool {
        // Cheap check first so that a stream of repeated snapshots is not rebuilt each time.
        if self.version().is_some_and(|current| zone.version <= current) {
            tracing::debug!(version = zone.version, "ignoring dns zone that is not newer");
            self.shared.metrics.zone_stale();
            return false;
        }
        let built = match Zone::build(&zone, self.shared.config.ttl_secs) {
            Ok(built) => Arc::new(built),
            Err(error) => {
                tracing::warn!(%error, "rejecting dns zone");
                self.shared.metrics.zone_invalid();
                return false;
            }
        };
        let mut slot = self.shared.zone.write().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: another apply may have won the race since.
        if slot.as_ref().is_some_and(|current| built.version <= current.version) {
            drop(slot);
            tracing::debug!(version = zone.version, "ignoring dns zone that is not newer");
            self.shared.metrics.zone_stale();
            return false;
        }
        let (version, records, skipped) = (built.version, built.records, built.skipped);
        *slot = Some(built);
        drop(slot);
        self.shared.metrics.zone_applied(skipped);
        tracing::info!(version, records, skipped, origin = %zone.origin, "dns zone applied");
        true
    }

    /// The version of the zone being served, if any.
    pub fn version(&self) -> Option<i64> {
        self.shared.current().map(|z| z.version)
    }

    /// Answers queries on `udp` and `tcp` until `shutdown` completes (then returns `Ok`), or
    /// until either socket fails.
    pub async fn serve(
        &self,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DnsError> {
        let udp_addr = udp.local_addr().map_err(DnsError::LocalAddr)?;
        let tcp_addr = tcp.local_addr().map_err(DnsError::LocalAddr)?;
        let handler = Handler { shared: self.shared.clone() };
        // One hickory server per socket, so that the failure of one is seen at once rather than
        // when the other one also ends.
        let mut udp_server = ServerFuture::new(handler.clone());
        udp_server.register_socket(udp);
        let mut tcp_server = ServerFuture::new(handler);
        let timeout = Duration::from_secs(self.shared.config.tcp_idle_timeout_secs);
        tcp_server.register_listener(tcp, timeout);
        let (udp_stop, tcp_stop) = (udp_server.shutdown_token().clone(), tcp_server.shutdown_token().clone());
        tracing::info!(udp = %udp_addr, tcp = %tcp_addr, "dns server listening");

        let udp_done = udp_server.block_until_done();
        let tcp_done = tcp_server.block_until_done();
        tokio::pin!(udp_done, tcp_done, shutdown);
        let failure = tokio::select! {
            () = &mut shutdown => None,
            result = &mut udp_done => Some(ended("udp", udp_addr, result)),
            result = &mut tcp_done => Some(ended("tcp", tcp_addr, result)),
        };
        udp_stop.cancel();
        tcp_stop.cancel();
        match failure {
            None => {
                // Stopping is prompt: hickory drops open TCP connections when its accept loop ends.
                let _ = tokio::join!(udp_done, tcp_done);
                tracing::info!(udp = %udp_addr, tcp = %tcp_addr, "dns server stopped");
                Ok(())
            }
            Some(error) => {
                tracing::error!(%error, "dns server failed");
                Err(error)
            }
        }
    }

    /// The counters in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let zone = self.shared.current().map(|z| (z.version, z.records));
        self.shared.metrics.render(zone)
    }
}

/// A server task ended before shutdown: even `Ok` means a socket went away.
fn ended(
    protocol: &'static str,
    addr: SocketAddr,
    result: Result<(), hickory_proto::ProtoError>,
) -> DnsError {
    match result {
        Ok(()) => DnsError::Ended { protocol, addr },
        Err(source) => DnsError::Stopped { protocol, addr, source },
    }
}
