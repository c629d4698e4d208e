//! The ring agent (`enjin agent --ring N`): it joins its ring's bus with the identity its
//! parent gave it, follows the desired children its parent publishes (signed, retained,
//! level-triggered), hands them to its supervisor, and reports what it observes — a heartbeat
//! for itself and a state for each child. It holds no store credentials and never decides on
//! its own what to run: only a parent key may tell it.

#![forbid(unsafe_code)]

mod children;
mod config;
mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, bundle_from_birth};
use enjin_bus::trust::{KeyRole, VerifierConfig};
use enjin_model::api::{DesiredChildren, ObservationReport, desired_topic, observation_topic};
use enjin_model::kinds::{ObservationState, ObservationStrategy};
use tokio::sync::mpsc;

pub use children::{RoutingLauncher, SupervisedChildren, child_spec, forward_observations, report_of};
pub use config::{AgentConfig, AgentFile, ConfigError};
pub use sandbox::{SandboxLauncher, UidRange};

/// How often the agent says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// What runs the children: the agent tells it the whole desired set each time, it reports
/// observations back.
pub trait Children: Send + Sync + 'static {
    /// Make the running set match `desired` (idempotent: the same set again changes nothing).
    fn apply(&self, desired: &DesiredChildren);
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot join the bus: {0}")]
    Bus(String),
}

/// Run the agent until `shutdown` completes. `observations` carries what the supervisor saw
/// of the children, to be reported upwards.
pub async fn run(
    config: AgentConfig,
    children: Arc<dyn Children>,
    mut observations: mpsc::Receiver<ObservationReport>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let identity = Identity::load(&config.key_file()).map_err(|e| ConfigError::Key(e.to_string()))?;
    let tls = config.tls()?;
    let bundle = bundle_from_birth(&config.bundle()?).map_err(|e| AgentError::Bus(e.to_string()))?;
    let client = BusClient::connect(config.hub, &config.server_name, &tls, ClientConfig::default())
        .map_err(|e| AgentError::Bus(e.to_string()))?;
    let node = Arc::new(
        BusNode::start(Arc::new(client), identity, bundle, VerifierConfig::default())
            .map_err(|e| AgentError::Bus(e.to_string()))?,
    );
    let mut desired =
        node.subscribe(&desired_topic(config.node)).map_err(|e| AgentError::Bus(e.to_string()))?;
    tracing::info!(node = %config.node, ring = config.ring, hub = %config.hub, key = %node.key_id().short(), "agent started");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut newest = i64::MIN;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
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
                let Some(env) = env else { break };
                // Only the ring's parent says what runs here.
                if node.bundle().key(&env.sender()).map(|k| k.role) != Some(KeyRole::Parent) {
                    tracing::warn!(sender = %env.sender().short(), "desired children from a non-parent key ignored");
                    continue;
                }
                match serde_json::from_slice::<DesiredChildren>(env.payload()) {
                    Ok(set) if set.node == config.node && set.revision >= newest => {
                        newest = set.revision;
                        children.apply(&set);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable desired children"),
                }
            }
        }
    }
    tracing::info!(node = %config.node, "agent stopping");
    Ok(())
}

fn report(node: &BusNode, obs: ObservationReport) {
    let Ok(payload) = serde_json::to_vec(&obs) else { return };
    if let Err(e) = node.publish(&observation_topic(obs.node), payload) {
        // Observations are level-triggered: the next one repairs a dropped one.
        tracing::debug!(error = %e, "observation not sent");
    }
}
