//! What a control plane is told when it starts. Read and validated by the binary (from
//! `enjin.toml`); the defaults are here and in docs/configuration.md.

use std::time::Duration;

use enjin_model::Ring;

pub use crate::limits::{ApiLimits, Rate};
use enjin_model::kinds::{NodeSpec, Resources, Strategy};

/// The configuration of one control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlConfig {
    /// Limits for instances whose spec leaves them out.
    pub instances: InstanceDefaults,
    /// The API server's limits at the door: connections, timeouts, request rate.
    pub api: ApiLimits,
    /// The audit log (`[audit]` in `enjin.toml`).
    pub audit: AuditConfig,
}

/// How the audit log of changes is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records older than this are deleted.
    pub retention: Duration,
}

impl AuditConfig {
    /// 90 days: long enough to answer "who changed this?" about last quarter's incidents,
    /// short enough that a busy cloud's log stays a small part of the store.
    pub const RETENTION: Duration = Duration::from_secs(90 * 86_400);
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention: Self::RETENTION }
    }
}

/// The limits an instance gets for each one its spec leaves out (`[instances]` in
/// `enjin.toml`). `None` is unlimited, which only the operator can choose: a spec has no way
/// to say "unlimited", since an absent limit is filled from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceDefaults {
    /// The memory limit (cgroup `memory.max`), in bytes.
    pub memory_bytes: Option<u64>,
    /// The most processes and threads the instance may have at once (cgroup `pids.max`).
    pub pids: Option<u64>,
    /// Thousandths of a core.
    pub cpu_millis: Option<u64>,
    /// The size of the instance's writable disk, in bytes.
    pub disk_bytes: Option<u64>,
}

impl InstanceDefaults {
    /// The default memory limit: 512 MiB.
    pub const MEMORY_BYTES: u64 = 512 << 20;
    /// The default process limit: 256.
    pub const PIDS: u64 = 256;
    /// The default CPU limit: one core.
    pub const CPU_MILLIS: u64 = 1000;
    /// The default writable disk: 1 GiB.
    pub const DISK_BYTES: u64 = 1 << 30;

    /// Nothing limited unless the spec says so.
    pub const UNLIMITED: InstanceDefaults =
        InstanceDefaults { memory_bytes: None, pids: None, cpu_millis: None, disk_bytes: None };

    /// Fill each limit `resources` leaves out.
    pub fn fill(&self, resources: &mut Resources) {
        resources.memory_bytes = resources.memory_bytes.or(self.memory_bytes);
        resources.pids = resources.pids.or(self.pids);
        resources.cpu_millis = resources.cpu_millis.or(self.cpu_millis);
        resources.disk_bytes = resources.disk_bytes.or(self.disk_bytes);
    }

    /// `resources` with each limit it leaves out filled, for callers that plan with the limits
    /// that will apply (placement by memory).
    pub fn applied(&self, resources: &Resources) -> Resources {
        let mut r = resources.clone();
        self.fill(&mut r);
        r
    }
}

impl Default for InstanceDefaults {
    fn default() -> Self {
        InstanceDefaults {
            memory_bytes: Some(Self::MEMORY_BYTES),
            pids: Some(Self::PIDS),
            cpu_millis: Some(Self::CPU_MILLIS),
            disk_bytes: Some(Self::DISK_BYTES),
        }
    }
}

/// Whether a node is an instance: a ring 2 node its host runs as a UNIX user of its own
/// (strategy `unix-user`) with a command to run. Instances get a uid reserved for them and the
/// default limits.
pub fn is_instance(ring: Ring, spec: &NodeSpec) -> bool {
    ring == Ring::PLATFORM && spec.strategy == Some(Strategy::UnixUser) && spec.run.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_limits_are_filled() {
        let mut r = Resources { memory_bytes: Some(1 << 30), ..Resources::default() };
        InstanceDefaults::default().fill(&mut r);
        assert_eq!(r.memory_bytes, Some(1 << 30));
        assert_eq!(r.pids, Some(256));
        assert_eq!(r.cpu_millis, Some(1000));
        assert_eq!(r.disk_bytes, Some(1 << 30));
        let mut none = Resources::default();
        InstanceDefaults::UNLIMITED.fill(&mut none);
        assert_eq!(none, Resources::default());
    }
}
