//! The agent's children, run by `enjin-supervisor`: each desired child becomes a `ChildSpec`
//! (its id the node's uuid), the whole set is applied at once (level-triggered), and the
//! supervisor's observations go back up as reports about those nodes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use enjin_model::api::{DesiredChild, DesiredChildren, ObservationReport};
use enjin_model::kinds::{ObservationStrategy, RestartKind};
use enjin_supervisor::{
    Backoff, ChildId, ChildSpec, Intensity, Observation, ProbeSpec, Restart, RestartPolicy, StopSpec,
    SupervisorHandle,
};
use tokio::sync::mpsc;

use crate::Children;

/// The supervisor's form of a desired child; `None` for one it cannot express (logged).
pub fn child_spec(c: &DesiredChild) -> Option<ChildSpec> {
    let id = ChildId::new(c.uuid.to_string()).ok()?;
    let mut spec = ChildSpec::new(id, c.run.command.clone());
    spec.env = c.run.env.clone();
    spec.restart = RestartPolicy {
        restart: match c.run.restart.kind {
            RestartKind::Permanent => Restart::Permanent,
            RestartKind::Transient => Restart::Transient,
            RestartKind::Temporary => Restart::Temporary,
        },
        intensity: Intensity {
            max_restarts: c.run.restart.max_restarts,
            period: Duration::from_secs(c.run.restart.period_seconds),
        },
        backoff: Backoff::default(),
    };
    spec.stop = StopSpec { grace: Duration::from_secs(c.run.stop_grace_seconds), ..StopSpec::default() };
    spec.probe = c.run.probe.as_ref().and_then(|p| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p.port?));
        let mut probe = match p.strategy {
            ObservationStrategy::Tcp => ProbeSpec::tcp(addr),
            ObservationStrategy::Http => ProbeSpec::http(addr, p.path.clone().unwrap_or_else(|| "/".into())),
            _ => return None,
        };
        probe.interval = Duration::from_millis(p.interval_ms);
        probe.timeout = Duration::from_millis(p.timeout_ms);
        probe.failure_threshold = p.failure_threshold;
        probe.success_threshold = p.success_threshold;
        Some(probe)
    });
    match spec.validate() {
        Ok(()) => Some(spec),
        Err(e) => {
            tracing::warn!(child = %c.uuid, error = %e, "desired child cannot be run");
            None
        }
    }
}

/// Children run by a supervisor.
#[derive(Debug, Clone)]
pub struct SupervisedChildren {
    handle: SupervisorHandle,
}

impl SupervisedChildren {
    pub fn new(handle: SupervisorHandle) -> Self {
        SupervisedChildren { handle }
    }
}

impl Children for SupervisedChildren {
    fn apply(&self, desired: &DesiredChildren) {
        let specs: Vec<ChildSpec> = desired.children.iter().filter_map(child_spec).collect();
        let handle = self.handle.clone();
        let revision = desired.revision;
        tokio::spawn(async move {
            match handle.set_desired(specs).await {
                Ok(summary) => tracing::info!(revision, ?summary, "children reconciled"),
                Err(e) => tracing::warn!(revision, error = %e, "children not reconciled"),
            }
        });
    }
}

/// Turn the supervisor's observations into reports about the nodes they are of.
pub fn forward_observations(mut from: mpsc::Receiver<Observation>, to: mpsc::Sender<ObservationReport>) {
    tokio::spawn(async move {
        while let Some(o) = from.recv().await {
            let Ok(node) = o.child.as_str().parse() else { continue };
            let spec = o.to_node_observation(node);
            let report = ObservationReport {
                node,
                strategy: spec.strategy,
                state: spec.state,
                observed_at: spec.observed_at,
                message: spec.message,
            };
            if to.send(report).await.is_err() {
                return;
            }
        }
    });
}
