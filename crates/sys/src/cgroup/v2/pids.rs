//! v2 pids controller: `pids.max`, as in v1 (`crate::cgroup::pids`).

pub(super) use crate::cgroup::pids::{limit, set_limit};

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] = &[(crate::cgroup::pids::MAX, "max\n")];
