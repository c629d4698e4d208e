//! v2 pids controller: `pids.max`.

use std::path::Path;

use crate::cgroup::{ReadError, SetLimitError, read_max, write_value};
use crate::syscalls::Syscalls;

const MAX: &str = "pids.max";

pub(super) fn set_limit(sys: &dyn Syscalls, dir: &Path, max: Option<u64>) -> Result<(), SetLimitError> {
    if max == Some(0) {
        return Err(SetLimitError::Invalid("a pids limit of 0 would forbid even the first process".into()));
    }
    let value = max.map_or_else(|| "max".to_owned(), |m| m.to_string());
    write_value(sys, &dir.join(MAX), &value)
}

pub(super) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    read_max(sys, &dir.join(MAX))
}

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] = &[(MAX, "max\n")];
