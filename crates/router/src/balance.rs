//! Picking a backend: the power of two choices on outstanding requests, passing over backends
//! that are ejected or were already tried for this request.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pool::Pools;
use crate::table::Backend;

/// What the router knows about one backend address, shared across tables.
#[derive(Debug)]
pub(crate) struct BackendState {
    /// Idle connections, one list per worker.
    pools: Pools,
    /// Requests sent and not yet finished (response body included).
    outstanding: AtomicU64,
    /// Milliseconds since the router's epoch until which the backend is passed over; 0 when it
    /// is not ejected.
    ejected_until: AtomicU64,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState::new(1)
    }
}

impl BackendState {
    pub fn new(workers: usize) -> BackendState {
        BackendState {
            pools: Pools::new(workers),
            outstanding: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn begin(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Ejects until `until_ms`; true if it was not ejected at `now_ms` (so the caller logs once
    /// per ejection, not once per failed request).
    pub fn eject(&self, now_ms: u64, until_ms: u64) -> bool {
        let before = self.ejected_until.swap(until_ms, Ordering::Relaxed);
        before <= now_ms
    }

    /// A backend that answered is healthy again, even if it was picked while ejected.
    pub fn restore(&self) {
        // Read first: the common case (never ejected) then writes nothing to a shared line.
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// The backend to try next, or `None` when every backend has been tried. A single backend is
/// always returned again: retrying it is all that can be done. Ejected backends are picked only
/// when no untried one is left that is not ejected.
pub(crate) fn pick(backends: &[Backend], tried: &[usize], now_ms: u64) -> Option<usize> {
    match backends.len() {
        0 => return None,
        1 => return Some(0),
        _ => {}
    }
    let usable = |i: usize| !tried.contains(&i) && !backends[i].state.is_ejected(now_ms);
    let (a, b) = two_distinct(backends.len());
    match (usable(a), usable(b)) {
        (true, true) => {
            let (oa, ob) = (backends[a].state.outstanding(), backends[b].state.outstanding());
            Some(if ob < oa { b } else { a })
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => {
            // Rare (a retry, or ejections): look at all of them, starting at a random place
            // so that the fallback does not always favour the first backends.
            let n = backends.len();
            let start = below(n);
            let order = (0..n).map(|k| (start + k) % n);
            order.clone().find(|&i| usable(i)).or_else(|| {
                order.filter(|i| !tried.contains(i)).min_by_key(|&i| backends[i].state.outstanding())
            })
        }
    }
}

fn two_distinct(n: usize) -> (usize, usize) {
    let a = below(n);
    // One of the other n - 1, each equally likely.
    let b = (a + 1 + below(n - 1)) % n;
    (a, b)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

/// A uniform number below `n` (for `n` up to 2^32) from a per-thread xorshift64*: the choice
/// only needs to be unpredictable enough to spread load, and must not take a lock.
fn below(n: usize) -> usize {
    let r = RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    (((r >> 32) * (n as u64)) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| {
                let addr: std::net::SocketAddr =
                    format!("127.0.0.1:{}", 1000 + i).parse().expect("an address");
                Backend { addr, state: Arc::new(BackendState::default()) }
            })
            .collect()
    }

    #[test]
    fn spreads_over_idle_backends() {
        let b = backends(4);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[pick(&b, &[], 0).expect("a backend")] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let b = backends(2);
        for _ in 0..5 {
            b[0].state.begin();
        }
        for _ in 0..100 {
            assert_eq!(pick(&b, &[], 0), Some(1));
        }
        let b = backends(3);
        for _ in 0..5 {
            b[0].state.begin();
        }
        // The busy one can only win when both picks are it, which two distinct picks never are.
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[pick(&b, &[], 0).expect("a backend")] += 1;
        }
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[test]
    fn skips_ejected_and_tried_backends_while_others_are_left() {
        let b = backends(3);
        b[1].state.eject(0, 1000);
        for _ in 0..200 {
            assert_ne!(pick(&b, &[], 10), Some(1));
            assert_eq!(pick(&b, &[0], 10), Some(2));
        }
        // Only the ejected one is untried: it is picked anyway.
        assert_eq!(pick(&b, &[0, 2], 10), Some(1));
        // Everything tried: give up.
        assert_eq!(pick(&b, &[0, 1, 2], 10), None);
        // The ejection ends with time.
        assert!(!b[1].state.is_ejected(1000));
    }

    #[test]
    fn one_backend_is_always_retried_and_none_gives_none() {
        let b = backends(1);
        b[0].state.eject(0, 1000);
        assert_eq!(pick(&b, &[0], 1), Some(0));
        assert_eq!(pick(&[], &[], 1), None);
    }

    #[test]
    fn ejection_reports_only_the_first_failure() {
        let s = BackendState::default();
        assert!(s.eject(5, 100));
        assert!(!s.eject(6, 101));
        s.restore();
        assert!(!s.is_ejected(7));
        assert!(s.eject(7, 100));
    }

    #[test]
    fn below_stays_in_range() {
        for n in 1..50 {
            for _ in 0..100 {
                assert!(below(n) < n);
            }
        }
    }
}
