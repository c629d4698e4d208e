use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, no_duplicates, reference, text};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule};

/// How a parent runs a child (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// A plain child process; the fallback without root.
    Process,
    /// A ring-1 agent in its own network namespace on a ring-0 machine.
    Netns,
    /// A QEMU microVM.
    Vm,
    /// An existing machine reached over SSH.
    Ssh,
    /// A dedicated UNIX user with cgroup limits and private namespaces.
    UnixUser,
    /// A machine that runs its own agent and joined the ring over the network with a join
    /// token bound to this node (`enjin host add`, then `enjin agent join` on the machine).
    Joined,
}

impl Strategy {
    /// The strategy as the API and CLI spell it (`unix-user`).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Process => "process",
            Strategy::Netns => "netns",
            Strategy::Vm => "vm",
            Strategy::Ssh => "ssh",
            Strategy::UnixUser => "unix-user",
            Strategy::Joined => "joined",
        }
    }

    /// Whether a child in `ring` can be run this way by its parent.
    pub fn supports(self, ring: Ring) -> bool {
        match self {
            Strategy::Process => ring != Ring::META,
            Strategy::Netns | Strategy::Ssh | Strategy::Joined => ring == Ring::INFRASTRUCTURE,
            Strategy::Vm => ring != Ring::META,
            Strategy::UnixUser => ring == Ring::PLATFORM,
        }
    }
}

/// Whether a node should be running; its supervisor converges on it, restarting or stopping
/// the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// The node should run (the default).
    #[default]
    Running,
    /// The node should not run: it is left out of its host's desired set, so its supervisor
    /// stops it (SIGTERM, then SIGKILL after its stop grace); the object is kept.
    Stopped,
}

/// The smallest disk a node may ask for: its writable layer is a filesystem of that size.
pub const MIN_DISK_BYTES: u64 = 4 << 20;

/// What a node may use; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes (the cgroup's `memory.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Size in bytes of the node's writable layer; at least 4 MiB (`MIN_DISK_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Most processes and threads the node may have at once (the cgroup's `pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// How a child is restarted, in the Erlang/OTP style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestartKind {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit (non-zero status or a signal).
    Transient,
    /// Never restarted.
    Temporary,
}

/// Restart policy: at most `max_restarts` in `period_seconds`, then the node has failed and
/// its parent is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// How the child is restarted after it exits.
    #[serde(default)]
    pub kind: RestartKind,
    /// Most restarts allowed within `period_seconds` before the node has failed (default 5, at
    /// most 1000).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The sliding window of the restart count, in seconds (default 60, at least 1).
    #[serde(default = "default_period")]
    pub period_seconds: u64,
}

fn default_max_restarts() -> u32 {
    5
}

fn default_period() -> u64 {
    60
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            kind: RestartKind::Permanent,
            max_restarts: default_max_restarts(),
            period_seconds: default_period(),
        }
    }
}

/// How a running node's health is observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// How the node is probed; `heartbeat` is refused here (agents send heartbeats themselves).
    pub strategy: ObservationStrategy,
    /// For tcp and http probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For http probes (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between probes, in milliseconds (default 2,000; positive).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long one probe may take before it counts as failed, in milliseconds (default 1,000;
    /// positive).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that make the node unhealthy.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Consecutive successes that make it healthy again.
    #[serde(default = "one")]
    pub success_threshold: u32,
}

