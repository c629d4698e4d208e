//! v2 memory controller: `memory.max`, `memory.swap.max`, `memory.current` and the OOM-kill
//! count in `memory.events`.

use std::path::Path;

use crate::cgroup::{ReadError, SetLimitError, read_keyed, read_max, read_u64, write_value};
use crate::syscalls::Syscalls;

const MAX: &str = "memory.max";
const SWAP_MAX: &str = "memory.swap.max";
const CURRENT: &str = "memory.current";
const EVENTS: &str = "memory.events";

/// Sets `memory.max` and, when the kernel has swap accounting, `memory.swap.max` to 0 (or back
/// to `max` when unlimiting), so the limit caps RAM and swap together like v1's memsw.
pub(super) fn set_limit(sys: &dyn Syscalls, dir: &Path, bytes: Option<u64>) -> Result<(), SetLimitError> {
    let value = bytes.map_or_else(|| "max".to_owned(), |b| b.to_string());
    write_value(sys, &dir.join(MAX), &value)?;
    let swap = dir.join(SWAP_MAX);
    if sys.exists(&swap) {
        write_value(sys, &swap, if bytes.is_some() { "0" } else { "max" })?;
    }
    Ok(())
}

pub(super) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    read_max(sys, &dir.join(MAX))
}

pub(super) fn usage(sys: &dyn Syscalls, dir: &Path) -> Result<u64, ReadError> {
    read_u64(sys, &dir.join(CURRENT))
}

pub(super) fn oom_kills(sys: &dyn Syscalls, dir: &Path) -> Result<u64, ReadError> {
    read_keyed(sys, &dir.join(EVENTS), "oom_kill")
}

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] = &[
    (MAX, "max\n"),
    (SWAP_MAX, "max\n"),
    (CURRENT, "0\n"),
    (EVENTS, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"),
];
