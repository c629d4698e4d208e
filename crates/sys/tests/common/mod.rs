//! Helpers for the privileged tests: the root check, unique names, cleanup guards.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enjin_sys::cgroup::{self, CgroupConfig, Cgroups, Group, Placement};
use enjin_sys::sandbox::Sandbox;

/// True as root; otherwise the test does nothing, saying so (see [`enjin_testkit::root_or_skip`]).
pub fn root_or_skip(test: &str) -> bool {
    enjin_testkit::root_or_skip(&format!("{test} (namespaces, setuid, cgroups)"))
}

pub use enjin_testkit::unique;

/// The host's hierarchy, with test groups under this process's own cgroup (so they stay inside
/// whatever limits the test runner has) in `enjin-sys-test`.
pub fn cgroups() -> Box<dyn Cgroups> {
    let config =
        CgroupConfig { parent: PathBuf::from("enjin-sys-test"), placement: Placement::UnderOwnCgroup };
    let cg = cgroup::detect(&config).expect("detect cgroups");
    eprintln!("using {} at {:?}", cg.version(), cg.parent_dirs());
    cg
}

/// Kills and removes its group on drop, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct GroupGuard(pub Box<dyn Group>);

impl std::ops::Deref for GroupGuard {
    type Target = dyn Group;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill_all(Duration::from_secs(10)) {
            eprintln!("cleanup: {e}");
        }
        if let Err(e) = self.0.delete() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Kills and reaps its sandbox on drop.
#[derive(Debug)]
pub struct SandboxGuard(pub Sandbox);

impl std::ops::Deref for SandboxGuard {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.0
    }
}

impl std::ops::DerefMut for SandboxGuard {
    fn deref_mut(&mut self) -> &mut Sandbox {
        &mut self.0
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait_timeout(Duration::from_secs(10));
        }
    }
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory under /var/tmp (not /tmp: sandboxes get a private /tmp) that other uids can
/// traverse, removed on drop.
pub fn base_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("enjin-sys-test-")
        .tempdir_in("/var/tmp")
        .expect("tempdir in /var/tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod base");
    dir
}

pub fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
