//! What the workspace's tests share, so that each test binary does not carry its own copy: the
//! root check of privileged tests, unique names for what they make on the host, waiting for a
//! condition, a throwaway etcd ([`EtcdServer`]) and a throwaway nats-server ([`NatsServer`]). A
//! dependency of tests only (`[dev-dependencies]`), never of the product, and with no dependency
//! of its own.
//!
//! Privileged tests (namespaces, cgroups, the unix-user sandbox) do nothing without root, saying
//! so; where `ENJIN_REQUIRE_ROOT` is set (CI sets it, and runs as root) such a test fails instead
//! of passing without having run.

#![warn(missing_docs)]

mod daemon;
mod etcd;
mod nats;

use std::sync::atomic::{AtomicU32, Ordering};

pub use etcd::{ETCD_MAX_TXN_OPS, EtcdServer, EtcdTls};
pub use nats::{NATS_MAX_PAYLOAD, NatsServer};
use std::time::{Duration, Instant};

/// Set where privileged tests must run, never skip.
pub const REQUIRE_ROOT: &str = "ENJIN_REQUIRE_ROOT";

/// Whether this process's effective uid is 0.
pub fn is_root() -> bool {
    // `Uid:` real, effective, saved, filesystem.
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
}

/// True as root. Otherwise the test should return at once: this prints why it did nothing
/// (`needs` says what needs root), or panics where [`REQUIRE_ROOT`] is set.
pub fn root_or_skip(needs: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ROOT).is_none(),
        "{needs} needs root, and {REQUIRE_ROOT} is set: privileged tests are never skipped here"
    );
    eprintln!("skipped: {needs} needs root");
    false
}

/// A name no other test of any run on this machine uses at the same time: `prefix`, this
/// process's id and a counter.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Poll `f` every 50 ms until it returns a value, and return it; panic naming `what` once
/// `limit` has passed.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_waits_end() {
        assert_ne!(unique("x"), unique("x"));
        let mut n = 0;
        assert_eq!(
            wait_until("a count of 3", Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn a_wait_past_its_limit_fails_naming_what() {
        wait_until::<()>("nothing", Duration::from_millis(120), || None);
    }
}
