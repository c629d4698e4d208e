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

use crate::packages::{self, PackageCache};
use crate::{SandboxChild, SandboxLauncher};
use std::path::PathBuf;
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
        // An instance with a network of its own is probed at its address, from the host.
        let ip = c.network.as_ref().map_or(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), |n| n.address);
        let addr = SocketAddr::new(ip, p.port?);
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
    /// Packages children run, and where plain-process children get their directories.
    packages: Option<(Arc<PackageCache>, PathBuf)>,
    digests: Mutex<HashMap<String, String>>,
    /// The host's firewall and fast path, shared with the sandbox (which makes instances'
    /// networks).
    network: Arc<crate::network::HostNetwork>,
}

impl RoutingLauncher {
    /// Plain processes through `process`; `unix-user` children through `sandbox` when this host
    /// has one (`None`: they run as plain processes, with a warning). No child is launched
    /// until a desired set has described it.
    pub fn new(process: ProcessLauncher, sandbox: Option<SandboxLauncher>) -> Self {
        let network = Arc::new(crate::network::HostNetwork::default());
        RoutingLauncher {
            process,
            sandbox: sandbox.map(|s| s.with_network(network.clone())),
            strategies: Mutex::new(HashMap::new()),
            packages: None,
            digests: Mutex::new(HashMap::new()),
            network,
        }
    }

    /// Children with a package run it from a directory of their own; plain-process children's
    /// directories are made under `work`.
    pub fn with_packages(mut self, cache: Arc<PackageCache>, work: PathBuf) -> Self {
        self.packages = Some((cache, work));
        self
    }