fn default_interval_ms() -> u64 {
    2000
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_threshold() -> u32 {
    3
}

fn one() -> u32 {
    1
}

/// What a node runs, for strategies that run a command (ring 2 instances, `enjin node run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The program and its arguments, run without a shell; the first element is not empty.
    pub command: Vec<String>,
    /// Environment variables the child gets, besides those the platform sets (`PORT`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// How the child is restarted when it exits; defaults to permanent, 5 restarts in 60 s.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How the child's health is probed; none means it is healthy while its process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u64,
    /// A package from the package store, unpacked into the child's directory before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<super::PackageRef>,
    /// The port the child serves (also in its `PORT`): with `own_network` a port of its own
    /// namespace; otherwise unique on its host's address, claimed cloud-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The child runs in a network namespace of its own, with an address on the instance
    /// network (a `NetworkInterface` of its node) and nothing reachable but what its host's
    /// firewall admits. Set by the platform for instances on hosts that isolate them; never
    /// changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_network: bool,
    /// The uid a `unix-user` child runs as: reserved by the control plane in the node's create
    /// transaction (`/uids/<uid>`), released with the node, never chosen by a caller and never
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

fn default_grace() -> u64 {
    10
}

impl RunSpec {
    fn validate(&self) -> Result<(), FieldError> {
        match self.command.first() {
            None => return Err(FieldError::new("spec.run.command", "is empty")),
            Some(p) if p.is_empty() => return Err(FieldError::new("spec.run.command[0]", "is empty")),
            _ => {}
        }
        for (i, a) in self.command.iter().enumerate() {
            text(&format!("spec.run.command[{i}]"), a, 4096)?;
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.contains('=')
                && !k.contains('\0')
                && !k.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(FieldError::new(format!("spec.run.env.{k}"), "is not a valid variable name"));
            }
            text(&format!("spec.run.env.{k}"), v, 32 * 1024)?;
        }
        if self.restart.max_restarts > 1000 || self.restart.period_seconds == 0 {
            return Err(FieldError::new(
                "spec.run.restart",
                "max_restarts is at most 1000 and period_seconds at least 1",
            ));
        }
        if let Some(p) = &self.package
            && !super::PackageRef::valid_digest(&p.digest)
        {
            return Err(FieldError::new(
                "spec.run.package.digest",
                "is not sha256: and 64 lowercase hex digits",
            ));
        }
        if self.port == Some(0) {
            return Err(FieldError::new("spec.run.port", "must not be 0"));
        }
        if let Some(p) = &self.probe {
            let needs_port = matches!(p.strategy, ObservationStrategy::Tcp | ObservationStrategy::Http);
            if needs_port && p.port.is_none() {
                return Err(FieldError::new("spec.run.probe.port", "tcp and http probes need a port"));
            }
            if p.interval_ms == 0 || p.timeout_ms == 0 || p.failure_threshold == 0 || p.success_threshold == 0
            {
                return Err(FieldError::new(
                    "spec.run.probe",
                    "intervals, timeouts and thresholds must be positive",
                ));
            }
            if p.strategy == ObservationStrategy::Heartbeat {
                return Err(FieldError::new(
                    "spec.run.probe.strategy",
                    "heartbeats are sent by agents, not probed",
                ));
            }
        }
        Ok(())
    }
}

/// Anything supervised. Desired state only: what was observed lives in node observations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The supervising node, one ring below; none for ring 0 (the operator supervises).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// How the parent runs this node; none for ring 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The tiers the node serves, in the same ring, each at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Uuid>,
    /// The compartment the node lives in, in the same ring; none for a node placed nowhere in
    /// particular.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment: Option<Uuid>,
    /// What the node may use; every limit absent by default.
    #[serde(default)]
    pub resources: Resources,
    /// Whether the node should run or stay stopped; running by default.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// What the node runs, where its strategy runs a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
}

impl Spec for NodeSpec {
    const KIND: Kind = Kind::Node;

    fn check_update(&self, old: &Self) -> Result<(), FieldError> {
        let own = |s: &Self| s.run.as_ref().is_some_and(|r| r.own_network);
        if own(self) != own(old) {
            return Err(FieldError::new(
                "spec.run.own_network",
                "whether a node has a network of its own cannot change: create a new node",
            ));
        }
        Ok(())
    }

    fn validate(&self, ring: Ring) -> Result<(), FieldError> {
        match (ring.parent(), self.parent) {
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "spec.parent",
                    "a ring 0 node has no parent: the operator supervises it",
                ));
            }
            (Some(p), None) => {
                return Err(FieldError::new(
                    "spec.parent",
                    format!("a ring {ring} node needs a parent node in ring {p}"),
                ));
            }
            _ => {}
        }
        match (ring, self.strategy) {
            (Ring::META, Some(s)) => {
                return Err(FieldError::new(
                    "spec.strategy",
                    format!("a ring 0 node is run by the operator, not by strategy {}", s.name()),
                ));
            }
            (r, None) if r != Ring::META => {
                return Err(FieldError::new(
                    "spec.strategy",
                    format!("a ring {r} node needs a supervision strategy"),
                ));
            }
            (r, Some(s)) if !s.supports(r) => {
                return Err(FieldError::new(
                    "spec.strategy",
                    format!("strategy {} cannot run a ring {r} node", s.name()),
                ));
            }
            _ => {}
        }
        no_duplicates("spec.tiers", &self.tiers)?;
        if let Some(run) = &self.run {
            run.validate()?;
        }
        let r = &self.resources;
        if r.cpu_millis == Some(0) || r.memory_bytes == Some(0) || r.pids == Some(0) {
            return Err(FieldError::new(
                "spec.resources",
                "a limit of 0 would stop the node from running; leave it out for no limit",
            ));
        }
        if r.disk_bytes.is_some_and(|d| d < MIN_DISK_BYTES) {
            return Err(FieldError::new(
                "spec.resources.disk_bytes",
                format!("must be at least {MIN_DISK_BYTES} bytes (4 MiB), the smallest writable layer"),
            ));
        }
        Ok(())
    }

    fn references(&self) -> Vec<Reference> {
        let mut refs = Vec::new();
        if let Some(p) = self.parent {
            refs.push(reference("spec.parent", Kind::Node, p, RingRule::Parent, OnDelete::Restrict));
        }
        if let Some(c) = self.compartment {
            refs.push(reference(
                "spec.compartment",
                Kind::Compartment,
                c,
                RingRule::Same,
                OnDelete::Restrict,
            ));
        }
        for (i, t) in self.tiers.iter().enumerate() {
            refs.push(reference(
                format!("spec.tiers[{i}]"),
                Kind::Tier,
                *t,
                RingRule::Same,
                OnDelete::Restrict,
            ));
        }
        refs
    }

    fn compartment(&self) -> Option<Uuid> {
        self.compartment
    }

    fn tiers(&self) -> &[Uuid] {
        &self.tiers
    }

    fn parent(&self) -> Option<Uuid> {
        self.parent
    }
}

