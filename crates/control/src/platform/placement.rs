//! Where new instances go: spread over compartments first (a datacenter lost takes the fewest
//! instances with it), then over hosts, then onto the least loaded host, never past a host's
//! memory capacity; and how the chosen host runs them (its [`Sandbox`]). Pure: the caller reads
//! hosts and their instances from the store.

use std::collections::BTreeMap;

use enjin_model::kinds::Strategy;
use uuid::Uuid;

/// The label on a ring 1 host that says how it isolates the instances it runs: `unix-user` (in
/// the sandbox: each instance its own uid, cgroup and namespaces; the host's agent runs as root)
/// or `none` (plain processes of the user the agent runs as). `enjin up` sets it on the hosts
/// it runs, on creation and again at every start; an operator sets it on a host of their own. A
/// host without it, or with another value, is taken not to sandbox: an instance is never
/// recorded as isolated on a host's silence.
pub const SANDBOX_LABEL: &str = "enjin.dev/sandbox";

/// How a ring 1 host isolates its instances, as its [`SANDBOX_LABEL`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Each instance in the sandbox, as a uid of its own.
    UnixUser,
    /// Plain processes of the host agent's user: no isolation.
    None,
}

impl Sandbox {
    /// What a host's labels say.
    pub fn of(labels: &BTreeMap<String, String>) -> Sandbox {
        match labels.get(SANDBOX_LABEL).map(String::as_str) {
            Some("unix-user") => Sandbox::UnixUser,
            _ => Sandbox::None,
        }
    }

    /// What a host that can (or cannot) sandbox is labelled.
    pub fn from_capability(can_sandbox: bool) -> Sandbox {
        if can_sandbox { Sandbox::UnixUser } else { Sandbox::None }
    }

    /// The value of [`SANDBOX_LABEL`].
    pub fn label_value(self) -> &'static str {
        match self {
            Sandbox::UnixUser => "unix-user",
            Sandbox::None => "none",
        }
    }

    /// The strategy an instance on such a host is recorded with: the one it really runs by.
    pub fn instance_strategy(self) -> Strategy {
        match self {
            Sandbox::UnixUser => Strategy::UnixUser,
            Sandbox::None => Strategy::Process,
        }
    }
}

/// Where a rollout's instances may run; recorded in its task's plan.
pub use enjin_model::kinds::RolloutIsolation as Isolation;

/// How an instance really runs: as its node says, except that `unix-user` on a host that
/// cannot sandbox runs as a plain process (the host's agent falls back, saying so in its log).
pub fn effective_strategy(recorded: Option<Strategy>, host: Sandbox) -> Option<Strategy> {
    match recorded {
        Some(Strategy::UnixUser) => Some(host.instance_strategy()),
        other => other,
    }
}

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    /// The host's node uuid: what [`place`] returns for each instance it puts there.
    pub host: Uuid,
    /// The host's label; the last tie-breaker, so equal hosts are chosen in a stable order.
    pub label: String,
    /// The compartment the host is in (a failure domain): instances spread across compartments
    /// before they spread across hosts. Hosts without one count as one compartment together.
    pub compartment: Option<Uuid>,
    /// Memory the host offers to instances; `None` for no limit.
    pub memory_capacity: Option<u64>,
    /// Memory its instances reserve.
    pub memory_reserved: u64,
    /// Its instances of the process type being placed.
    pub same_process: usize,
    /// All its instances.
    pub total: usize,
    /// How it isolates them.
    pub sandbox: Sandbox,
}

/// Why [`eligible`] or [`place`] found no host. Placement is all or nothing: when it fails,
/// none of the instances asked for is made (the rollout reports it as unavailable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No host was given to place on: none is up.
    #[error("no ring 1 host is up to run instances")]
    NoHosts,
    /// The app requires isolation and none of the hosts up can sandbox.
    #[error("no ring 1 host that is up can sandbox instances, and this app's may run only in a sandbox")]
    NoSandbox,
    /// Every host left would go over its memory capacity with one more instance.
    #[error("no host has {needed} bytes of memory free for instance {index} (of {count})")]
    NoCapacity {
        /// The memory one instance reserves, in bytes.
        needed: u64,
        /// Which instance found no room, counting from 1.
        index: usize,
        /// How many instances were being placed.
        count: usize,
    },
}