    /// Removes what children no longer in `desired` left behind: their instance directories
    /// and cgroups (once stopped) and the packages nothing uses any more.
    pub fn clean_up(&self, desired: &DesiredChildren) {
        let keep: std::collections::HashSet<String> =
            desired.children.iter().map(|c| c.uuid.to_string()).collect();
        let mut digests: std::collections::HashSet<String> = desired
            .children
            .iter()
            .filter_map(|c| c.run.package.as_ref())
            .map(|p| p.digest.clone())
            .collect();
        if let Some(s) = &self.sandbox {
            s.clean_up(&keep);
            if desired.firewall.is_some() {
                s.clean_up_networks(&keep);
                self.network.resync();
            }
            digests.extend(s.packages_in_use());
        }
        if let Some((cache, work)) = &self.packages {
            cache.retain(&digests);
            // Plain-process children's copies (the operator's own files, no other uid).
            if let Ok(entries) = std::fs::read_dir(work) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.parse::<uuid::Uuid>().is_ok() && !keep.contains(&name) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    }

    fn cache(&self) -> Option<&Arc<PackageCache>> {
        self.packages.as_ref().map(|(c, _)| c)
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
        if let (Some(p), Ok(mut d)) = (&c.run.package, self.digests.lock()) {
            d.insert(c.uuid.to_string(), p.digest.clone());
        }
        match (&self.sandbox, c.strategy) {
            (Some(s), Strategy::UnixUser) => s.set_child(
                &c.uuid.to_string(),
                SandboxChild {
                    uid: c.run.uid,
                    resources: c.resources.clone(),
                    package: c.run.package.as_ref().zip(self.cache()).map(|(p, cache)| cache.path(&p.digest)),
                    network: c.network.clone(),
                },
            ),
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
        if let Some(s) = self.sandboxed(&spec.id) {
            return s.launch(spec);
        }
        // Only a desired set says how a child runs: one never noted (a record restored before
        // the first set) must not fall through to a plain process, the agent's own user.
        let noted = self.strategies.lock().is_ok_and(|m| m.contains_key(spec.id.as_str()));
        if !noted {
            return Err(LaunchError::Spawn {
                id: spec.id.clone(),
                program: spec.command.first().cloned().unwrap_or_default(),
                source: std::io::Error::other("no desired set has said how to run it yet"),
            });
        }
        let digest = self.digests.lock().ok().and_then(|d| d.get(spec.id.as_str()).cloned());
        match (digest, &self.packages) {
            (Some(digest), Some((cache, work))) => {
                let dir = work.join(spec.id.as_str());
                packages::install(&cache.path(&digest), &dir).map_err(|e| LaunchError::Spawn {
                    id: spec.id.clone(),
                    program: spec.command.first().cloned().unwrap_or_default(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let mut spec = spec.clone();
                spec.workdir = Some(dir);
                self.process.launch(&spec)
            }
            _ => self.process.launch(spec),
        }
    }

    fn signal(&self, p: &ProcessHandle, s: Signal) -> Result<(), SignalError> {
        self.process.signal(p, s)
    }

    fn find(&self, spec: &ChildSpec) -> Option<ProcessHandle> {
        self.sandboxed(&spec.id)?.find(spec)
    }
}

/// Children run by a supervisor.
#[derive(Debug, Clone)]
pub struct SupervisedChildren {
    source: Option<Arc<crate::BusPackageSource>>,
    latest: tokio::sync::watch::Sender<Option<DesiredChildren>>,
}

impl SupervisedChildren {
    /// Must be called inside a tokio runtime: it starts the worker that applies desired sets.
    pub fn new(handle: SupervisorHandle, launcher: Arc<RoutingLauncher>) -> Self {
        let (latest, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(apply_sets(handle, launcher, rx));
        SupervisedChildren { source: None, latest }
    }

    /// Packages come over the bus through `source`, attached when the agent joins it.
    pub fn with_source(mut self, source: Arc<crate::BusPackageSource>) -> Self {
        self.source = Some(source);
        self
    }
}

impl Children for SupervisedChildren {
    fn attach(&self, node: &Arc<enjin_bus::node::BusNode>) {
        if let Some(s) = &self.source {
            s.attach(node.clone());
        }
    }

    fn apply(&self, desired: &DesiredChildren) {
        // The newest set replaces one not yet taken up: sets are applied one at a time, in
        // order, by one worker, so an older set never lands after a newer one.
        self.latest.send_replace(Some(desired.clone()));
    }
}

/// Apply desired sets one at a time, newest first. A child runs only once its package is
/// here; one whose package cannot be fetched now is left out (the next desired set, at most
/// 15 s away, tries again).
async fn apply_sets(
    handle: SupervisorHandle,
    launcher: Arc<RoutingLauncher>,
    mut latest: tokio::sync::watch::Receiver<Option<DesiredChildren>>,
) {
    while latest.changed().await.is_ok() {
        let Some(desired) = latest.borrow_and_update().clone() else { continue };
        // What each child of this set runs with is noted here, by the one worker, just before
        // the set is applied and cleaned up after: noting a newer set earlier would let the
        // clean-up of this one forget the newer set's children.
        for c in &desired.children {
            launcher.note(c);
        }
        // The firewall first: an instance never runs a moment under rules older than its set.
        if let Some(fw) = desired.firewall.clone() {
            let network = launcher.network.clone();
            match tokio::task::spawn_blocking(move || network.apply(&fw)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(revision = desired.revision, error = %e, "firewall not applied")
                }
                Err(e) => tracing::error!(error = %e, "firewall application panicked"),
            }
        }
        let cache = launcher.cache().cloned();
        let mut specs = Vec::new();
        for c in &desired.children {
            if let (Some(p), Some(cache)) = (&c.run.package, &cache)
                && let Err(e) = cache.ensure(p).await
            {
                tracing::warn!(child = %c.uuid, error = %e, "package not ready; child not started yet");
                continue;
            }
            specs.extend(child_spec(c));
        }
        let revision = desired.revision;
        match handle.set_desired(specs).await {
            Ok(summary) => tracing::info!(revision, ?summary, "children reconciled"),
            Err(e) => tracing::warn!(revision, error = %e, "children not reconciled"),
        }
        let (l, d) = (launcher.clone(), desired.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || l.clean_up(&d)).await {
            tracing::warn!(error = %e, "clean-up of removed children failed");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_no_desired_set_has_described_is_never_run_as_a_plain_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let launcher = RoutingLauncher::new(ProcessLauncher::new(dir.path().join("logs")), None);
        let spec =
            ChildSpec::new(ChildId::new(uuid::Uuid::new_v4().to_string()).expect("id"), vec!["true".into()]);
        let Err(e) = launcher.launch(&spec) else { panic!("a child of unknown strategy was launched") };
        assert!(e.to_string().contains("no desired set"), "{e}");
        assert!(launcher.find(&spec).is_none());
    }
}
