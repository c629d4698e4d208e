//! The ring agent (`enjin agent --ring N`): it joins its ring's bus with the identity its
//! parent gave it, follows the desired children its parent publishes (signed, retained,
//! level-triggered), hands them to its supervisor, and reports what it observes — a heartbeat
//! for itself and a state for each child. It also collects its children's output into
//! rotated, sequenced logs and answers its parent's requests for them ([`logs`]), and reports
//! what its sandboxed children use ([`stats`]). It holds no store credentials and never decides
//! on its own what to run, nor answers anyone but its parent: only a parent key may ask.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod children;
mod config;
pub mod credentials;
pub mod join;
pub mod logs;
mod network;
mod packages;
pub mod process;
mod sandbox;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_bus::envelope::Envelope;
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, NodeSubscription, bundle_from_birth};
use enjin_bus::trust::VerifierConfig;
use enjin_model::api::{
    DesiredChildren, ObservationReport, desired_topic, logs_topic, observation_topic, stats_topic,
};
use enjin_model::kinds::{ObservationState, ObservationStrategy};
use enjin_sys::cgroup::{CgroupConfig, Cgroups};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

pub use children::{RoutingLauncher, SupervisedChildren, child_spec, forward_observations, report_of};
pub use config::{AgentConfig, AgentFile, BusConnection, ConfigError, DEFAULT_KEY_ROTATION};
pub use packages::{BusPackageSource, ChunkError, PackageCache, PackageError, PackageSource, install};
pub use sandbox::{APP_DIR, SandboxChild, SandboxError, SandboxLauncher};

/// How often the agent says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// Log requests answered at once; more wait their turn, so a burst cannot take every blocking
/// thread.
const LOG_READERS: usize = 2;
/// How long the collector may take to finish its last poll when the agent stops.
const COLLECTOR_STOP: Duration = Duration::from_secs(5);
/// How long the agent waits before subscribing again to desired children it was cut off from,
/// so that a subscription refused at once does not spin.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(200);

/// The branch of the cgroup tree the host's sandboxed children run in (`enjin/<node>`).
pub fn cgroup_parent(node: Uuid) -> String {
    format!("enjin/{node}")
}

/// Where the host's children's raw output and collected logs are.
pub fn logs_dir(config: &AgentConfig) -> PathBuf {
    config.children_dir().join("logs")
}

/// What runs the children: the agent tells it the whole desired set each time, it reports
/// observations back.
pub trait Children: Send + Sync + 'static {
    /// Make the running set match `desired` (idempotent: the same set again changes nothing).
    fn apply(&self, desired: &DesiredChildren);

    /// The agent has joined the bus (children's packages are fetched over it).
    fn attach(&self, _node: &Arc<BusNode>) {}
}

/// Why [`run`] could not start. Once the agent is on the bus it does not fail: lost messages
/// and unreadable sets are logged and repaired by the next ones.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file of the agent's directory (identity, TLS material, trust bundle) is missing or
    /// unreadable; the parent must prepare the directory again.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The trust bundle is not self-consistent, the bus client could not be built (its TLS
    /// material is unusable; the hub is not contacted yet), the bus node did not start, or
    /// subscribing to the desired children failed.
    #[error("cannot join the bus: {0}")]
    Bus(String),
}

/// Run the agent until `shutdown` completes. `observations` carries what the supervisor saw
/// of the children, to be reported upwards. A subscription to its desired children that ends
/// (cut off for falling behind) is made again; the agent also returns `Ok` when that fails
/// (the transport is gone for good).
pub async fn run(
    config: AgentConfig,
    children: Arc<dyn Children>,
    mut observations: mpsc::Receiver<ObservationReport>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let identity = Identity::load(&config.key_file()).map_err(|e| ConfigError::Key(e.to_string()))?;
    let bundle = bundle_from_birth(&config.bundle()?).map_err(|e| AgentError::Bus(e.to_string()))?;
    let bus = config.connect_bus().await.map_err(AgentError::Bus)?;
    let node = Arc::new(
        BusNode::start(bus.transport, identity, bundle, VerifierConfig::default())
            .map_err(|e| AgentError::Bus(e.to_string()))?,
    );
    // On the hub the agent keeps its certificate fresh; a NATS user lives as long as its JWT.
    let upkeep = bus.hub.map(|client| tokio::spawn(config.credentials().keep_fresh(node.clone(), client)));
    children.attach(&node);
    let mut desired =
        node.subscribe(&desired_topic(config.node)).map_err(|e| AgentError::Bus(e.to_string()))?;
    let logs_dir = logs_dir(&config);
    let mut log_requests = subscribe_logs(&node, config.node);
    // Children keep running without log collection: it is not worth failing the agent for.
    let collector = match logs::CollectorHandle::spawn(logs::CollectorConfig::new(&logs_dir)) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "instance logs are not collected");
            None
        }
    };
    let (running_tx, running) = watch::channel(Arc::new(Vec::<Uuid>::new()));
    let stats_task = tokio::spawn(stats_loop(node.clone(), config.node, config.sandbox, running.clone()));
    let readers = Arc::new(Semaphore::new(LOG_READERS));
    tracing::info!(node = %config.node, ring = config.ring, hub = %config.hub, nats = ?config.nats, key = %node.key_id().short(), "agent started");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut newest = i64::MIN;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            env = next_request(&mut log_requests) => match env {
                Some(env) => answer_logs(&node, env, running.borrow().clone(), &logs_dir, &readers),
                None => {
                    // Cut off (it fell behind) or the transport is closing: subscribe again;
                    // if that fails, log requests go unanswered rather than stop the agent.
                    tracing::warn!("log request subscription ended; subscribing again");
                    log_requests = subscribe_logs(&node, config.node);
                }
            },
            _ = heartbeat.tick() => {
                report(&node, ObservationReport {
                    node: config.node,
                    strategy: ObservationStrategy::Heartbeat,
                    state: ObservationState::Running,
                    observed_at: Utc::now(),
                    message: String::new(),
                });
            }
            Some(obs) = observations.recv() => report(&node, obs),
            env = desired.next() => {
                let Some(env) = env else {
                    // Cut off (it fell behind) or refused: what runs here keeps running, and the
                    // retained set comes again with the new subscription. Only a transport that
                    // is gone for good (subscribing fails) ends the agent.
                    tracing::warn!("desired children subscription ended; subscribing again");
                    tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                    match node.subscribe(&desired_topic(config.node)) {
                        Ok(s) => desired = s,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot subscribe to the desired children again");
                            break;
                        }
                    }
                    continue;
                };
                // Only the ring's parent says what runs here.
                if !node.is_from_parent(&env) {
                    tracing::warn!(sender = %env.sender().short(), "desired children from a non-parent key ignored");
                    continue;
                }
                match serde_json::from_slice::<DesiredChildren>(env.payload()) {
                    Ok(set) if set.node == config.node && set.revision >= newest => {
                        newest = set.revision;
                        children.apply(&set);
                        let ids: Vec<Uuid> = set.children.iter().map(|c| c.uuid).collect();
                        if let Some(c) = &collector {
                            c.set_desired(ids.clone());
                        }
                        running_tx.send_replace(Arc::new(ids));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable desired children"),
                }
            }
        }
    }
    tracing::info!(node = %config.node, "agent stopping");
    stats_task.abort();
    if let Some(u) = upkeep {
        u.abort();
    }
    if let Some(c) = collector {
        let stopped = tokio::task::spawn_blocking(move || c.stop());
        if tokio::time::timeout(COLLECTOR_STOP, stopped).await.is_err() {
            tracing::warn!("the log collector did not finish in time");
        }
    }
    Ok(())
}