/// Keep the hosts a rollout may use.
pub fn eligible(hosts: &mut Vec<HostLoad>, isolation: Isolation) -> Result<(), PlacementError> {
    if isolation == Isolation::Required && !hosts.is_empty() {
        hosts.retain(|h| h.sandbox == Sandbox::UnixUser);
        if hosts.is_empty() {
            return Err(PlacementError::NoSandbox);
        }
    }
    Ok(())
}

/// Choose a host for each of `count` new instances that each reserve `memory` bytes, updating
/// `hosts` as it goes so that the choices spread.
pub fn place(hosts: &mut [HostLoad], count: usize, memory: u64) -> Result<Vec<Uuid>, PlacementError> {
    if hosts.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    let mut chosen = Vec::with_capacity(count);
    for index in 0..count {
        let per_compartment = |c: Option<Uuid>, hosts: &[HostLoad]| -> usize {
            hosts.iter().filter(|h| h.compartment == c).map(|h| h.same_process).sum()
        };
        let best = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                h.memory_capacity.is_none_or(|cap| h.memory_reserved.saturating_add(memory) <= cap)
            })
            .min_by_key(|(_, h)| {
                (per_compartment(h.compartment, hosts), h.same_process, h.total, h.label.clone())
            })
            .map(|(i, _)| i);
        let Some(i) = best else {
            return Err(PlacementError::NoCapacity { needed: memory, index: index + 1, count });
        };
        let h = &mut hosts[i];
        h.same_process += 1;
        h.total += 1;
        h.memory_reserved = h.memory_reserved.saturating_add(memory);
        chosen.push(h.host);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::HashMap;

    use enjin_model::kinds::Strategy;
    use proptest::prelude::*;

    use super::*;

    fn host(n: u8, compartment: Option<u8>, cap: Option<u64>) -> HostLoad {
        HostLoad {
            host: Uuid::from_u128(u128::from(n)),
            label: format!("host-{n}"),
            compartment: compartment.map(|c| Uuid::from_u128(1000 + u128::from(c))),
            memory_capacity: cap,
            memory_reserved: 0,
            same_process: 0,
            total: 0,
            sandbox: Sandbox::None,
        }
    }

    #[test]
    fn spreads_over_compartments_before_hosts() {
        // Two hosts in dc 1, one in dc 2: two instances go one per datacenter.
        let mut hosts = vec![host(1, Some(1), None), host(2, Some(1), None), host(3, Some(2), None)];
        let chosen = place(&mut hosts, 2, 0).unwrap();
        assert!(chosen.contains(&hosts[2].host), "{chosen:?}");
        // A third goes to the dc 1 host that has none yet.
        let third = place(&mut hosts, 1, 0).unwrap()[0];
        assert_eq!(hosts.iter().find(|h| h.host == third).map(|h| h.same_process), Some(1));
    }

    #[test]
    fn respects_capacity_and_says_when_nothing_fits() {
        let mut hosts = vec![host(1, None, Some(300)), host(2, None, Some(100))];
        assert_eq!(place(&mut hosts, 2, 100).unwrap(), vec![hosts[0].host, hosts[1].host]);
        assert_eq!(place(&mut hosts, 1, 100).unwrap(), vec![hosts[0].host]);
        assert!(matches!(place(&mut hosts, 1, 200), Err(PlacementError::NoCapacity { .. })));
        assert_eq!(place(&mut [], 1, 0), Err(PlacementError::NoHosts));
    }

    #[test]
    fn instances_are_recorded_with_the_strategy_their_host_can_run() {
        let labels = |v: &str| BTreeMap::from([(SANDBOX_LABEL.to_string(), v.to_string())]);
        assert_eq!(Sandbox::of(&labels("unix-user")), Sandbox::UnixUser);
        assert_eq!(Sandbox::of(&labels("none")), Sandbox::None);
        // Silence, or a value this version does not know, never counts as a sandbox.
        assert_eq!(Sandbox::of(&BTreeMap::new()), Sandbox::None);
        assert_eq!(Sandbox::of(&labels("gvisor")), Sandbox::None);
        assert_eq!(Sandbox::UnixUser.instance_strategy(), Strategy::UnixUser);
        assert_eq!(Sandbox::None.instance_strategy(), Strategy::Process);
        for can in [true, false] {
            let s = Sandbox::from_capability(can);
            assert_eq!(Sandbox::of(&labels(s.label_value())), s, "the label reads back");
        }
        // A unix-user record on a host without a sandbox runs as a plain process.
        assert_eq!(effective_strategy(Some(Strategy::UnixUser), Sandbox::None), Some(Strategy::Process));
        assert_eq!(effective_strategy(Some(Strategy::UnixUser), Sandbox::UnixUser), Some(Strategy::UnixUser));
        assert_eq!(effective_strategy(Some(Strategy::Process), Sandbox::UnixUser), Some(Strategy::Process));
    }

    #[test]
    fn a_tenant_rollout_uses_only_sandboxing_hosts() {
        let sandboxing = HostLoad { sandbox: Sandbox::UnixUser, ..host(2, None, None) };
        let mut hosts = vec![host(1, None, None), sandboxing.clone()];
        eligible(&mut hosts, Isolation::Optional).unwrap();
        assert_eq!(hosts.len(), 2, "the operator's apps go anywhere");
        eligible(&mut hosts, Isolation::Required).unwrap();
        assert_eq!(hosts, vec![sandboxing]);
        let mut plain = vec![host(1, None, None)];
        assert_eq!(eligible(&mut plain, Isolation::Required), Err(PlacementError::NoSandbox));
        // No host at all stays the placement's own answer.
        let mut none = Vec::new();
        eligible(&mut none, Isolation::Required).unwrap();
        assert_eq!(place(&mut none, 1, 0), Err(PlacementError::NoHosts));
    }

    proptest! {
        /// Without capacity limits, instances on any two hosts differ by at most one, and the
        /// same holds for compartments whose hosts are equally many.
        #[test]
        fn placement_is_balanced(hosts in 1usize..6, count in 0usize..40) {
            let mut hs: Vec<HostLoad> = (0..hosts).map(|i| host(i as u8, None, None)).collect();
            let chosen = place(&mut hs, count, 1).unwrap();
            prop_assert_eq!(chosen.len(), count);
            let mut per: HashMap<Uuid, usize> = HashMap::new();
            for c in &chosen { *per.entry(*c).or_default() += 1; }
            let max = hs.iter().map(|h| per.get(&h.host).copied().unwrap_or(0)).max().unwrap_or(0);
            let min = hs.iter().map(|h| per.get(&h.host).copied().unwrap_or(0)).min().unwrap_or(0);
            prop_assert!(max - min <= 1);
        }

        /// No host is ever given more than its capacity.
        #[test]
        fn capacity_is_never_exceeded(caps in proptest::collection::vec(0u64..10, 1..5), count in 0usize..30) {
            let mut hs: Vec<HostLoad> =
                caps.iter().enumerate().map(|(i, c)| host(i as u8, None, Some(*c))).collect();
            let fits: u64 = caps.iter().sum();
            match place(&mut hs, count, 1) {
                Ok(chosen) => prop_assert!(chosen.len() as u64 <= fits),
                Err(_) => prop_assert!(count as u64 > fits),
            }
            for h in &hs {
                prop_assert!(h.memory_capacity.is_none_or(|c| h.memory_reserved <= c));
            }
        }
    }
}
