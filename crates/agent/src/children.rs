//! The agent's children, run by `enjin-supervisor`: each desired child becomes a `ChildSpec`
//! (its id the node's uuid), the whole set is applied at once (level-triggered), and the
//! supervisor's observations go back up as reports about those nodes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use enjin_model::api::{DesiredChild, DesiredChildren, ObservationReport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use enjin_model::kinds::{ObservationStrategy, RestartKind, Strategy};
use enjin_supervisor::{
    Backoff, ChildId, ChildSpec, Intensity, LaunchError, Launched, Launcher, Observation, ProbeSpec,
    ProcessHandle, ProcessLauncher, Restart, RestartPolicy, Signal, SignalError, StopSpec, SupervisorHandle,
};

use crate::SandboxLauncher;
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

/// Launches each child the way its node's strategy says: `unix-user` in the sandbox when this
/// agent can (root, a uid range), plain processes otherwise (said loudly).
#[derive(Debug)]
pub struct RoutingLauncher {
    process: ProcessLauncher,
    sandbox: Option<SandboxLauncher>,
    strategies: Mutex<HashMap<String, Strategy>>,
}

impl RoutingLauncher {
    pub fn new(process: ProcessLauncher, sandbox: Option<SandboxLauncher>) -> Self {
        RoutingLauncher { process, sandbox, strategies: Mutex::new(HashMap::new()) }
    }

    fn sandboxed(&self, id: &ChildId) -> Option<&SandboxLauncher> {
        let strategy = self.strategies.lock().ok()?.get(id.as_str()).copied();
        match (strategy, &self.sandbox) {
            (Some(Strategy::UnixUser), Some(s)) => Some(s),
            _ => None,
        }
    }

    fn note(&self, c: &DesiredChild) {
        if let Ok(mut m) = self.strategies.lock() {
            m.insert(c.uuid.to_string(), c.strategy);
        }
        match (&self.sandbox, c.strategy) {
            (Some(s), Strategy::UnixUser) => s.set_limits(&c.uuid.to_string(), c.resources.clone()),
            (None, Strategy::UnixUser) => tracing::warn!(
                child = %c.uuid,
                "unix-user isolation is not available here (needs root and a uid range): running it as a plain process"
            ),
            _ => {}
        }
    }
}

impl Launcher for RoutingLauncher {
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError> {
        match self.sandboxed(&spec.id) {
            Some(s) => s.launch(spec),
            None => self.process.launch(spec),
        }
    }

    fn signal(&self, p: &ProcessHandle, s: Signal) -> Result<(), SignalError> {
        self.process.signal(p, s)
    }
}

/// Children run by a supervisor.
#[derive(Debug, Clone)]
pub struct SupervisedChildren {
    handle: SupervisorHandle,
    launcher: Arc<RoutingLauncher>,
}

impl SupervisedChildren {
    pub fn new(handle: SupervisorHandle, launcher: Arc<RoutingLauncher>) -> Self {
        SupervisedChildren { handle, launcher }
    }
}

impl Children for SupervisedChildren {
    fn apply(&self, desired: &DesiredChildren) {
        for c in &desired.children {
            self.launcher.note(c);
        }
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

/// A supervisor's observation as a report about the node it is of (children are named by
/// their node's uuid); `None` for a child that is not a node.
pub fn report_of(o: &Observation) -> Option<ObservationReport> {
    let node = o.child.as_str().parse().ok()?;
    let spec = o.to_node_observation(node);
    Some(ObservationReport {
        node,
        strategy: spec.strategy,
        state: spec.state,
        observed_at: spec.observed_at,
        message: spec.message,
    })
}

/// Turn the supervisor's observations into reports about the nodes they are of.
pub fn forward_observations(mut from: mpsc::Receiver<Observation>, to: mpsc::Sender<ObservationReport>) {
    tokio::spawn(async move {
        while let Some(o) = from.recv().await {
            let Some(report) = report_of(&o) else { continue };
            if to.send(report).await.is_err() {
                return;
            }
        }
    });
}
