//! The control plane: the authenticated meta HTTP API over the state store. It is the only
//! component that touches the store; it must never trust a request it has not authenticated,
//! and never acknowledge a write before the store has made it durable.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod audit;
mod auth;
pub mod biscuits;
pub mod bus;
pub mod cache;
mod config;
pub mod controller;
mod extract;
pub mod firewall;
pub mod ipam;
pub mod leader;
pub mod limits;
mod metrics;
pub mod netpolicy;
mod openapi;
pub mod platform;
pub mod ports;
mod problem;
pub mod quota;
mod registry;
mod routes;
mod server;
pub mod tls;
pub mod uids;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::Utc;
use enjin_store::Store;
use tokio::net::TcpListener;

pub use access::{Grants, Scope};
pub use audit::AuditAccount;
pub use auth::{
    ADMIN_PRINCIPAL, ADMIN_ROLE, Auth, AuthError, JoinGrant, Presented, Principal, SYSTEM_ACCOUNT,
    VIEWER_ROLE, presented, read_bearer,
};
pub use config::{ApiLimits, AuditConfig, ControlConfig, InstanceDefaults, Rate};
pub use problem::ApiError;
pub use registry::{Registry, RegistryError, object_key};
pub use routes::{Perm, RouteDef};

use crate::metrics::Metrics;
use crate::routes::AppState;

/// The control plane over one store.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    state: AppState,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    audit: AuditConfig,
    limits: ApiLimits,
    /// TLS for the API; plain HTTP without it.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// This server among the cloud's control-plane servers (the leader key's value).
    server_id: String,
}

impl ControlPlane {
    /// A control plane with the default configuration.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ControlPlane::with_config(store, &ControlConfig::default())
    }

    /// A control plane over `store` with `config`'s limits, audit retention and instance defaults,
    /// listing straight from the store (no watch cache; see [`ControlPlane::with_registry`]).
    pub fn with_config(store: Arc<dyn Store>, config: &ControlConfig) -> Self {
        ControlPlane::with_registry(Registry::with_config(store, config), config)
    }

    /// A control plane over `registry` (made with the same `config`; with a watch cache when
    /// lists should be answered from one).
    pub fn with_registry(registry: Registry, config: &ControlConfig) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let openapi = Arc::new(openapi::document(&routes::table()));
        let metrics = Arc::new(Metrics::default());
        let state = AppState {
            auth: Auth::new(registry.clone()),
            audit: audit::AuditLog::new(registry.store().clone(), Arc::clone(&metrics)),
            registry,
            metrics,
            openapi,
            stopping,
            bus: None,
            platform: None,
            rate: config.api.rate.map(|r| Arc::new(limits::RateLimiter::new(r))),
            failed_auth: config.api.failed_auth.map(|r| Arc::new(limits::FailedAuthLimiter::new(r))),
        };
        ControlPlane {
            state,
            stop: Arc::new(stop),
            audit: config.audit,
            limits: config.api,
            tls: None,
            server_id: default_server_id(),
        }
    }

    /// Serve the API over TLS with this configuration (see [`tls::server_config`]).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Run the keys-and-trust service (and serve its routes) on this control plane.
    pub fn with_bus(mut self, bus: Arc<bus::BusAuthority>) -> Self {
        self.state.bus = Some(bus);
        self
    }

    /// Sign root biscuits with `key` and accept only biscuits it signed (the data directory's
    /// ring 0 token-signing key). Without one, a key made at start and kept in memory is used.
    pub fn with_token_key(mut self, key: biscuits::TokenKey) -> Self {
        self.state.auth = self.state.auth.with_token_key(key);
        self
    }

    /// Run the platform (apps, packages, routes) on this control plane.
    pub fn with_platform(mut self, platform: Arc<platform::Platform>) -> Self {
        self.state.platform = Some(platform);
        self
    }

    /// The registry the API reads and writes through, for services run beside the API.
    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// Tokens and principals, for issuing the first admin token or checking one outside a request.
    pub fn auth(&self) -> &Auth {
        &self.state.auth
    }

    /// Create the system account, the built-in roles and the admin membership if missing.
    pub async fn bootstrap(&self) -> Result<(), RegistryError> {
        self.state.auth.bootstrap(Utc::now()).await
    }

    /// The OpenAPI document served at `/v1/openapi.json`.
    pub fn openapi(&self) -> &serde_json::Value {
        &self.state.openapi
    }

    /// Every route, with authentication, authorization, rate limiting and the audit log, but
    /// without what [`ControlPlane::serve`] adds at the door (connection limit, timeouts, the
    /// `Content-Length` check, TLS) and without its background tasks. This is what `serve`
    /// runs; on its own it drives the API in process, with no listener.
    pub fn router(&self) -> Router {
        routes::router(self.state.clone(), routes::table())
    }

    /// Serve the API on `listener` (over TLS when [`ControlPlane::with_tls`] gave it a
    /// configuration, else plain HTTP) with the configured limits at the door, until `shutdown`
    /// completes; then stop taking connections and let those in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.router();
        // The platform's controllers run on the one server that leads (see `leader`).
        let stop = self.stop;
        let controllers = self.state.platform.clone().map(|p| {
            let who = leader::Candidate { id: self.server_id.clone(), ..leader::Candidate::controllers("") };
            tokio::spawn(p.lead_controllers(who, stop.subscribe(), Arc::clone(&self.state.metrics)))
        });
        let store = self.state.registry.store().clone();
        tokio::spawn(compact_history(store.clone(), stop.subscribe()));
        tokio::spawn(record_token_use(self.state.auth.clone(), stop.subscribe()));
        let metrics = Arc::clone(&self.state.metrics);
        tokio::spawn(audit::prune_loop(store, Arc::clone(&metrics), self.audit.retention, stop.subscribe()));
        // Watches are endless streams; ending them lets the drain finish.
        let stopping = move || {
            stop.send_replace(true);
        };
        let audit = self.state.audit.clone();
        let served = server::serve(listener, app, self.tls, self.limits, metrics, shutdown, stopping).await;
        if let Some(c) = controllers {
            // `stopping` has made the server step down; its controllers stop with that.
            let _ = c.await;
        }
        // The records of the last requests answered.
        audit.flush().await;
        served
    }
}

/// The machine's host name and a random suffix: unique among servers, readable in the leader
/// key.
fn default_server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", if host.is_empty() { "server" } else { host }, &suffix[..8])
}

/// How often the times tokens were last used are written down.
const RECORD_USE_EVERY: Duration = Duration::from_secs(60);

/// Write down once a minute when tokens were last used (see [`Auth::record_use`]), and once
/// more on the way out.
async fn record_token_use(auth: Auth, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RECORD_USE_EVERY, RECORD_USE_EVERY);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        if let Err(e) = auth.record_use().await {
            tracing::warn!(error = %e, "cannot record when tokens were last used");
        }
        if stop {
            return;
        }
    }
}

/// How many revisions of history are kept for watches to resume from.
pub const HISTORY_REVISIONS: i64 = 10_000;
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Discard history older than [`HISTORY_REVISIONS`] now and then, so the store stays bounded;
/// a watcher further behind than that gets 410 and lists again.
async fn compact_history(store: Arc<dyn Store>, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(COMPACT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let (current, compacted) = match (store.current_revision().await, store.compacted_revision().await) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read revisions for compaction");
                continue;
            }
        };
        let target = current - HISTORY_REVISIONS;
        if target > compacted {
            match store.compact(target).await {
                Ok(()) => tracing::info!(revision = target, "compacted store history"),
                Err(e) => tracing::warn!(error = %e, revision = target, "store compaction failed"),
            }
        }
    }
}
