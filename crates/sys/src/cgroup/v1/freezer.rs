//! v1 freezer controller: `freezer.state`, used by `kill_all` to stop a forking tree in its
//! tracks before signalling it.

use std::path::Path;
use std::time::Duration;

use crate::cgroup::{KillAllError, read_string};
use crate::syscalls::Syscalls;

const STATE: &str = "freezer.state";

/// Asks the kernel to freeze the group and waits up to `timeout` for `FROZEN`. Returns whether
/// it got there (a task stuck in the kernel can keep a group `FREEZING`; the caller then thaws
/// and falls back to the signal loop).
pub(super) fn freeze(sys: &dyn Syscalls, dir: &Path, timeout: Duration) -> Result<bool, KillAllError> {
    let path = dir.join(STATE);
    write(sys, &path, "FROZEN")?;
    let start = sys.now();
    loop {
        if read_string(sys, &path)?.trim() == "FROZEN" {
            return Ok(true);
        }
        if sys.now() - start >= timeout {
            return Ok(false);
        }
        // Re-writing FROZEN retries tasks that were busy on the first pass.
        write(sys, &path, "FROZEN")?;
        sys.sleep(Duration::from_millis(5));
    }
}

pub(super) fn thaw(sys: &dyn Syscalls, dir: &Path) -> Result<(), KillAllError> {
    write(sys, &dir.join(STATE), "THAWED")
}

fn write(sys: &dyn Syscalls, path: &Path, value: &'static str) -> Result<(), KillAllError> {
    sys.write(path, value.as_bytes()).map_err(|source| KillAllError::Write {
        path: path.to_path_buf(),
        value,
        source,
    })
}

#[cfg(test)]
pub(crate) const FAKE_FILES: &[(&str, &str)] = &[("cgroup.procs", ""), ("tasks", ""), (STATE, "THAWED\n")];
