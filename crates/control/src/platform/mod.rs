//! The platform: apps deployed onto ring 1 hosts. An app environment is a ring-2 compartment,
//! its process types are tiers (`<app>-<process>`), its instances ring-2 nodes under the hosts
//! that run them, and every change of what runs (deploy, rollback, scale, restart) is a task
//! carried out by a rollout in this process. The router's table and the DNS zone are computed
//! from the same objects (`edge.rs`) and published on the ring bus, never read by the router
//! or the DNS service from the store.
//!
//! A rollout only ever adds instances beside the live ones, waits for their health checks,
//! switches which release is live, drains, and only then removes the old ones, so a release
//! that never becomes healthy never receives traffic and the live one is never interrupted.
//!
//! An instance is recorded with the strategy its host really runs it by (`unix-user` on a host
//! labelled [`SANDBOX_LABEL`]` = unix-user`, `process` otherwise). Only the operator — a member
//! of the system account — may run instances unsandboxed, and is told so; a change by anyone
//! else that would start instances where no host can sandbox is refused
//! ([`PlatformError::NoSandbox`]), and their instances are placed on sandboxing hosts only.

pub mod edge;
pub mod network;
pub mod placement;
mod rollout;
mod runner;

pub use placement::{Isolation, SANDBOX_LABEL, Sandbox};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use enjin_app::store::PackageStore;
use enjin_model::api::{
    AppStatus, CreateRequest, InstanceStatus, ListQuery, PackageUploaded, RolloutStarted, UpdateRequest,
};
use enjin_model::kinds::{
    AppManifest, CompartmentSpec, CompartmentType, NetworkInterfaceSpec, NodeObservationSpec, NodeSpec,
    ObservationState, ObservationStrategy, PackageRef, ReleaseSpec, ReleaseState, RolloutPlan, RolloutStep,
    Strategy, TaskKind, TaskProgress, TaskSpec, TaskState, TierSpec, validate_manifest,
};
use enjin_model::{FieldError, Kind, Object, Ring};
use enjin_store::{Compare, Op, Txn};
use uuid::Uuid;

use crate::bus::BusAuthority;
use crate::cache::WatchCache;
use crate::controller::Controllers;
use crate::quota::Footprint;
use crate::registry::{Guard, Registry, RegistryError};

/// Labels the platform puts on the nodes it makes. This one, the app's name, is also on its
/// releases and rollout tasks.
pub const APP_LABEL: &str = "enjin.dev/app";
/// The process type (`web`, `worker`) an instance runs.
pub const PROCESS_LABEL: &str = "enjin.dev/process";
/// The uuid of the release an instance runs.
pub const RELEASE_LABEL: &str = "enjin.dev/release";
/// The uuid of the rollout task that started an instance: what an undone rollout removes.
pub const ROLLOUT_LABEL: &str = "enjin.dev/rollout";
/// On an instance being taken out of service: the router stops sending it requests before
/// it is stopped.
pub const DRAINING_LABEL: &str = "enjin.dev/draining";

/// How long a rollout waits for the routers to apply a table before it goes on regardless.
const ROUTES_PATIENCE: Duration = Duration::from_secs(5);

/// The largest package the store takes.
pub const MAX_PACKAGE_BYTES: usize = 512 * 1024 * 1024;

/// Where the platform keeps packages and how it names apps; from the node's configuration.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where the content-addressed package store keeps packages.
    pub packages_dir: PathBuf,
    /// Apps are served at `<app>.<domain>` by the router.
    pub domain: String,
    /// The router's address, for app URLs and the apps' DNS records.
    pub router: Option<SocketAddr>,
    /// The DNS zone of apps, instances and hosts.
    pub zone: String,
    /// How long a removed instance keeps running after the router stopped sending it
    /// requests, for the ones in flight.
    pub drain: Duration,
}

impl PlatformConfig {
    /// The defaults, with packages kept in `packages_dir`.
    pub fn new(packages_dir: PathBuf) -> Self {
        PlatformConfig {
            packages_dir,
            domain: "localhost".into(),
            router: None,
            zone: "enjin.internal".into(),
            drain: Duration::from_secs(2),
        }
    }
}

/// Why a change of what runs was refused or failed; the API maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The store or an object in it failed (the server's fault, a 500, unless the registry
    /// says otherwise).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A field of the request is wrong (422, naming the field).
    #[error("{0}")]
    Invalid(FieldError),
    /// No app of this name in the caller's account (404; another account's app is not named).
    #[error("no app named {0}")]
    NoApp(String),
    /// The app's state does not allow the change now: a rollout under way, no live release,
    /// the release already live (409).
    #[error("{0}")]
    Conflict(String),
    /// Something the change needs is not running on this server, such as the bus (503).
    #[error("{0}")]
    Unavailable(String),
    /// The change would start a tenant's instances where no host can sandbox them.
    #[error("{0}")]
    NoSandbox(String),
    /// The package store failed to read or write a package.
    #[error(transparent)]
    Packages(#[from] enjin_app::store::StoreError),
    /// A blocking task of the platform's ended without an answer (it panicked or was cancelled).
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The change would take the app's account past a quota.
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaExceeded),
}

impl From<FieldError> for PlatformError {
    fn from(e: FieldError) -> Self {
        PlatformError::Invalid(e)
    }
}

/// `/apps/names/<name>`: the account that owns the app name.
fn name_key(name: &str) -> String {
    format!("/apps/names/{name}")
}

/// `/packages/owners/<account>/<digest>`: the account uploaded the package (its size).
const OWNERS_PREFIX: &str = "/packages/owners/";

