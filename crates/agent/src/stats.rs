//! What the host's instances use, from their cgroups, reported to the parent every
//! [`STATS_EVERY`] on the host's stats topic. Only sandboxed (`unix-user`) children have a
//! cgroup of their own; plain-process children are not reported (their processes could be
//! summed from `/proc`, but a process that double-forks away from its group would escape the
//! count, so a number there would be a guess).

use std::time::Duration;

use chrono::Utc;
use enjin_model::api::{HostStats, InstanceStats};
use enjin_sys::cgroup::Cgroups;
use uuid::Uuid;

/// How often a host reports its instances' use.
pub const STATS_EVERY: Duration = Duration::from_secs(5);

/// The use of each of `ids` that runs in a cgroup of its own with at least one process in it;
/// the others are left out. A group that cannot be read is logged and left out.
pub fn read_stats(cgroups: &dyn Cgroups, ids: &[Uuid]) -> Vec<InstanceStats> {
    let mut out = Vec::new();
    for id in ids {
        let group = match cgroups.existing(&id.to_string()) {
            Ok(Some(g)) => g,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(instance = %id, error = %e, "cannot open the instance's cgroup");
                continue;
            }
        };
        // An empty group is a child between restarts, or one that is stopped: not running.
        if group.pids().map(|p| p.is_empty()).unwrap_or(true) {
            continue;
        }
        match (group.cpu_usage_ns(), group.memory_usage()) {
            (Ok(cpu_usage_ns), Ok(memory_bytes)) => {
                out.push(InstanceStats { instance: *id, cpu_usage_ns, memory_bytes })
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(instance = %id, error = %e, "cannot read the instance's cgroup")
            }
        }
    }
    out
}

/// The report of `node` now.
pub fn host_stats(node: Uuid, cgroups: Option<&dyn Cgroups>, ids: &[Uuid]) -> HostStats {
    let instances = cgroups.map(|c| read_stats(c, ids)).unwrap_or_default();
    HostStats { node, at: Utc::now(), instances }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use enjin_sys::cgroup::v2::V2Cgroups;
    use enjin_sys::syscalls::FakeSyscalls;

    use super::*;

    fn fake() -> (Arc<FakeSyscalls>, V2Cgroups) {
        let fake = Arc::new(FakeSyscalls::new());
        fake.mount(
            "/cg",
            &[
                ("cgroup.procs", ""),
                ("cgroup.subtree_control", ""),
                ("cgroup.controllers", "cpu memory pids"),
                ("memory.current", "0\n"),
                ("memory.max", "max\n"),
                ("cpu.stat", "usage_usec 0\n"),
                ("cpu.max", "max 100000\n"),
                ("pids.max", "max\n"),
            ],
        );
        let cg = V2Cgroups::new(fake.clone(), "/cg".into(), "/cg".into(), "enjin/host".into());
        (fake, cg)
    }

    #[test]
    fn only_running_instances_with_a_cgroup_are_reported() {
        let (fake, cg) = fake();
        let (running, idle, plain) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for id in [running, idle] {
            cg.create(&id.to_string()).expect("create");
        }
        let dir = format!("/cg/enjin/host/{running}");
        fake.spawn_in(Path::new(&dir));
        fake.add_file(format!("{dir}/cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        fake.add_file(format!("{dir}/memory.current"), "1048576\n");

        let stats = read_stats(&cg, &[running, idle, plain]);
        assert_eq!(
            stats,
            vec![InstanceStats { instance: running, cpu_usage_ns: 2_500_000, memory_bytes: 1 << 20 }]
        );

        let node = Uuid::new_v4();
        let report = host_stats(node, Some(&cg), &[running]);
        assert_eq!((report.node, report.instances.len()), (node, 1));
        assert!(host_stats(node, None, &[running]).instances.is_empty(), "no cgroups, nothing to report");
    }

    #[test]
    fn an_unreadable_group_is_left_out() {
        let (fake, cg) = fake();
        let id = Uuid::new_v4();
        cg.create(&id.to_string()).expect("create");
        let dir = format!("/cg/enjin/host/{id}");
        fake.spawn_in(Path::new(&dir));
        fake.add_file(format!("{dir}/cpu.stat"), "garbage");
        assert!(read_stats(&cg, &[id]).is_empty());
    }
}
