//! The pids controller, whose interface (`pids.max`) is the same in v1 and v2.

use std::path::Path;

use crate::cgroup::{ReadError, SetLimitError, read_max, write_value};
use crate::syscalls::Syscalls;

pub(crate) const MAX: &str = "pids.max";

pub(crate) fn set_limit(sys: &dyn Syscalls, dir: &Path, max: Option<u64>) -> Result<(), SetLimitError> {
    if max == Some(0) {
        return Err(SetLimitError::Invalid("a pids limit of 0 would forbid even the first process".into()));
    }
    let value = max.map_or_else(|| "max".to_owned(), |m| m.to_string());
    write_value(sys, &dir.join(MAX), &value)
}

pub(crate) fn limit(sys: &dyn Syscalls, dir: &Path) -> Result<Option<u64>, ReadError> {
    read_max(sys, &dir.join(MAX))
}
