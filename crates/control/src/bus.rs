//! The ring's parent service (a ring 0 service): the ring's certificate authority, this
//! machine's identity as the ring's parent, and everything the parent does on the ring's bus.
//! Its parts, one concern each:
//!
//! - `keys.rs`: the public keys of the ring's nodes (in the store; private halves never leave
//!   the machine that made them), join, rotation and revocation, and the trust bundle, published
//!   whole on the retained trust topic after every change, signed by the parent key, so every
//!   node learns whom to trust from the ring that runs it;
//! - `members.rs`: who may connect to the hub (certificates bound to current member keys);
//! - `intake.rs`: one task that turns every verified report into a closed `Report`;
//! - `controllers.rs`: the desired-state publisher and host liveness, on the watch cache;
//! - `requests.rs`: retained state, the services it answers, and requests to hosts.
//!
//! This file holds the service's state, its start ([`BusAuthority::open`],
//! [`BusAuthority::attach`]) and stop, TLS for this machine's own components, and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use enjin_bus::acl::{self, Member, MemberNameError, Role};
use enjin_bus::counters::Counters;
use enjin_bus::envelope::{Envelope, SealError};
use enjin_bus::hub::HubStats;
use enjin_bus::identity::{GenerateError, Identity, KeyId, LoadKeyError, SaveKeyError};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::{Transport, TransportError};
use enjin_bus::trust::{BundleError, KeyRole, Publisher, Verifier, VerifierConfig};
use enjin_model::Ring;
use enjin_model::api::{BusMessage, desired_topic};
use enjin_pki::RingCa;
use enjin_store::{Compare, Op, Store, StoreError, Txn};
use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::cache::WatchCache;
use crate::controller::{Controllers, Reconciler};
use crate::registry::{Registry, RegistryError};

mod controllers;
mod intake;
mod keys;
mod members;
mod requests;

use keys::{KeyRecord, key_key};
pub use requests::{LOGS_TIMEOUT, RequestHandler, STATS_STALE_AFTER};

/// The node label that makes a node's bus member the edge (router and DNS), not a host.
pub const EDGE_ROLE_LABEL: (&str, &str) = ("enjin.dev/role", "edge");

