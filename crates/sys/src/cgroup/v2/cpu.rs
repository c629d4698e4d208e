//! v2 cpu controller: `cpu.max` and `usage_usec` in `cpu.stat`.

use std::path::Path;

use crate::cgroup::{
    CPU_PERIOD_US, ReadError, SetLimitError, cpu_quota_us, parse_error, read_keyed, read_string, write_value,
};
use crate::syscalls::Syscalls;

const MAX: &str = "cpu.max";
const STAT: &str = "cpu.stat";

pub(super) fn set_limit(
    sys: &dyn Syscalls,
    dir: &Path,
    millicores: Option<u64>,
) -> Result<(), SetLimitError> {
    let value = match millicores {
        Some(m) => format!("{} {}", cpu_quota_us(m)?, CPU_PERIOD_US),
        None => format!("max {}", CPU_PERIOD_US),
    };
    write_value(sys, &dir.join(MAX), &value)
}

pub(super) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    let path = dir.join(MAX);
    let s = read_string(sys, &path)?;
    let mut it = s.split_whitespace();
    let (Some(quota), Some(period)) = (it.next(), it.next()) else {
        return Err(parse_error(&path, format!("{:?} is not \"<quota> <period>\"", s.trim())));
    };
    if quota == "max" {
        return Ok(None);
    }
    let bad = || parse_error(&path, format!("{:?} is not \"<quota> <period>\"", s.trim()));
    let quota: u64 = quota.parse().map_err(|_| bad())?;
    let period: u64 = period.parse().map_err(|_| bad())?;
    Ok(Some(quota * 1000 / period.max(1)))
}

pub(super) fn usage_ns(sys: &dyn Syscalls, dir: &Path) -> Result<u64, ReadError> {
    Ok(read_keyed(sys, &dir.join(STAT), "usage_usec")?.saturating_mul(1000))
}

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] =
    &[(MAX, "max 100000\n"), (STAT, "usage_usec 0\nuser_usec 0\nsystem_usec 0\n")];
