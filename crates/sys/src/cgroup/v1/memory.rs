//! v1 memory controller: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, usage and the
//! OOM-kill count.

use std::path::Path;

use crate::cgroup::{ReadError, SetLimitError, parse_error, read_string, read_u64, write_value};
use crate::syscalls::Syscalls;

const LIMIT: &str = "memory.limit_in_bytes";
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
const USAGE: &str = "memory.usage_in_bytes";
const OOM_CONTROL: &str = "memory.oom_control";

/// The kernel reports "unlimited" as `PAGE_COUNTER_MAX` pages (about 2^63 bytes, rounded to a
/// page); anything this large is unlimited.
const UNLIMITED_FLOOR: u64 = 1 << 62;

/// Sets the memory limit and, when the kernel accounts swap, the memory+swap limit to the same
/// value, so that the limit caps RAM and swap together. The kernel insists memsw ≥ memory at all
/// times, so memsw goes first when raising and last when lowering.
pub(super) fn set_limit(sys: &dyn Syscalls, dir: &Path, bytes: Option<u64>) -> Result<(), SetLimitError> {
    let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
    let limit = dir.join(LIMIT);
    let memsw = dir.join(MEMSW_LIMIT);
    if !sys.exists(&memsw) {
        return write_value(sys, &limit, &value);
    }
    match write_value(sys, &memsw, &value) {
        Ok(()) => write_value(sys, &limit, &value),
        // Lowering below the current memory limit: memory first.
        Err(SetLimitError::Write { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            write_value(sys, &limit, &value)?;
            write_value(sys, &memsw, &value)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    let v = read_u64(sys, &dir.join(LIMIT))?;
    Ok((v < UNLIMITED_FLOOR).then_some(v))
}

pub(super) fn usage(sys: &dyn Syscalls, dir: &Path) -> Result<u64, ReadError> {
    read_u64(sys, &dir.join(USAGE))
}

/// `oom_kill` in `memory.oom_control` (kernel ≥ 4.13).
pub(super) fn oom_kills(sys: &dyn Syscalls, dir: &Path) -> Result<u64, ReadError> {
    let path = dir.join(OOM_CONTROL);
    let s = read_string(sys, &path)?;
    crate::cgroup::keyed(&s, "oom_kill")
        .ok_or_else(|| parse_error(&path, "no oom_kill field (the kernel predates 4.13)"))
}

/// Files a fresh v1 memory group has, for fakes.
#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("tasks", ""),
    (LIMIT, "9223372036854771712\n"),
    (MEMSW_LIMIT, "9223372036854771712\n"),
    (USAGE, "0\n"),
    (OOM_CONTROL, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
];
