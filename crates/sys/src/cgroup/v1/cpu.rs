//! v1 cpu and cpuacct controllers: CFS bandwidth (`cpu.cfs_period_us`, `cpu.cfs_quota_us`) and
//! usage (`cpuacct.usage`).

use std::path::Path;

use crate::cgroup::{CPU_PERIOD_US, ReadError, SetLimitError, cpu_quota_us, read_u64, write_value};
use crate::syscalls::Syscalls;

const PERIOD: &str = "cpu.cfs_period_us";
const QUOTA: &str = "cpu.cfs_quota_us";
const USAGE: &str = "cpuacct.usage";

pub(super) fn set_limit(
    sys: &dyn Syscalls,
    dir: &Path,
    millicores: Option<u64>,
) -> Result<(), SetLimitError> {
    let quota = match millicores {
        Some(m) => cpu_quota_us(m)?.to_string(),
        None => "-1".to_owned(),
    };
    write_value(sys, &dir.join(PERIOD), &CPU_PERIOD_US.to_string())?;
    write_value(sys, &dir.join(QUOTA), &quota)
}

pub(super) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    let quota_path = dir.join(QUOTA);
    let quota = crate::cgroup::read_string(sys, &quota_path)?;
    let quota: i64 = quota.trim().parse().map_err(|_| {
        crate::cgroup::parse_error(&quota_path, format!("{:?} is not a number", quota.trim()))
    })?;
    let Ok(quota) = u64::try_from(quota) else {
        return Ok(None);
    };
    let period = read_u64(sys, &dir.join(PERIOD))?.max(1);
    Ok(Some(quota * 1000 / period))
}

pub(super) fn usage_ns(sys: &dyn Syscalls, cpuacct_dir: &Path) -> Result<u64, ReadError> {
    read_u64(sys, &cpuacct_dir.join(USAGE))
}

#[cfg(test)]
pub(crate) const FAKE_CPU_FILES: &[(&str, &str)] =
    &[("cgroup.procs", ""), ("tasks", ""), (PERIOD, "100000\n"), (QUOTA, "-1\n")];

#[cfg(test)]
pub(crate) const FAKE_CPUACCT_FILES: &[(&str, &str)] = &[("cgroup.procs", ""), ("tasks", ""), (USAGE, "0\n")];