fn subscribe_logs(node: &BusNode, host: Uuid) -> Option<NodeSubscription> {
    match node.subscribe(&logs_topic(host)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to log requests; they go unanswered");
            None
        }
    }
}

async fn next_request(sub: &mut Option<NodeSubscription>) -> Option<Envelope> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Answer a log request from the ring's parent, reading on a blocking thread; `running` are the
/// children that should run here now. Instances neither running here nor with logs here are
/// refused (the reply is a [`logs::LogsRefused`]).
fn answer_logs(
    node: &Arc<BusNode>,
    env: Envelope,
    running: Arc<Vec<Uuid>>,
    dir: &Path,
    readers: &Arc<Semaphore>,
) {
    if !node.is_from_parent(&env) {
        tracing::warn!(sender = %env.sender().short(), "log request from a non-parent key ignored");
        return;
    }
    // Answered only on the parent's own inbox (`BusNode::reply` checks it again, and counts a
    // refusal); checked first so that a request aiming elsewhere reads no logs.
    if !env.reply_to().is_some_and(|r| enjin_bus::acl::reply_allowed(enjin_bus::acl::PARENT_ID, r)) {
        node.counters().reply_refused();
        tracing::warn!(
            reply_to = env.reply_to().unwrap_or(""),
            "log request naming a reply-to that is not a parent inbox ignored"
        );
        return;
    }
    let (node, dir, readers) = (node.clone(), dir.to_path_buf(), readers.clone());
    tokio::spawn(async move {
        let Ok(_permit) = readers.acquire_owned().await else { return };
        let payload = env.payload().to_vec();
        let answer = tokio::task::spawn_blocking(move || logs::answer(&dir, &payload, &running)).await;
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "log reply not encodable");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "log reading failed");
                return;
            }
        };
        if let Err(e) = node.reply(&env, reply) {
            tracing::warn!(error = %e, "log reply not sent");
        }
    });
}

/// Every [`stats::STATS_EVERY`], report what the children listed in `running` use. Cgroups are
/// looked for only when this host can sandbox (`sandboxed`); without them the reports are
/// empty, which still tells the parent the host has nothing to report.
async fn stats_loop(
    node: Arc<BusNode>,
    host: Uuid,
    sandboxed: bool,
    running: watch::Receiver<Arc<Vec<Uuid>>>,
) {
    let cgroups: Option<Arc<dyn Cgroups>> = if sandboxed {
        let config = CgroupConfig { parent: cgroup_parent(host).into(), ..CgroupConfig::default() };
        match tokio::task::spawn_blocking(move || enjin_sys::cgroup::detect(&config)).await {
            Ok(Ok(c)) => Some(Arc::from(c)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "no cgroups: instance usage is not reported");
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let mut tick = tokio::time::interval(stats::STATS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids = running.borrow().clone();
        let cg = cgroups.clone();
        let Ok(report) =
            tokio::task::spawn_blocking(move || stats::host_stats(host, cg.as_deref(), &ids)).await
        else {
            continue;
        };
        let Ok(payload) = serde_json::to_vec(&report) else { continue };
        if let Err(e) = node.publish(&stats_topic(host), payload) {
            // The next report replaces a lost one.
            tracing::debug!(error = %e, "stats not sent");
        }
    }
}

fn report(node: &BusNode, obs: ObservationReport) {
    let Ok(payload) = serde_json::to_vec(&obs) else { return };
    if let Err(e) = node.publish(&observation_topic(obs.node), payload) {
        // Observations are level-triggered: the next one repairs a dropped one.
        tracing::debug!(error = %e, "observation not sent");
    }
}
