//! v1 pids controller: `pids.max`, as in v2 (`crate::cgroup::pids`).

pub(super) use crate::cgroup::pids::{limit, set_limit};

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] =
    &[("cgroup.procs", ""), ("tasks", ""), (crate::cgroup::pids::MAX, "max\n")];