fn owner_key(account: Uuid, digest: &str) -> String {
    format!("{OWNERS_PREFIX}{account}/{digest}")
}

/// Who asks for a change of what runs, and in which account the app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal's name, for the task and the log.
    pub principal: String,
    /// The account that owns the app (or will, for its first deploy).
    pub account: Uuid,
    /// The app is the operator's (the system account's): it may run instances unsandboxed.
    pub operator: bool,
}

impl Caller {
    /// Where the caller's instances may run.
    pub fn isolation(&self) -> Isolation {
        if self.operator { Isolation::Optional } else { Isolation::Required }
    }
}

/// Whether a ring 1 node runs instances: a host (not the edge, which has a role of its own).
pub(crate) fn runs_instances(h: &Object<NodeSpec>) -> bool {
    matches!(
        h.spec.strategy,
        Some(Strategy::Netns | Strategy::Process | Strategy::Vm | Strategy::Ssh | Strategy::Joined)
    ) && !h.meta.labels.contains_key("enjin.dev/role")
}

/// The platform service of one control plane.
#[derive(Debug)]
pub struct Platform {
    registry: Registry,
    packages: PackageStore,
    config: PlatformConfig,
    bus: Arc<Mutex<Option<Arc<BusAuthority>>>>,
    /// The oldest store revision the routers' table must reflect, asked for by rollouts that
    /// wait for it; every change wakes the route publisher, which publishes a table that new
    /// even when its content did not change (a release went live on instances already routed).
    routes_wanted: tokio::sync::watch::Sender<u64>,
    /// This run of the platform, as the rollout tasks it carries out record it.
    run: Uuid,
}

/// The platform's controllers, running until [`PlatformControllers::stop`].
#[derive(Debug)]
pub struct PlatformControllers {
    controllers: Controllers,
    /// Stops the watch cache made for them, when the registry had none.
    cache_stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl PlatformControllers {
    /// Stop them (every rollout in progress stops where it is, for the next run to take over)
    /// and wait until they have.
    pub async fn stop(self) {
        self.controllers.stop().await;
        if let Some(stop) = self.cache_stop {
            stop.send_replace(true);
        }
    }
}

impl Platform {
    /// The platform over `registry`, with its package store opened (made if missing). Its
    /// controllers run from [`Platform::start_controllers`].
    pub fn open(registry: Registry, config: PlatformConfig) -> Result<Arc<Platform>, PlatformError> {
        let packages = PackageStore::open(&config.packages_dir)?;
        let (routes_wanted, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Platform {
            registry,
            packages,
            config,
            bus: Arc::new(Mutex::new(None)),
            routes_wanted,
            run: Uuid::new_v4(),
        }))
    }

    /// Start the platform's controllers: the rollout controller, which carries out every
    /// rollout the API records, and takes over those a stopped run of the control plane left
    /// unfinished, each by the step its task recorded (one that had not gone live is undone,
    /// one that had is finished). One server at a time runs them.
    pub fn start_controllers(self: &Arc<Self>) -> PlatformControllers {
        let (cache, cache_stop) = match self.registry.cache() {
            Some(cache) => (cache.clone(), None),
            None => {
                let stop = tokio::sync::watch::Sender::new(false);
                (WatchCache::start(self.registry.store().clone(), stop.subscribe()), Some(stop))
            }
        };
        let mut controllers = Controllers::new(cache);
        controllers.start(runner::RolloutRunner::new(self.clone(), self.run));
        PlatformControllers { controllers, cache_stop }
    }

    /// This platform with every write of its registry fenced by `fence` (see
    /// [`Registry::fenced`]): what the controllers of a leading server run on, so that once
    /// another server leads, nothing they still do lands in the store.
    pub fn fenced(self: &Arc<Self>, fence: crate::leader::Fence) -> Arc<Platform> {
        Arc::new(Platform {
            registry: self.registry.fenced(fence),
            packages: self.packages.clone(),
            config: self.config.clone(),
            bus: self.bus.clone(),
            routes_wanted: self.routes_wanted.clone(),
            run: self.run,
        })
    }