/// How long a rotated key stays accepted unless the caller says otherwise.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(300);
/// Validity of TLS certificates issued to a ring's members, unless configured otherwise: a day,
/// renewed by each member over the bus when two thirds of it have passed. Short, so that a
/// certificate that leaked is worth little, and long enough to ride out a long outage of the
/// key service.
pub const CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Validity of the certificates of this machine's own components (hub, control plane), which
/// are kept in memory and made again at each start.
const LOCAL_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why the ring's key service or bus could not do what was asked. The first four are the
/// caller's (the API answers 404, 409, 422 and 503); the rest are the server's own.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No key with this id (as the caller wrote it) in this ring.
    #[error("no key {0} in ring {1}")]
    NoSuchKey(String, u8),
    /// The change contradicts the key's life cycle (revoking a parent key, rotating a revoked
    /// one) or raced another change of it; the message says which.
    #[error("{0}")]
    Refused(String),
    /// A field of the request is not valid.
    #[error("{field}: {message}")]
    Invalid {
        /// The request's field, as the API names it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// This server runs no hub for the ring, so nothing can be asked over it.
    #[error("the ring bus is not running on this server")]
    NoHub,
    /// A file of the ring's keys, certificates or members could not be made or replaced.
    #[error("{}: {source}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The ring's CA could not be loaded, made or used to issue a certificate.
    #[error(transparent)]
    Pki(#[from] enjin_pki::PkiError),
    /// A new key pair could not be generated.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// This machine's parent key is on disk but cannot be read.
    #[error(transparent)]
    LoadKey(#[from] LoadKeyError),
    /// A new parent key could not be written (0600) to disk.
    #[error(transparent)]
    SaveKey(#[from] SaveKeyError),
    /// A member's name (in a certificate or a join) is not one the bus accepts.
    #[error("not a member name: {0}")]
    Member(#[from] MemberNameError),
    /// The stored keys make a trust bundle that members would reject.
    #[error("the trust bundle cannot be used: {0}")]
    Bundle(#[from] BundleError),
    /// A message could not be signed with the parent key.
    #[error("failed to sign a message: {0}")]
    Seal(#[from] SealError),
    /// The transport (the hub connection) refused or lost a publish or subscribe.
    #[error("the bus: {0}")]
    Transport(#[from] TransportError),
    /// A message's payload could not be encoded.
    #[error("failed to encode a message: {0}")]
    Encode(#[from] serde_json::Error),
    /// A node asked over the bus did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// A request over the bus failed for a reason none of the above names.
    #[error("the request over the bus failed: {0}")]
    Request(enjin_bus::node::NodeError),
    /// The store failed a read or a write of the ring's keys.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object the service reads or writes through the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where the service keeps its files and who it speaks for.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The ring whose bus this machine runs (as that ring's parent).
    pub ring: Ring,
    /// Private identities of this machine (0700 directory, 0600 files).
    pub keys_dir: PathBuf,
    /// Ring certificate authorities.
    pub pki_dir: PathBuf,
    /// This machine's label, the name of its parent key.
    pub label: String,
    /// This machine's node.
    pub node: Option<Uuid>,
    /// A host whose heartbeat is this late is *disconnected* …
    pub disconnected_after: Duration,
    /// … and this late, *lost*.
    pub lost_after: Duration,
    /// How long a member's certificate is valid ([`CERT_VALIDITY`] by default).
    pub certificate_validity: Duration,
    /// How long a member's old key stays accepted after it rotates ([`DEFAULT_OVERLAP`]).
    pub member_key_overlap: Duration,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The keys-and-trust service of one ring.
pub struct BusAuthority {
    store: Arc<dyn Store>,
    registry: Registry,
    ring: u8,
    ca: RingCa,
    config: BusConfig,
    /// Signs as this machine; replaced on rotation.
    publisher: Mutex<Arc<Publisher>>,
    transport: Mutex<Option<Arc<dyn Transport>>>,
    hub: Mutex<Option<(SocketAddr, Arc<HubStats>)>>,
    /// What this server, as a receiver, counted on the bus.
    counters: Arc<Counters>,
    /// Verified messages, for `enjin bus tail`.
    messages: broadcast::Sender<BusMessage>,
    /// The ring's parent keys and when each stops being accepted, for the hub's edge check.
    parents: Arc<RwLock<ParentKeys>>,
    /// Every key of the ring as the hub's admission check needs it.
    admitted: Arc<RwLock<members::AdmissionTable>>,
    /// The newest trust bundle version this server has read: a key request server whose
    /// verifier is older reads the keys again at once instead of refusing a new member.
    trust_version: std::sync::atomic::AtomicU64,
    /// Bumped each time the transport connects again.
    reconnections: tokio::sync::watch::Sender<u64>,
    /// After how long without a heartbeat a host is disconnected, and then lost.
    liveness: (Duration, Duration),
    /// Turned true by [`BusAuthority::stop`]: every loop of the service ends.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The desired-state publisher and liveness, once attached.
    controllers: Mutex<Option<Controllers>>,
    /// The latest use report of each host, by host node.
    host_stats: Mutex<std::collections::HashMap<Uuid, enjin_model::api::HostStats>>,
    /// The latest report of each edge node (router and DNS), from its own key.
    edge_reports: Mutex<std::collections::HashMap<Uuid, enjin_model::api::EdgeReport>>,
    /// When the ring's bus is NATS: the ring's account, which vouches for joiners' users, and
    /// where joiners reach the server.
    nats: Mutex<Option<(enjin_bus::nats::auth::NatsAccount, String)>>,
}

/// Each parent key and the time (ms) it stops being accepted, if it is retiring.
type ParentKeys = Vec<(KeyId, Option<i64>)>;

/// How often the bundle is published again even without a change, so that a node that missed
/// everything (or a hub that restarted and lost its retained state) is brought level.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(15);

impl std::fmt::Debug for BusAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusAuthority").field("ring", &self.ring).finish_non_exhaustive()
    }
}

/// A file error naming the file.
fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BusError + use<> {
    let path = path.to_path_buf();
    move |source| BusError::File { path, source }
}

impl BusAuthority {
    /// Load (or create, on first start) the ring's CA and this machine's parent key, and
    /// record the key's public half. Reads and writes go through `registry` (and its watch
    /// cache, if it has one).
    pub async fn open(registry: Registry, config: BusConfig) -> Result<Arc<BusAuthority>, BusError> {
        let store = registry.store().clone();
        let stopping = tokio::sync::watch::Sender::new(false);
        // Controllers need a cache's changes: a registry without one gets its own.
        let registry = match registry.cache() {
            Some(_) => registry,
            None => registry.with_cache(WatchCache::start(store.clone(), stopping.subscribe())),
        };
        let ring = config.ring.get();
        let ca = RingCa::load_or_create(&config.pki_dir, ring)?;
        for d in [&config.keys_dir, &config.pki_dir] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(d).map_err(file_error(d))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(file_error(d))?;
        }
        let path = config.keys_dir.join(format!("ring-{ring}-parent.key"));
        let identity = if path.exists() {
            Identity::load(&path)?
        } else {
            let id = Identity::generate()?;
            id.save(&path)?;
            id
        };
        let counters = Arc::new(Counters::new());
        let key = identity.key_id();
        let publisher = Publisher::starting_now(identity, ring, counters.clone());
        let (messages, _) = broadcast::channel(1024);
        let liveness = (config.disconnected_after, config.lost_after);
        let authority = BusAuthority {
            registry,
            store,
            ring,
            ca,
            config,
            publisher: Mutex::new(Arc::new(publisher)),
            transport: Mutex::new(None),
            hub: Mutex::new(None),
            counters,
            messages,
            parents: Arc::default(),
            admitted: Arc::default(),
            trust_version: std::sync::atomic::AtomicU64::new(0),
            reconnections: tokio::sync::watch::Sender::new(0),
            liveness,
            stopping,
            controllers: Mutex::new(None),
            host_stats: Mutex::default(),
            edge_reports: Mutex::default(),
            nats: Mutex::new(None),
        };
        authority.record_own_key(key).await?;
        // Fills the hub's tables, before any hub asks them.
        authority.bundle().await?;
        Ok(Arc::new(authority))
    }

    /// The ring whose bus this service is the parent of.
    pub fn ring(&self) -> u8 {
        self.ring
    }

    /// The ring CA's certificate (PEM), what members and the hub trust.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// TLS material for a component of this machine (the hub, the control plane's own bus
    /// client), issued by the ring CA. Kept in memory only. Its common name is
    /// `parent:<name>`: on the bus it is the ring's parent, to which every topic is open.
    pub fn local_tls(&self, name: &str, sans: &[String]) -> Result<TlsMaterial, BusError> {
        let member = Member::parent(name).map_err(BusError::from)?;
        self.issue_tls(&member, sans)
    }

    /// TLS material naming `member` (its role and id, which the hub's access rules read).
    fn issue_tls(&self, member: &Member, sans: &[String]) -> Result<TlsMaterial, BusError> {
        // Parent components' certificates are bound to no key: they are made in memory at
        // each start and never leave this process.
        let issued =
            self.ca.issue(&member.common_name(), sans, LOCAL_CERT_VALIDITY).map_err(BusError::from)?;
        Ok(TlsMaterial {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }

    /// The hub's edge check. Receivers verify everything end to end and count what they
    /// refuse, so the hub passes every topic but the retained ones (`state.*`: the trust
    /// bundle, each host's desired children), which only the ring's parent keys may write —
    /// otherwise a member could replace the state that reconnecting nodes are brought level
    /// with.
    pub fn hub_filter(&self) -> enjin_bus::hub::Filter {
        let parents = self.parents.clone();
        Arc::new(move |m: &enjin_bus::transport::Message| {
            if !m.topic.starts_with("state.") {
                return true;
            }
            let Ok(env) = Envelope::decode(&m.payload) else { return false };
            let now = now_ms();
            let allowed = parents
                .read()
                .map(|p| p.iter().any(|(id, until)| *id == env.sender() && until.is_none_or(|t| now < t)))
                .unwrap_or(false);
            allowed && env.topic() == m.topic && env.verify_signature().is_ok()
        })
    }

    /// Record the hub this server runs for the ring: its address (where requests over the
    /// bus are sent) and its statistics (served on `/metrics`).
    pub fn set_hub(&self, addr: SocketAddr, stats: Arc<HubStats>) {
        if let Ok(mut h) = self.hub.lock() {
            *h = Some((addr, stats));
        }
    }

    /// The ring's bus is NATS at `url` (as joiners reach it): joins that bring a user key get
    /// a JWT of `account` for it.
    pub fn set_nats(&self, account: enjin_bus::nats::auth::NatsAccount, url: String) {
        if let Ok(mut n) = self.nats.lock() {
            *n = Some((account, url));
        }
    }

    /// A joiner's user on the NATS bus, when the bus is NATS and it sent a user key.
    pub(crate) fn nats_join(
        &self,
        member: &Member,
        user_key: Option<&str>,
    ) -> Result<Option<enjin_model::api::NatsJoin>, BusError> {
        let Some(key) = user_key else { return Ok(None) };
        let Some((account, url)) = self.nats.lock().ok().and_then(|n| n.clone()) else { return Ok(None) };
        let jwt = account
            .user_jwt_for(key, member, enjin_bus::nats::auth::USER_VALIDITY)
            .map_err(|e| BusError::Invalid { field: "nats_user", message: e.to_string() })?;
        Ok(Some(enjin_model::api::NatsJoin { url, jwt }))
    }

    fn hub_addr(&self) -> Option<SocketAddr> {
        self.hub.lock().ok().and_then(|h| h.as_ref().map(|(a, _)| *a))
    }

    fn publisher(&self) -> Arc<Publisher> {
        match self.publisher.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Connect the service to its ring's bus: it follows every topic (verifying, counting and
    /// relaying to tails) and publishes the current trust bundle.
    pub async fn attach(self: &Arc<Self>, transport: Arc<dyn Transport>) -> Result<(), BusError> {
        let sub = transport.subscribe(">").map_err(BusError::from)?;
        let connection = transport.connection_state();
        if let Ok(mut t) = self.transport.lock() {
            *t = Some(transport);
        }
        if let Some(connected) = connection {
            self.until_stopped(self.clone().republish_on_reconnect(connected));
        }
        self.until_stopped(self.clone().serve_key_requests());
        let bundle = self.bundle().await?;
        let verifier = Verifier::new(bundle, VerifierConfig::default(), self.counters.clone())
            .map_err(BusError::from)?;
        self.until_stopped(self.clone().monitor(sub, verifier));
        let this = self.clone();
        self.until_stopped(async move {
            let mut tick = tokio::time::interval(REPUBLISH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = this.publish_trust().await {
                    tracing::warn!(error = %e, "failed to republish the trust bundle");
                }
            }
        });
        if let Some(cache) = self.registry.cache() {
            let mut controllers = Controllers::new(cache.clone());
            controllers.start(controllers::DesiredPublisher(self.clone()));
            let (disconnected_after, lost_after) = self.liveness;
            controllers.start(controllers::Liveness { bus: self.clone(), disconnected_after, lost_after });
            if let Ok(mut c) = self.controllers.lock()
                && let Some(old) = c.replace(controllers)
            {
                old.signal_stop();
            }
        }
        self.publish_trust().await
    }

    /// Run `reconciler` with this service's controllers (on the same cache, stopped with them);
    /// not at all before [`BusAuthority::attach`], which starts them.
    pub fn start_controller<R: Reconciler>(&self, reconciler: R) {
        match self.controllers.lock() {
            Ok(mut c) => match c.as_mut() {
                Some(controllers) => controllers.start(reconciler),
                None => tracing::error!(
                    controller = reconciler.name(),
                    "the bus has no controllers yet; not started"
                ),
            },
            Err(_) => tracing::error!(controller = reconciler.name(), "the bus's controllers are poisoned"),
        }
    }

    /// Run `task` until [`BusAuthority::stop`].
    pub fn until_stopped(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = task => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        });
    }

    /// Stop the service's loops and controllers (and its own watch cache, if it made one), and
    /// wait for the controllers to end.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        let controllers = self.controllers.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = controllers {
            c.stop().await;
        }
    }

    /// Give birth to a host this machine supervises: its bus identity (kept in `dir`, 0600,
    /// and only its public half in the store, bound to `node`), its TLS certificate from the
    /// ring CA and the signed trust bundle — the files its agent starts from. Idempotent: a
    /// host that already has its files keeps its identity (its agent is being restarted).
    pub async fn enroll_local(&self, node: Uuid, label: &str, dir: &std::path::Path) -> Result<(), BusError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        // Root's alone: the host's instances see their files only through their own mounts.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(file_error(dir))?;
        let key_path = dir.join("bus.key");
        self.finish_rotation(node, &key_path).await?;
        let identity = if key_path.exists() {
            Identity::load(&key_path)?
        } else {
            let id = Identity::generate()?;
            id.save(&key_path)?;
            id
        };
        let id = identity.key_id();
        let record = KeyRecord::new(id, self.ring, KeyRole::Member, label, Some(node), None);
        let k = key_key(self.ring, &id);
        self.store.txn(Txn::new().when([Compare::absent(&k)]).then([Op::put(&k, to_json(&record)?)])).await?;
        let member = self.node_member(node).await?;
        let issued =
            self.ca.issue_bound(&member.common_name(), &id.to_string(), self.config.certificate_validity)?;
        enjin_pki::write_private(&dir.join("tls.key"), &issued.key_pem)?;
        enjin_pki::write_private(&dir.join("tls.crt"), &issued.cert_pem)?;
        enjin_pki::write_private(&dir.join("ca.crt"), self.ca.cert_pem())?;
        let sealed = self.sealed_bundle(&self.publisher()).await?;
        let bundle = dir.join("bundle.env");
        enjin_sys::fs::write_private(&bundle, &sealed).map_err(file_error(&bundle))?;
        self.publish_trust().await
    }

    /// Publish the whole set of children `host` should run, on its retained desired topic.
    pub async fn publish_desired(&self, host: Uuid) -> Result<(), BusError> {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return Ok(()) };
        let desired = crate::netpolicy::desired_children(&self.registry, host).await?;
        let payload = to_json(&desired)?;
        let topic = desired_topic(host);
        let sealed = self.publisher().seal(&topic, None, payload, now_ms()).map_err(BusError::from)?;
        match t.publish(&topic, None, sealed) {
            Ok(()) | Err(TransportError::Full) => Ok(()),
            Err(e) => Err(BusError::from(e)),
        }
    }

    /// Verified messages from now on, for `enjin bus tail`.
    pub fn tail(&self) -> Result<broadcast::Receiver<BusMessage>, BusError> {
        if self.transport.lock().ok().and_then(|t| t.clone()).is_none() {
            return Err(BusError::NoHub);
        }
        Ok(self.messages.subscribe())
    }

    /// Prometheus lines: this server's receive-side counters and the hub's.
    pub fn render_metrics(&self) -> String {
        let mut out = enjin_bus::counters::render_prometheus(&[(self.ring, &self.counters)]);
        if let Some((_, stats)) = self.hub.lock().ok().and_then(|h| h.clone()) {
            let s = stats.snapshot();
            let ring = self.ring;
            for (name, help, value) in [
                ("enjin_bus_hub_connections", "Open hub connections.", s.connections),
                ("enjin_bus_hub_published_total", "Messages published through the hub.", s.published),
                ("enjin_bus_hub_delivered_total", "Messages the hub delivered to subscribers.", s.delivered),
                (
                    "enjin_bus_hub_filtered_total",
                    "Messages dropped at the hub's edge (unsigned or wrong ring).",
                    s.filtered,
                ),
                (
                    "enjin_bus_hub_slow_consumer_disconnects_total",
                    "Subscribers disconnected for falling behind.",
                    s.slow_consumer_disconnects,
                ),
                ("enjin_bus_hub_handshake_failures_total", "TLS handshakes refused.", s.handshake_failures),
                ("enjin_bus_hub_handshakes", "TLS handshakes in progress.", s.handshakes),
                (
                    "enjin_bus_hub_admission_refused_total",
                    "Connections closed before their handshake: the handshake budget (in all or per source address) was spent.",
                    s.admission_refused,
                ),
                (
                    "enjin_bus_hub_connections_refused_total",
                    "Authenticated connections closed because every member slot was taken.",
                    s.connections_refused,
                ),
                (
                    "enjin_bus_hub_subscribe_refused_total",
                    "Subscriptions refused by the members' access rules.",
                    s.subscribe_refused,
                ),
                (
                    "enjin_bus_hub_publish_refused_total",
                    "Publishes refused by the members' access rules (topic or reply-to).",
                    s.publish_refused,
                ),
                (
                    "enjin_bus_hub_certificates_refused_total",
                    "Members closed after their handshake: their certificate's key is revoked, retired or unknown.",
                    s.certificates_refused,
                ),
                (
                    "enjin_bus_hub_certificates_revoked_total",
                    "Members disconnected because their certificate's key stopped being trusted.",
                    s.certificates_revoked,
                ),
                (
                    "enjin_bus_hub_certificates_expired_total",
                    "Members disconnected because their certificate expired.",
                    s.certificates_expired,
                ),
            ] {
                let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{ring=\"{ring}\"}} {value}\n"
                ));
            }
        }
        out.push_str(&self.render_instance_metrics());
        out
    }

    /// The service's verification counters (messages accepted, rejected by reason), shared
    /// by every verifier it runs.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(v).map_err(BusError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use enjin_bus::client::{BusClient, ClientConfig};
    use enjin_bus::hub::{Hub, HubConfig};
    use enjin_bus::node::{BusNode, bundle_from_birth};
    use enjin_bus::trust::TRUST_UPDATE_TOPIC;
    use enjin_model::api::CreateRequest;
    use enjin_model::api::PACKAGES_TOPIC;
    use enjin_model::kinds::{NodeSpec, Strategy};
    use enjin_store::{SqliteStore, SqliteStoreConfig};
    use tokio::sync::watch;

    /// A ring 1 on loopback: the key service, its hub (with the parent's edge filter) and the
    /// control plane's own bus client attached.
    struct TestRing {
        dir: tempfile::TempDir,
        authority: Arc<BusAuthority>,
        hub: SocketAddr,
        stats: Arc<HubStats>,
        machine: Uuid,
        _stop: watch::Sender<bool>,
    }

    fn client_config() -> ClientConfig {
        ClientConfig {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..ClientConfig::default()
        }
    }

    async fn ring() -> TestRing {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("store"));
        let cp = crate::ControlPlane::new(store.clone());
        cp.bootstrap().await.expect("bootstrap");
        let req = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some("m0".into()),
            labels: Default::default(),
            spec: NodeSpec::default(),
        };
        let machine = cp.registry().create(req, Utc::now()).await.expect("machine").meta.uuid;
        let config = BusConfig {
            ring: Ring::INFRASTRUCTURE,
            keys_dir: dir.path().join("keys"),
            pki_dir: dir.path().join("pki"),
            label: "m0".into(),
            node: Some(machine),
            disconnected_after: Duration::from_secs(60),
            lost_after: Duration::from_secs(120),
            certificate_validity: CERT_VALIDITY,
            member_key_overlap: DEFAULT_OVERLAP,
        };
        let authority = BusAuthority::open(Registry::new(store), config).await.expect("key service");
        let hub_tls = authority.local_tls("hub", &["localhost".into()]).expect("hub tls");
        let hub = Hub::bind("127.0.0.1:0".parse().expect("addr"), &hub_tls, HubConfig::default())
            .await
            .expect("hub")
            .with_filter(authority.hub_filter())
            .with_admission(authority.hub_admission());
        let (addr, stats) = (hub.local_addr(), hub.stats());
        authority.set_hub(addr, stats.clone());
        let (stop, mut stop_rx) = watch::channel(false);
        tokio::spawn(hub.run(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        let own = authority.local_tls("control-plane", &[]).expect("tls");
        let client = BusClient::connect(addr, "localhost", &own, client_config()).expect("client");
        client.wait_connected(Duration::from_secs(10)).await.expect("control plane on its bus");
        authority.attach(Arc::new(client)).await.expect("attach");
        TestRing { dir, authority, hub: addr, stats, machine, _stop: stop }
    }

    /// A ring 1 host under the machine, enrolled as the agent would be, on the bus.
    struct TestHost {
        node: Uuid,
        client: Arc<BusClient>,
        bus: BusNode,
        dir: PathBuf,
    }

    impl TestHost {
        /// A second signer with the host's key, for envelopes `BusNode` would not make.
        fn publisher(&self) -> Publisher {
            let identity = Identity::load(&self.dir.join("bus.key")).expect("key");
            Publisher::starting_now(identity, 1, Arc::new(Counters::new()))
        }
    }

    async fn host(ring: &TestRing, label: &str, labels: &[(&str, &str)]) -> TestHost {
        let spec =
            NodeSpec { parent: Some(ring.machine), strategy: Some(Strategy::Process), ..NodeSpec::default() };
        let req = CreateRequest {
            account: None,
            ring: Ring::INFRASTRUCTURE,
            label: Some(label.into()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            spec,
        };
        let node = ring.authority.registry.create(req, Utc::now()).await.expect("host node").meta.uuid;
        let dir = ring.dir.path().join(label);
        ring.authority.enroll_local(node, label, &dir).await.expect("enrol");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("enrolment file");
        let tls = TlsMaterial {
            ca_pem: read("ca.crt"),
            cert_pem: read("tls.crt"),
            key_pem: enjin_pki::read_private(&dir.join("tls.key")).expect("tls key"),
        };
        let bundle =
            bundle_from_birth(&std::fs::read(dir.join("bundle.env")).expect("bundle")).expect("bundle");
        let identity = Identity::load(&dir.join("bus.key")).expect("key");
        let client =
            Arc::new(BusClient::connect(ring.hub, "localhost", &tls, client_config()).expect("client"));
        client.wait_connected(Duration::from_secs(10)).await.expect("host on the bus");
        let bus = BusNode::start(client.clone(), identity, bundle, VerifierConfig::default()).expect("node");
        TestHost { node, client, bus, dir }
    }

    fn forged_desired(node: Uuid) -> Vec<u8> {
        serde_json::to_vec(&enjin_model::api::DesiredChildren {
            node,
            revision: 999_999,
            children: Vec::new(),
            firewall: None,
        })
        .expect("json")
    }

    /// Serve `payload` as every package chunk, as the package store would an uploaded package.
    fn serve_packages(ring: &TestRing, payload: Vec<u8>) {
        let authority = ring.authority.clone();
        tokio::spawn(async move {
            let handler: RequestHandler = Arc::new(move |_: &[u8]| payload.clone());
            let _ = authority.serve_requests(PACKAGES_TOPIC, handler).await;
        });
    }

    const CHUNK_REQUEST: &[u8] = br#"{"digest":"sha256:00","offset":0}"#;

    /// The attack that motivated reply rules: a member that can have bytes served by the package
    /// service (it uploaded the package) names another host's retained desired topic as the
    /// reply-to of a chunk request, hoping the parent signs its bytes onto that topic. The hub
    /// refuses the request (a host's reply-to must be its own inbox) and counts it; nothing
    /// reaches the victim's topic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_package_request_cannot_aim_the_parent_signed_reply_at_a_hosts_desired_set() {
        let ring = ring().await;
        let victim = host(&ring, "victim", &[]).await;
        let mallory = host(&ring, "mallory", &[]).await;
        let forged = forged_desired(victim.node);
        serve_packages(&ring, forged.clone());
        let target = desired_topic(victim.node);
        let mut desired = victim.bus.subscribe(&target).expect("subscribe");
        victim.client.flush(Duration::from_secs(10)).await.expect("flush");
        let publisher = mallory.publisher();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sent = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick() => {
                    let sealed = publisher
                        .seal(PACKAGES_TOPIC, Some(&target), CHUNK_REQUEST.to_vec(), now_ms())
                        .expect("seal");
                    mallory.client.publish(PACKAGES_TOPIC, Some(&target), sealed).expect("queued");
                    sent += 1;
                }
                env = desired.next() => {
                    let env = env.expect("subscription open");
                    assert_ne!(env.payload(), &forged[..], "the parent signed the requester's bytes onto {target}");
                }
            }
        }
        mallory.client.flush(Duration::from_secs(10)).await.expect("flush");
        assert!(ring.stats.snapshot().publish_refused >= sent, "every forged request refused at the hub");
        assert!(mallory.client.stats().refused >= sent, "and the requester told so");
        // The same host asking properly, on its own inbox, is answered.
        let reply =
            mallory.bus.request(PACKAGES_TOPIC, CHUNK_REQUEST.to_vec(), Duration::from_secs(10)).await;
        assert_eq!(reply.expect("answered").payload(), &forged[..]);
    }

    /// The second line: even a request the hub lets through (here relayed by a connection of the
    /// parent's, which may publish anything) is answered only on its sender's own inbox. A
    /// reply-to naming a retained topic or another member's inbox is refused and counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_package_service_answers_only_on_the_requesters_own_inbox() {
        let ring = ring().await;
        let victim = host(&ring, "victim", &[]).await;
        let mallory = host(&ring, "mallory", &[]).await;
        let forged = forged_desired(victim.node);
        serve_packages(&ring, forged.clone());
        let relay_tls = ring.authority.local_tls("relay", &[]).expect("tls");
        let relay = BusClient::connect(ring.hub, "localhost", &relay_tls, client_config()).expect("client");
        relay.wait_connected(Duration::from_secs(10)).await.expect("relay on the bus");
        let mut snoop = relay.subscribe(">").expect("the parent may follow everything");
        relay.flush(Duration::from_secs(10)).await.expect("flush");
        let publisher = mallory.publisher();
        let targets = [
            desired_topic(victim.node),
            enjin_model::api::ROUTES_TOPIC.to_string(),
            TRUST_UPDATE_TOPIC.to_string(),
            format!("_inbox.{}.stolen", victim.node),
            "_inbox.parent.stolen".to_string(),
        ];
        let before = ring.authority.counters().replies_refused();
        for target in &targets {
            let sealed =
                publisher.seal(PACKAGES_TOPIC, Some(target), CHUNK_REQUEST.to_vec(), now_ms()).expect("seal");
            relay.publish(PACKAGES_TOPIC, Some(target), sealed).expect("queued");
        }
        relay.flush(Duration::from_secs(10)).await.expect("flush");
        let refused = || ring.authority.counters().replies_refused() - before;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while refused() < targets.len() as u64 {
            assert!(tokio::time::Instant::now() < deadline, "refused {} of {}", refused(), targets.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing carrying the served bytes was published anywhere.
        let quiet = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(m)) = tokio::time::timeout_at(quiet, snoop.next()).await {
            let payload = Envelope::decode(&m.payload).map(|e| e.payload().to_vec()).unwrap_or_default();
            assert_ne!(payload, forged, "served bytes published on {}", m.topic);
        }
    }

    /// A host may subscribe only to its own topics: `>` and another host's desired set are
    /// refused at the hub (answered, counted, the subscription ended) and deliver nothing, even
    /// though the other host's desired set is retained.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_cannot_subscribe_to_everything_or_to_another_hosts_desired_set() {
        let ring = ring().await;
        let victim = host(&ring, "victim", &[]).await;
        let mallory = host(&ring, "mallory", &[]).await;
        // The victim's own desired set is retained and delivered to the victim.
        let mut own = victim.bus.subscribe(&desired_topic(victim.node)).expect("subscribe");
        let first = tokio::time::timeout(Duration::from_secs(20), own.next()).await.expect("in time");
        assert!(first.is_some(), "a host gets its own desired set");
        for pattern in
            [">".to_string(), desired_topic(victim.node), "state.desired.*".into(), "_inbox.>".into()]
        {
            let before = ring.stats.snapshot().subscribe_refused;
            let mut sub = mallory.client.subscribe(&pattern).expect("queued");
            let ended = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("in time");
            assert!(ended.is_none(), "{pattern}: the refused subscription ends without a message");
            assert_eq!(ring.stats.snapshot().subscribe_refused, before + 1, "{pattern}: counted");
        }
        // Its own desired set it still gets, on the same connection.
        let mut mine = mallory.bus.subscribe(&desired_topic(mallory.node)).expect("subscribe");
        let set = tokio::time::timeout(Duration::from_secs(20), mine.next()).await.expect("in time");
        assert!(set.is_some(), "the connection stays and its own topics work");
    }

    /// A host may not publish the parent's state or speak for another node's reports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_cannot_publish_platform_state_or_another_nodes_reports() {
        let ring = ring().await;
        let victim = host(&ring, "victim", &[]).await;
        let mallory = host(&ring, "mallory", &[]).await;
        let relay_tls = ring.authority.local_tls("watcher", &[]).expect("tls");
        let watcher = BusClient::connect(ring.hub, "localhost", &relay_tls, client_config()).expect("client");
        watcher.wait_connected(Duration::from_secs(10)).await.expect("on the bus");
        let topics = [
            TRUST_UPDATE_TOPIC.to_string(),
            enjin_model::api::ROUTES_TOPIC.to_string(),
            enjin_model::api::DNS_TOPIC.to_string(),
            desired_topic(victim.node),
            enjin_model::api::stats_topic(victim.node),
            enjin_model::api::edge_topic(victim.node),
            format!("_inbox.{}.x", victim.node),
        ];
        let mut subs: Vec<_> = topics.iter().map(|t| watcher.subscribe(t).expect("subscribe")).collect();
        watcher.flush(Duration::from_secs(10)).await.expect("flush");
        // Retained topics hand their current value to a new subscription: drain those first.
        for sub in &mut subs {
            while tokio::time::timeout(Duration::from_millis(200), sub.next()).await.is_ok() {}
        }
        // `state.*` from anyone but a parent key is dropped by the parent's edge filter first
        // (counted as filtered); the rest by the access rules.
        let refused = || {
            let s = ring.stats.snapshot();
            s.publish_refused + s.filtered
        };
        let before = refused();
        for topic in &topics {
            mallory.bus.publish(topic, b"{}".to_vec()).expect("queued");
        }
        mallory.client.flush(Duration::from_secs(10)).await.expect("flush");
        assert_eq!(refused(), before + topics.len() as u64);
        assert!(ring.stats.snapshot().publish_refused >= 3, "stats, edge and inbox by the access rules");
        for (topic, sub) in topics.iter().zip(&mut subs) {
            let got = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
            assert!(got.is_err(), "nothing delivered on {topic}: {got:?}");
        }
        // Observations of another host pass the hub (a host reports on the instances it
        // supervises, which the hub does not know) but are stored only from the key bound to
        // the node or to its supervisor.
        let report = serde_json::json!({"node": victim.node, "strategy": "heartbeat", "state": "lost", "observed_at": Utc::now()});
        let sealed = mallory
            .publisher()
            .seal(
                &enjin_model::api::observation_topic(victim.node),
                None,
                report.to_string().into_bytes(),
                now_ms(),
            )
            .expect("seal");
        let env = Envelope::decode(&sealed).expect("decode");
        let Ok(intake::Report::Observation(report)) = intake::Report::decode(&env) else {
            panic!("an observation on its node's topic decodes")
        };
        let err = ring.authority.record_observation(&env.sender(), report).await;
        assert!(matches!(err, Err(BusError::Refused(_))), "another host's observation is refused");
    }

    /// The edge's certificate carries the edge role (from its node's role label), which follows
    /// the route table and zone but no host's desired set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_edge_is_enrolled_with_the_edge_role() {
        let ring = ring().await;
        let edge = host(&ring, "edge", &[EDGE_ROLE_LABEL]).await;
        let h = host(&ring, "h1", &[]).await;
        let member = edge.client.member().expect("a role").clone();
        assert_eq!(member.role(), Role::Edge);
        assert_eq!(member.id(), edge.node.to_string());
        assert_eq!(h.client.member().as_ref().map(Member::role), Some(Role::Host));
        let mut routes = edge.client.subscribe(enjin_model::api::ROUTES_TOPIC).expect("subscribe");
        let mut desired = edge.client.subscribe(&desired_topic(h.node)).expect("queued");
        assert!(
            tokio::time::timeout(Duration::from_secs(10), desired.next()).await.expect("in time").is_none(),
            "a host's desired set is refused to the edge"
        );
        ring.authority.publish_state(enjin_model::api::ROUTES_TOPIC, b"{}".to_vec()).expect("publish");
        let got = tokio::time::timeout(Duration::from_secs(10), routes.next()).await.expect("in time");
        assert!(got.is_some(), "the edge follows the route table");
    }
}