/// Who observed a node, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObservationStrategy {
    /// The supervisor, watching the child's process (start, exit, restart).
    Process,
    /// A TCP connect to the probe's port.
    Tcp,
    /// An HTTP `GET` of the probe's path; a 2xx or 3xx status passes.
    Http,
    /// Heartbeats the node's agent sends to the control plane (hosts).
    Heartbeat,
}

/// The state of a node as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObservationState {
    /// Accepted by its supervisor, not started yet.
    Pending,
    /// Being started; not yet confirmed running.
    Starting,
    /// Running, and healthy if it is probed.
    Running,
    /// Running, but its probe has failed `failure_threshold` times in a row.
    Unhealthy,
    /// Its process ended; it may be restarted, by its restart policy.
    Exited,
    /// Its supervisor gave up on it (restarts used up, or it could not be started); a human or a
    /// new spec must act.
    Failed,
    /// Its heartbeats stopped for a while; it may come back (set by the control plane).
    Disconnected,
    /// Its heartbeats stopped for long enough that it is counted gone (set by the control plane).
    Lost,
}

/// What an observation strategy saw of a node, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeObservationSpec {
    /// The node observed; the observation is deleted with it.
    pub node: Uuid,
    /// How it was observed; the control plane keeps one observation per node and strategy,
    /// updated in place.
    pub strategy: ObservationStrategy,
    /// What was seen.
    pub state: ObservationState,
    /// When it was seen, by the observer's clock.
    pub observed_at: DateTime<Utc>,
    /// What the observer said, for people (`pid 42 is healthy: 200`); at most 4,096 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096), regex(pattern = super::TEXT_PATTERN))]
    pub message: String,
}

impl Spec for NodeObservationSpec {
    const KIND: Kind = Kind::NodeObservation;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        text("spec.message", &self.message, 4096)
    }

    fn references(&self) -> Vec<Reference> {
        vec![reference("spec.node", Kind::Node, self.node, RingRule::Same, OnDelete::Cascade)]
    }

    fn parent(&self) -> Option<Uuid> {
        Some(self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(spec: &NodeSpec, ring: Ring) -> Option<String> {
        spec.validate(ring).err().map(|e| e.field)
    }

    #[test]
    fn ring_rules_for_nodes() {
        let meta = NodeSpec::default();
        assert_eq!(field(&meta, Ring::META), None);
        let orphan = NodeSpec { strategy: Some(Strategy::Netns), ..NodeSpec::default() };
        assert_eq!(field(&orphan, Ring::INFRASTRUCTURE), Some("spec.parent".into()));
        let host =
            NodeSpec { parent: Some(Uuid::new_v4()), strategy: Some(Strategy::Netns), ..NodeSpec::default() };
        assert_eq!(field(&host, Ring::INFRASTRUCTURE), None);
        assert_eq!(field(&host, Ring::PLATFORM), Some("spec.strategy".into()));
        let app = NodeSpec {
            parent: Some(Uuid::new_v4()),
            strategy: Some(Strategy::UnixUser),
            ..NodeSpec::default()
        };
        assert_eq!(field(&app, Ring::PLATFORM), None);
        let no_strategy = NodeSpec { parent: Some(Uuid::new_v4()), ..NodeSpec::default() };
        assert_eq!(field(&no_strategy, Ring::PLATFORM), Some("spec.strategy".into()));
    }
}