    /// Run the controllers while this server leads (see [`crate::leader`]): start them,
    /// fenced by the leadership, when it leads; stop them when it no longer does; until `stop`.
    pub(crate) async fn lead_controllers(
        self: Arc<Self>,
        who: crate::leader::Candidate,
        stop: tokio::sync::watch::Receiver<bool>,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        let mut leading = crate::leader::campaign(self.registry.store().clone(), who, stop);
        let mut running: Option<(crate::leader::Fence, PlatformControllers)> = None;
        loop {
            let fence = leading.borrow_and_update().clone();
            if running.as_ref().map(|(f, _)| f) != fence.as_ref() {
                if let Some((_, c)) = running.take() {
                    metrics.set_leading(false);
                    c.stop().await;
                    tracing::info!("controllers stopped: this server no longer leads");
                }
                if let Some(f) = fence {
                    tracing::info!(revision = f.revision, "controllers started: this server leads");
                    running = Some((f.clone(), self.fenced(f).start_controllers()));
                    metrics.set_leading(true);
                }
            }
            if leading.changed().await.is_err() {
                break;
            }
        }
        if let Some((_, c)) = running {
            metrics.set_leading(false);
            c.stop().await;
        }
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// The content-addressed package store.
    pub fn packages(&self) -> &PackageStore {
        &self.packages
    }

    /// Publish the router's table and the DNS zone on this bus from now on, and serve
    /// packages to hosts over it.
    pub fn attach_bus(self: &Arc<Self>, bus: Arc<BusAuthority>) {
        if let Ok(mut b) = self.bus.lock() {
            *b = Some(bus.clone());
        }
        // A hub that restarted may have lost the tables: a reconnection asks for them again.
        let (mut reconnected, wanted) = (bus.reconnections(), self.routes_wanted.clone());
        bus.until_stopped(async move {
            while reconnected.changed().await.is_ok() {
                wanted.send_modify(|_| {});
            }
        });
        bus.start_controller(edge::EdgePublisher::new(self.clone(), bus.clone()));
        bus.until_stopped(rollout::serve_packages(self.clone(), bus.clone()));
    }

    /// The edge nodes' Prometheus metrics (router and DNS), as they last reported them.
    pub fn edge_metrics(&self) -> String {
        self.bus().map(|b| b.edge_reports().into_iter().map(|r| r.metrics).collect()).unwrap_or_default()
    }

    /// Wait (a bounded while) until every edge node that reports serves a route table at least
    /// as new as store revision `version`; at once when there is no edge.
    pub async fn wait_routes_applied(&self, version: i64) {
        let Some(bus) = self.bus() else { return };
        let wanted = u64::try_from(version).unwrap_or(0);
        self.routes_wanted.send_if_modified(|w| {
            let newer = wanted > *w;
            *w = (*w).max(wanted);
            newer
        });
        let deadline = std::time::Instant::now() + ROUTES_PATIENCE;
        loop {
            let reports = bus.edge_reports();
            if reports.iter().all(|r| r.routes_version.is_some_and(|v| v >= version)) {
                return;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(version, "the routers have not applied the route table in time; going on");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An app's traffic through the routers, summed over the edge nodes that reported it.
    fn traffic(&self, app: &str) -> Option<enjin_model::api::AppTraffic> {
        let reports = self.bus()?.edge_reports();
        let mut seen = reports.iter().flat_map(|r| r.apps.iter()).filter(|a| a.app == app).peekable();
        seen.peek()?;
        let mut sum = enjin_model::api::AppTraffic { app: app.to_string(), ..Default::default() };
        for a in seen {
            sum.requests += a.requests;
            sum.responses_5xx += a.responses_5xx;
            sum.in_flight += a.in_flight;
            sum.connect_failures += a.connect_failures;
            sum.retries += a.retries;
            sum.backends = sum.backends.max(a.backends);
            // Percentiles do not add up; with one router (enjin up) they are its own.
            let max = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            sum.p50_ms = max(sum.p50_ms, a.p50_ms);
            sum.p99_ms = max(sum.p99_ms, a.p99_ms);
        }
        Some(sum)
    }

    fn bus(&self) -> Option<Arc<BusAuthority>> {
        self.bus.lock().ok().and_then(|b| b.clone())
    }

    /// Where `app` answers through the router: `http://<app>.<domain>`, with the router's
    /// port when this server knows it.
    pub fn url_of(&self, app: &str) -> String {
        match self.config.router {
            Some(a) => format!("http://{app}.{}:{}", self.config.domain, a.port()),
            None => format!("http://{app}.{}", self.config.domain),
        }
    }

    /// Store a package (identical bytes are kept once).
    /// Refuse a deploy in `account` of a package that account did not upload: a package is its
    /// uploader's code. Packages stored before owners were recorded are the system account's.
    async fn check_package_owner(&self, account: Uuid, digest: &str) -> Result<(), PlatformError> {
        let owned =
            self.registry.store().get(&owner_key(account, digest)).await.map_err(RegistryError::from)?;
        if owned.is_some() || account == self.registry.system_account().await? {
            return Ok(());
        }
        Err(FieldError::new(
            "package.digest",
            format!("no package {digest} in account {account}: upload it first (POST /v1/packages)"),
        )
        .into())
    }

    /// Refuse a change that leaves app `app` of `account` running `manifest` if that takes the
    /// account past a quota (see `quota.rs`). Other apps of the account with a rollout under
    /// way count as that rollout will leave them (their instances may not all exist yet). The
    /// guard returned is what the rollout's task is created against, so that two changes in
    /// one account cannot both pass on the same reading.
    async fn check_quota(
        &self,
        account: Uuid,
        app: &str,
        manifest: &AppManifest,
    ) -> Result<Option<Guard>, PlatformError> {
        let Some((label, quota)) = crate::quota::quota_of(&self.registry, account).await? else {
            return Ok(None);
        };
        if quota.is_unlimited() {
            return Ok(None);
        }
        // Read before anything it guards.
        let guard = crate::quota::guard(&self.registry, account).await?;
        let mut now = crate::quota::usage(&self.registry, account).await?;
        now.package_bytes = self.package_bytes(account).await?;
        let exists = match self.app_env(app, account, false).await {
            Ok(_) => true,
            Err(PlatformError::NoApp(_)) => false,
            Err(e) => return Err(e),
        };
        let others = crate::quota::settled_instances(&self.registry, account, Some(app)).await?;
        let after = Footprint {
            apps: u64::from(now.apps) + u64::from(!exists),
            package_bytes: now.package_bytes,
            ..Footprint::default()
        }
        .plus(others)
        .plus(crate::quota::footprint_of_manifest(&self.registry, manifest));
        crate::quota::check(&label, &quota, &now, after)?;
        Ok(Some(guard))
    }

    /// The bytes of the packages `account` has uploaded.
    pub async fn package_bytes(&self, account: Uuid) -> Result<u64, PlatformError> {
        let range = self
            .registry
            .store()
            .range(&format!("{OWNERS_PREFIX}{account}/"))
            .await
            .map_err(RegistryError::from)?;
        Ok(range.kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok()).sum())
    }

    /// Store a package for `account`; the account owns it from then on.
    pub async fn upload_for(&self, account: Uuid, bytes: Vec<u8>) -> Result<PackageUploaded, PlatformError> {
        if let Some((label, quota)) = crate::quota::quota_of(&self.registry, account).await?
            && quota.package_bytes.is_some()
        {
            // Checked on the upload's size before it is stored; an upload of bytes the account
            // already holds adds nothing and passes.
            let mut now = crate::quota::usage(&self.registry, account).await?;
            now.package_bytes = self.package_bytes(account).await?;
            let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            let after =
                Footprint::of_usage(&now).plus(Footprint { package_bytes: size, ..Footprint::default() });
            if let Err(e) = crate::quota::check(&label, &quota, &now, after) {
                let digest = enjin_app::package::digest_of(&bytes);
                let held = self
                    .registry
                    .store()
                    .get(&owner_key(account, &digest))
                    .await
                    .map_err(RegistryError::from)?;
                if held.is_none() {
                    return Err(e.into());
                }
            }
        }
        let out = self.upload(bytes).await?;
        let key = owner_key(account, &out.package.digest);
        let txn = Txn::new().then([Op::put(&key, out.package.size.to_string())]);
        self.registry.store().txn(txn).await.map_err(RegistryError::from)?;
        Ok(out)
    }

    /// Store a package without recording an owner (the operator's uploads); see
    /// [`Platform::upload_for`].
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<PackageUploaded, PlatformError> {
        let store = self.packages.clone();
        let out = tokio::task::spawn_blocking(move || store.put(&bytes)).await??;
        tracing::info!(digest = %out.package.digest, size = out.package.size, existed = out.existed, "package stored");
        Ok(PackageUploaded { package: out.package, existed: out.existed })
    }

    /// The account that owns the app named `name`, if there is one. App names are unique
    /// across accounts (each is a host name under the router's domain): the first deploy claims
    /// the name for its account at `/apps/names/<name>`. An app made before names were claimed
    /// is the system account's.
    pub async fn app_owner(&self, name: &str) -> Result<Option<Uuid>, PlatformError> {
        if let Some(kv) = self.registry.store().get(&name_key(name)).await.map_err(RegistryError::from)? {
            let owner = std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse().ok());
            return owner.map(Some).ok_or_else(|| {
                RegistryError::Corrupt { key: kv.key.clone(), error: "not an account uuid".into() }.into()
            });
        }
        let system = self.registry.system_account().await?;
        let q = ListQuery {
            ring: Some(Ring::PLATFORM),
            label: Some(name.to_string()),
            account: Some(system),
            ..ListQuery::default()
        };
        let (found, _) = self.registry.list::<CompartmentSpec>(&q).await?;
        Ok(found.iter().any(|c| c.spec.compartment_type == CompartmentType::AppEnvironment).then_some(system))
    }

    /// Claim `name` for `account`; refused if another account holds it.
    async fn claim_name(&self, name: &str, account: Uuid) -> Result<(), PlatformError> {
        let key = name_key(name);
        let txn = Txn::new().when([Compare::absent(&key)]).then([Op::put(&key, account.to_string())]);
        if self.registry.store().txn(txn).await.map_err(RegistryError::from)?.succeeded {
            return Ok(());
        }
        match self.app_owner(name).await? {
            Some(owner) if owner == account => Ok(()),
            _ => Err(PlatformError::Conflict(format!("the app name {name} is taken; choose another"))),
        }
    }

    /// Refuse a change that would start instances of `app` for a caller outside the system
    /// account when no host can sandbox them; `change` names it (`deploy`, `scale`, …).
    async fn check_isolation(&self, caller: &Caller, app: &str, change: &str) -> Result<(), PlatformError> {
        if caller.operator {
            return Ok(());
        }
        let q = ListQuery { ring: Some(Ring::INFRASTRUCTURE), ..ListQuery::default() };
        let (hosts, _) = self.registry.list::<NodeSpec>(&q).await?;
        let mut hosts: Vec<&Object<NodeSpec>> = hosts.iter().filter(|h| runs_instances(h)).collect();
        if hosts.iter().any(|h| Sandbox::of(&h.meta.labels) == Sandbox::UnixUser) {
            return Ok(());
        }
        hosts.sort_by(|a, b| a.meta.label.cmp(&b.meta.label));
        let why = if hosts.is_empty() {
            "there is no ring 1 host".to_string()
        } else {
            let names: Vec<String> = hosts
                .iter()
                .map(|h| h.meta.label.clone().unwrap_or_else(|| h.meta.uuid.to_string()))
                .collect();
            let verb = if names.len() == 1 { "runs" } else { "run" };
            format!(
                "{} {verb} instances as plain processes of the operator's user, without root",
                names.join(", ")
            )
        };
        tracing::info!(%app, principal = %caller.principal, change, "refused: no host can sandbox a tenant's instances");
        Err(PlatformError::NoSandbox(format!(
            "app {app}: {change} refused: no ring 1 host can sandbox its instances ({why}), and only members of \
             the system account may run instances unsandboxed (principal {} is not one); run enjin up as root, \
             or add a ring 1 host labelled {SANDBOX_LABEL}=unix-user",
            caller.principal
        )))
    }

    /// The app's environment in `account`, made on its first deploy.
    async fn app_env(
        &self,
        name: &str,
        account: Uuid,
        create: bool,
    ) -> Result<Object<CompartmentSpec>, PlatformError> {
        let q = ListQuery {
            ring: Some(Ring::PLATFORM),
            label: Some(name.to_string()),
            account: Some(account),
            ..ListQuery::default()
        };
        let (found, _) = self.registry.list::<CompartmentSpec>(&q).await?;
        if let Some(c) =
            found.into_iter().find(|c| c.spec.compartment_type == CompartmentType::AppEnvironment)
        {
            return Ok(c);
        }
        if !create {
            return Err(PlatformError::NoApp(name.to_string()));
        }
        self.claim_name(name, account).await?;
        let spec = CompartmentSpec {
            compartment_type: CompartmentType::AppEnvironment,
            parents: Vec::new(),
            links: Vec::new(),
        };
        let req = CreateRequest {
            account: Some(account),
            ring: Ring::PLATFORM,
            label: Some(name.to_string()),
            labels: Default::default(),
            spec,
        };
        Ok(self.registry.create(req, Utc::now()).await?)
    }

    /// The tier of one process type of an app.
    async fn tier(&self, app: &str, account: Uuid, process: &str) -> Result<Uuid, PlatformError> {
        let label = format!("{app}-{process}");
        let q = ListQuery {
            ring: Some(Ring::PLATFORM),
            label: Some(label.clone()),
            account: Some(account),
            ..ListQuery::default()
        };
        let (found, _) = self.registry.list::<TierSpec>(&q).await?;
        if let Some(t) = found.into_iter().next() {
            return Ok(t.meta.uuid);
        }
        let spec =
            TierSpec { description: format!("the {process} processes of app {app}"), hooks: BTreeMap::new() };
        let req = CreateRequest {
            account: Some(account),
            ring: Ring::PLATFORM,
            label: Some(label),
            labels: Default::default(),
            spec,
        };
        match self.registry.create(req, Utc::now()).await {
            Ok(t) => Ok(t.meta.uuid),
            // Made meanwhile by a concurrent deploy.
            Err(RegistryError::Conflict { .. }) => {
                let (found, _) = self.registry.list::<TierSpec>(&q).await?;
                found
                    .into_iter()
                    .next()
                    .map(|t| t.meta.uuid)
                    .ok_or_else(|| PlatformError::Conflict("tier vanished".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The releases of the app `app` of `account`, newest first.
    pub async fn releases(
        &self,
        account: Uuid,
        app: &str,
    ) -> Result<Vec<Object<ReleaseSpec>>, PlatformError> {
        let env = self.app_env(app, account, false).await?;
        self.releases_of(&env).await
    }

    async fn releases_of(
        &self,
        env: &Object<CompartmentSpec>,
    ) -> Result<Vec<Object<ReleaseSpec>>, PlatformError> {
        let q = ListQuery { compartment: Some(env.meta.uuid), ..ListQuery::default() };
        let (mut rs, _) = self.registry.list::<ReleaseSpec>(&q).await?;
        rs.sort_by_key(|r| std::cmp::Reverse(r.spec.version));
        Ok(rs)
    }

    /// Refuse a second rollout of an app while one is under way.
    async fn no_rollout_running(&self, app: &Object<CompartmentSpec>) -> Result<(), PlatformError> {
        let (tasks, _) = self.registry.list::<TaskSpec>(&ListQuery::default()).await?;
        let label = app.meta.label.clone().unwrap_or_default();
        if let Some(t) = tasks.iter().find(|t| {
            !t.spec.state.is_final()
                && t.meta.labels.get(APP_LABEL).map(String::as_str) == Some(label.as_str())
        }) {
            return Err(PlatformError::Conflict(format!(
                "app {label} is already being changed by task {}; wait for it (enjin task get {})",
                t.meta.uuid, t.meta.uuid
            )));
        }
        Ok(())
    }

    /// Deploy a new release of the app the manifest names from an uploaded package.
    pub async fn deploy(
        self: &Arc<Self>,
        caller: &Caller,
        manifest: AppManifest,
        package: PackageRef,
    ) -> Result<RolloutStarted, PlatformError> {
        validate_manifest(&manifest)
            .map_err(|e| FieldError::new(format!("manifest.{}", e.field), e.message))?;
        match self.packages.size(&package.digest) {
            Ok(size) if size == package.size => {}
            Ok(size) => {
                return Err(FieldError::new(
                    "package.size",
                    format!("package {} has {size} bytes, not {}", package.digest, package.size),
                )
                .into());
            }
            Err(enjin_app::store::StoreError::NotFound { .. }) => {
                return Err(FieldError::new(
                    "package.digest",
                    format!(
                        "no package {} in the package store: upload it first (POST /v1/packages)",
                        package.digest
                    ),
                )
                .into());
            }
            Err(e) => return Err(FieldError::new("package.digest", e.to_string()).into()),
        }
        self.check_package_owner(caller.account, &package.digest).await?;
        let guard = self.check_quota(caller.account, &manifest.name, &manifest).await?;
        self.check_isolation(caller, &manifest.name, "deploy").await?;
        let env = self.app_env(&manifest.name, caller.account, true).await?;
        self.start_release(caller, env, manifest, package, "deploy".into(), guard).await
    }

    /// A new release with an old release's code and configuration.
    pub async fn rollback(
        self: &Arc<Self>,
        caller: &Caller,
        app: &str,
        version: Option<u32>,
    ) -> Result<RolloutStarted, PlatformError> {
        let env = self.app_env(app, caller.account, false).await?;
        let releases = self.releases_of(&env).await?;
        let live = releases.iter().find(|r| r.spec.state == ReleaseState::Active).map(|r| r.spec.version);
        let target = match version {
            Some(v) => releases.iter().find(|r| r.spec.version == v).ok_or_else(|| {
                PlatformError::from(FieldError::new("version", format!("app {app} has no release v{v}")))
            })?,
            None => releases
                .iter()
                .find(|r| r.spec.state == ReleaseState::Superseded && Some(r.spec.version) < live)
                .ok_or_else(|| {
                    PlatformError::Conflict(format!("app {app} has no earlier release to roll back to"))
                })?,
        };
        if Some(target.spec.version) == live {
            return Err(PlatformError::Conflict(format!(
                "v{} of {app} is already live",
                target.spec.version
            )));
        }
        let guard = self.check_quota(caller.account, app, &target.spec.manifest).await?;
        self.check_isolation(caller, app, "rollback").await?;
        let description = format!("rollback to v{}", target.spec.version);
        self.start_release(
            caller,
            env,
            target.spec.manifest.clone(),
            target.spec.package.clone(),
            description,
            guard,
        )
        .await
    }

    /// Replace every instance of the live release with a fresh one, one rollout.
    pub async fn restart(
        self: &Arc<Self>,
        caller: &Caller,
        app: &str,
    ) -> Result<RolloutStarted, PlatformError> {
        let env = self.app_env(app, caller.account, false).await?;
        self.no_rollout_running(&env).await?;
        let live = self.live_release(&env).await?;
        self.check_isolation(caller, app, "restart").await?;
        let plan = RolloutPlan { mode: rollout::Mode::Replace, isolation: caller.isolation() };
        let task = self
            .new_task(&env, live.meta.uuid, plan, format!("restart v{}", live.spec.version), None)
            .await?;
        Ok(started(&task, &env, &live))
    }

    /// Set the instance counts of the live release's process types.
    pub async fn scale(
        self: &Arc<Self>,
        caller: &Caller,
        app: &str,
        counts: BTreeMap<String, u32>,
    ) -> Result<RolloutStarted, PlatformError> {
        let env = self.app_env(app, caller.account, false).await?;
        self.no_rollout_running(&env).await?;
        let live = self.live_release(&env).await?;
        let mut spec = live.spec.clone();
        for (process, n) in &counts {
            let Some(p) = spec.manifest.processes.get_mut(process) else {
                return Err(FieldError::new(
                    format!("processes.{process}"),
                    format!(
                        "app {app} has no process type {process} (it has {})",
                        live.spec.manifest.processes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
                .into());
            };
            p.instances = *n;
        }
        validate_manifest(&spec.manifest).map_err(|e| FieldError::new(e.field, e.message))?;
        // Only a scale that starts instances needs somewhere to run them.
        let view = edge::View::read(&self.registry).await?;
        let adds = counts.iter().any(|(process, n)| {
            let have = view
                .instances_of(env.meta.uuid)
                .filter(|i| i.meta.labels.get(PROCESS_LABEL) == Some(process))
                .filter(|i| !i.meta.labels.contains_key(DRAINING_LABEL))
                .count();
            *n as usize > have
        });
        let mut guard = None;
        if adds {
            guard = self.check_quota(caller.account, app, &spec.manifest).await?;
            self.check_isolation(caller, app, "scale").await?;
        }
        let req = UpdateRequest {
            revision: live.meta.revision,
            label: live.meta.label.clone(),
            labels: live.meta.labels.clone(),
            spec,
        };
        let live = self.registry.update(live.meta.uuid, req, Utc::now()).await?;
        let what: Vec<String> = counts.iter().map(|(p, n)| format!("{p}={n}")).collect();
        let plan = RolloutPlan { mode: rollout::Mode::Scale, isolation: caller.isolation() };
        let task = self
            .new_task(&env, live.meta.uuid, plan, format!("scale {}", what.join(" ")), guard.as_ref())
            .await?;
        Ok(started(&task, &env, &live))
    }

    async fn live_release(
        &self,
        env: &Object<CompartmentSpec>,
    ) -> Result<Object<ReleaseSpec>, PlatformError> {
        let app = env.meta.label.clone().unwrap_or_default();
        self.releases_of(env)
            .await?
            .into_iter()
            .find(|r| r.spec.state == ReleaseState::Active)
            .ok_or_else(|| PlatformError::Conflict(format!("app {app} has no live release; deploy it first")))
    }

    async fn start_release(
        self: &Arc<Self>,
        caller: &Caller,
        env: Object<CompartmentSpec>,
        manifest: AppManifest,
        package: PackageRef,
        description: String,
        guard: Option<Guard>,
    ) -> Result<RolloutStarted, PlatformError> {
        self.no_rollout_running(&env).await?;
        let name = env.meta.label.clone().unwrap_or_default();
        for process in manifest.processes.keys() {
            self.tier(&name, env.meta.account, process).await?;
        }
        let mut version = self.releases_of(&env).await?.first().map_or(0, |r| r.spec.version) + 1;
        let release = loop {
            let spec = ReleaseSpec {
                app: env.meta.uuid,
                version,
                package: package.clone(),
                manifest: manifest.clone(),
                state: ReleaseState::Deploying,
                description: description.clone(),
            };
            let req = CreateRequest {
                account: Some(env.meta.account),
                ring: Ring::PLATFORM,
                label: Some(format!("v{version}")),
                labels: [(APP_LABEL.to_string(), name.clone())].into(),
                spec,
            };
            match self.registry.create(req, Utc::now()).await {
                Ok(r) => break r,
                // Another server numbered a release meanwhile.
                Err(RegistryError::Conflict { .. }) if version < u32::MAX => version += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let plan = RolloutPlan { mode: rollout::Mode::Release, isolation: caller.isolation() };
        let task = match self
            .new_task(&env, release.meta.uuid, plan, format!("{description} v{version}"), guard.as_ref())
            .await
        {
            Ok(t) => t,
            Err(e) => {
                // Lost the app to a rollout started meanwhile: the release it made is not kept.
                if let Err(d) = self.registry.delete(Kind::Release, release.meta.uuid, None).await {
                    tracing::warn!(app = %name, version, error = %d, "release of a rollout not started left behind");
                }
                return Err(e);
            }
        };
        tracing::info!(app = %name, version, task = %task.meta.uuid, "rollout recorded");
        Ok(started(&task, &env, &release))
    }

    /// Record a rollout of `env` as a running task holding the app's running name; the
    /// rollout controller takes it up from there.
    async fn new_task(
        &self,
        env: &Object<CompartmentSpec>,
        subject: Uuid,
        plan: RolloutPlan,
        message: String,
        guard: Option<&Guard>,
    ) -> Result<Object<TaskSpec>, PlatformError> {
        let app = env.meta.label.clone().unwrap_or_default();
        let spec = TaskSpec {
            task_type: TaskKind::Deploy,
            state: TaskState::Running,
            progress: TaskProgress { done: 0, total: 0, message },
            subject: Some(subject),
            result: None,
            error: None,
            step: Some(RolloutStep::Starting),
            rollout: Some(plan),
            runner: None,
        };
        let req = CreateRequest {
            account: Some(env.meta.account),
            ring: Ring::PLATFORM,
            label: Some(rollout::running_name(&app)),
            labels: [(APP_LABEL.to_string(), app.clone())].into(),
            spec,
        };
        let mut settled = false;
        let task = loop {
            match self.registry.create_guarded(req.clone(), Utc::now(), guard).await {
                Ok(t) => break t,
                Err(RegistryError::GuardMoved(detail)) => {
                    return Err(PlatformError::Conflict(format!("app {app} was not changed: {detail}")));
                }
                // The name is the app's running slot. A task that ended without giving it up
                // (cancelled through the API) gives it up now; a running one keeps it.
                Err(RegistryError::Conflict { .. }) if !settled && self.settle_running_name(&app).await? => {
                    settled = true;
                }
                Err(RegistryError::Conflict { .. }) => {
                    return Err(PlatformError::Conflict(format!(
                        "app {app} is already being changed by another task; wait for it (enjin task list)"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(task)
    }

    /// Renames a task that holds `app`'s running name although it has ended; whether one did.
    async fn settle_running_name(&self, app: &str) -> Result<bool, PlatformError> {
        let name = rollout::running_name(app);
        let (tasks, _) = self.registry.list::<TaskSpec>(&ListQuery::default()).await?;
        let Some(t) = tasks.into_iter().find(|t| t.meta.label.as_deref() == Some(name.as_str())) else {
            return Ok(false);
        };
        if !t.spec.state.is_final() {
            return Ok(false);
        }
        let req = UpdateRequest {
            revision: t.meta.revision,
            label: Some(format!("{app}-{}", &t.meta.uuid.simple().to_string()[..8])),
            labels: t.meta.labels.clone(),
            spec: t.spec.clone(),
        };
        match self.registry.update(t.meta.uuid, req, Utc::now()).await {
            Ok(_) | Err(RegistryError::Conflict { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Ring 2 nodes carrying `key=value`.
    pub(super) async fn instances_where(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<Object<NodeSpec>>, PlatformError> {
        let q = ListQuery {
            ring: Some(Ring::PLATFORM),
            selector: Some(format!("{key}={value}")),
            ..ListQuery::default()
        };
        Ok(self.registry.list::<NodeSpec>(&q).await?.0)
    }

    /// An app as `enjin app status` shows it.
    pub async fn status(&self, account: Uuid, app: &str) -> Result<AppStatus, PlatformError> {
        let env = self.app_env(app, account, false).await?;
        let view = edge::View::read(&self.registry).await?;
        let stats = self.bus().map(|b| b.instance_stats()).unwrap_or_default();
        Ok(self.status_of(&env, &view, &stats))
    }

    /// The status of every app, of every account (the operator's view).
    pub async fn list(&self) -> Result<Vec<AppStatus>, PlatformError> {
        let view = edge::View::read(&self.registry).await?;
        let stats = self.bus().map(|b| b.instance_stats()).unwrap_or_default();
        Ok(view.apps.iter().map(|env| self.status_of(env, &view, &stats)).collect())
    }

    fn status_of(
        &self,
        env: &Object<CompartmentSpec>,
        view: &edge::View,
        stats: &HashMap<Uuid, (enjin_model::api::InstanceStats, chrono::DateTime<Utc>)>,
    ) -> AppStatus {
        let name = env.meta.label.clone().unwrap_or_default();
        let live = view.live_release(env.meta.uuid);
        let mut instances: Vec<InstanceStatus> = view
            .instances_of(env.meta.uuid)
            .map(|n| {
                let health = view.health(n);
                let routed = view.routed(n);
                let release = n.meta.labels.get(RELEASE_LABEL).and_then(|r| r.parse::<Uuid>().ok());
                let version = release.and_then(|r| view.releases.get(&r)).map_or(0, |r| r.spec.version);
                let host = n.spec.parent.and_then(|p| view.hosts.get(&p));
                let s = stats.get(&n.meta.uuid);
                InstanceStatus {
                    uuid: n.meta.uuid,
                    label: n.meta.label.clone().unwrap_or_default(),
                    process: n.meta.labels.get(PROCESS_LABEL).cloned().unwrap_or_default(),
                    version,
                    host: host.and_then(|h| h.meta.label.clone()).unwrap_or_default(),
                    strategy: placement::effective_strategy(
                        n.spec.strategy,
                        host.map_or(Sandbox::None, |h| Sandbox::of(&h.meta.labels)),
                    ),
                    address: view.address_of(n),
                    state: if n.meta.labels.contains_key(DRAINING_LABEL) {
                        "draining".into()
                    } else {
                        health.name().into()
                    },
                    routed,
                    message: health.message().to_string(),
                    cpu_seconds: s.map(|(s, _)| s.cpu_usage_ns as f64 / 1e9),
                    memory_bytes: s.map(|(s, _)| s.memory_bytes),
                }
            })
            .collect();
        instances.sort_by(|a, b| a.label.cmp(&b.label));
        AppStatus {
            name: name.clone(),
            uuid: env.meta.uuid,
            account: env.meta.account,
            url: self.url_of(&name),
            version: live.map(|r| r.spec.version),
            instances,
            traffic: self.traffic(&name),
        }
    }

    /// The logs of an app's instances (or one of them), from the hosts that run them.
    pub async fn logs(
        &self,
        account: Uuid,
        app: &str,
        q: &enjin_model::api::LogsQuery,
    ) -> Result<enjin_model::api::LogsReply, PlatformError> {
        let env = self.app_env(app, account, false).await?;
        let bus = self.bus().ok_or_else(|| {
            PlatformError::Unavailable("this server runs no ring bus to reach hosts".into())
        })?;
        let view = edge::View::read(&self.registry).await?;
        let mut by_host: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
        let mut found = false;
        for n in view.instances_of(env.meta.uuid) {
            if let Some(want) = &q.instance
                && n.meta.label.as_deref() != Some(want.as_str())
                && n.meta.uuid.to_string() != *want
            {
                continue;
            }
            found = true;
            if let Some(h) = n.spec.parent {
                by_host.entry(h).or_default().push(n.meta.uuid);
            }
        }
        if let Some(want) = &q.instance
            && !found
        {
            return Err(FieldError::new("instance", format!("app {app} has no instance {want}")).into());
        }
        let mut lines = Vec::new();
        for (host, instances) in by_host {
            let req = enjin_model::api::LogsRequest {
                instances,
                since: q.since,
                after: BTreeMap::new(),
                limit: q.limit,
            };
            match bus.logs(host, &req).await {
                Ok(reply) => lines.extend(reply.lines),
                Err(e) => tracing::warn!(%host, error = %e, "host did not answer a logs request"),
            }
        }
        lines.sort_by(|a, b| a.at.cmp(&b.at).then(a.seq.cmp(&b.seq)));
        Ok(enjin_model::api::LogsReply { lines })
    }
}

/// The address instances on `host` are reached at: its first interface address, or loopback
/// for a host that shares this machine's network.
/// What the caller of a rollout follows it by.
fn started(
    task: &Object<TaskSpec>,
    env: &Object<CompartmentSpec>,
    release: &Object<ReleaseSpec>,
) -> RolloutStarted {
    RolloutStarted {
        app: env.meta.uuid,
        task: task.meta.uuid,
        release: release.meta.uuid,
        version: release.spec.version,
    }
}

pub(crate) fn host_address(host: Uuid, interfaces: &[Object<NetworkInterfaceSpec>]) -> IpAddr {
    interfaces
        .iter()
        .find(|i| i.spec.node == host)
        .and_then(|i| i.spec.addresses.first().copied())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// What the observations of an instance say of its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not yet started, or started and not yet passed its probe.
    Starting(String),
    /// Running, and its probe (if any) passes: routed.
    Healthy(String),
    /// Running, but its probe fails, or it exited and is being restarted.
    Unhealthy(String),
    /// Given up on by its supervisor (too many restarts).
    Failed(String),
}

impl Health {
    /// The state's name as the API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Health::Starting(_) => "starting",
            Health::Healthy(_) => "healthy",
            Health::Unhealthy(_) => "unhealthy",
            Health::Failed(_) => "failed",
        }
    }

    /// Why it is in this state, for people.
    pub fn message(&self) -> &str {
        match self {
            Health::Starting(m) | Health::Healthy(m) | Health::Unhealthy(m) | Health::Failed(m) => m,
        }
    }

    /// From the node's process observation and, when it has a probe, the probe's: a probe's
    /// verdict counts only if it is newer than the process's last start or exit, so an
    /// instance that died and came back is not healthy on its former self's word.
    pub fn of(node: &NodeSpec, observations: &[&Object<NodeObservationSpec>]) -> Health {
        let find =
            |s: ObservationStrategy| observations.iter().find(|o| o.spec.strategy == s).map(|o| &o.spec);
        let Some(process) = find(ObservationStrategy::Process) else {
            return Health::Starting("not started yet".into());
        };
        match process.state {
            ObservationState::Failed => return Health::Failed(process.message.clone()),
            ObservationState::Exited | ObservationState::Lost => {
                return Health::Unhealthy(process.message.clone());
            }
            _ => {}
        }
        match node.run.as_ref().and_then(|r| r.probe.as_ref()) {
            None if process.state == ObservationState::Running => Health::Healthy(process.message.clone()),
            None => Health::Starting(process.message.clone()),
            Some(p) => match find(p.strategy) {
                Some(o) if o.observed_at >= process.observed_at => match o.state {
                    ObservationState::Running => Health::Healthy(o.message.clone()),
                    ObservationState::Unhealthy => Health::Unhealthy(o.message.clone()),
                    _ => Health::Starting(o.message.clone()),
                },
                _ => Health::Starting(process.message.clone()),
            },
        }
    }
}
