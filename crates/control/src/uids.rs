//! Uid allocation for ring 2 instances, a ring 1 service beside port allocation (`ports.rs`):
//! an instance (a ring 2 node with strategy `unix-user` and a `run`) runs as a UNIX uid of
//! its own, and each uid is held by at most one node, through one store key per uid
//! (`/uids/<uid>`, holding the node's uuid) written in the node's create transaction with a
//! compare that the key is absent and deleted with the node. So two tenants never get one uid,
//! even from two servers at once. Uids are unique cloud-wide, not per host: hosts that share a
//! machine (network-namespace hosts under one `enjin up`) share its uid space too.
//!
//! Uids are handed out in increasing order from a counter, `/uids/next` (the next uid to try),
//! advanced in the same transaction under a compare on its mod revision, so two creates that
//! read the same counter cannot both commit. At the end of [`RANGE`] it wraps around, skipping
//! uids still held. A released uid is therefore handed out again only after every other uid of
//! the range has been handed out once — 90 million instance creations later.
//!
//! That is what keeps a uid from being given out while files owned by its previous holder
//! remain. An instance's files live only on its own disk image, which its host deletes when it
//! stops the instance; the host does that shortly after the node is deleted (deleting the node
//! is what releases the uid, and tells the host to stop it). The window between the release
//! and the image's removal is seconds to minutes, which a wrap of the whole range cannot fit
//! into. A lowest-free-first allocator (like ports') would hand the uid straight to the next
//! create, while the old image, and perhaps the old process in its stop grace, still exist.
//!
//! Why [`RANGE`] is `10_000_000..=99_999_999`:
//! - above every uid a distribution gives to people or services (below 60 000 by the
//!   `login.defs` defaults), systemd's dynamic and homed users (61 184–65 519, 60 001–60 513),
//!   `nobody` (65 534) and 65 535 (`(uid_t)-1` of 16-bit interfaces);
//! - above the subordinate ids `useradd` writes to `/etc/subuid` and `/etc/subgid` for the
//!   first 151 users (from 100 000, 65 536 each), so rootless containers of the host's own
//!   users do not map onto an instance's uid;
//! - far below 2³¹, where software that keeps a uid in a signed 32-bit integer breaks;
//! - 90 million uids, so the counter wraps rarely, if ever.
//!
//! It does overlap the pool `systemd-nspawn --private-users=pick` draws from
//! (524 288–1 879 048 191): a machine that runs enjin instances should not also run user-
//! namespaced nspawn containers.

use std::collections::HashSet;
use std::ops::RangeInclusive;

/// The prefix of every uid key, and of the counter [`NEXT`]: a range read of it lists the uids
/// taken (skip the counter with [`uid_of`]).
pub const PREFIX: &str = "/uids/";

/// The next uid to try, as decimal text.
pub const NEXT: &str = "/uids/next";

/// The uids instances are given (see the module documentation for why these).
pub const RANGE: RangeInclusive<u32> = 10_000_000..=99_999_999;

/// The store key that holds `uid` (`/uids/<uid>`), whose value is the instance's uuid: it
/// exists exactly while a node holds the uid.
pub fn key(uid: u32) -> String {
    format!("{PREFIX}{uid}")
}

/// The uid a key holds (`None` for the counter and anything else).
pub fn uid_of(key: &str) -> Option<u32> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// The counter's value; `None` when it is unreadable (then allocation starts at the range's
/// start, which is correct, only earlier than it might be).
pub fn parse_next(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The uid to try after `uid`: the next one, or the range's start after its end.
pub fn after(uid: u32, range: &RangeInclusive<u32>) -> u32 {
    if uid >= *range.end() || uid < *range.start() { *range.start() } else { uid + 1 }
}

/// The first uid of `range` not in `held`, looking from `next` (or from the range's start when
/// `next` is outside it) to the range's end and then from its start; `None` when every uid of
/// the range is held.
pub fn first_free(next: u32, held: &HashSet<u32>, range: &RangeInclusive<u32>) -> Option<u32> {
    let (lo, hi) = (*range.start(), *range.end());
    if lo > hi {
        return None;
    }
    // Checked first so that a full range is not walked uid by uid; otherwise the walk stops
    // after at most `held.len() + 1` steps.
    let size = u64::from(hi - lo) + 1;
    if held.iter().filter(|u| range.contains(u)).count() as u64 >= size {
        return None;
    }
    let start = if range.contains(&next) { next } else { lo };
    (start..=hi).chain(lo..start).find(|u| !held.contains(u))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keys_round_trip_and_the_counter_is_not_a_uid() {
        assert_eq!(uid_of(&key(10_000_001)), Some(10_000_001));
        assert_eq!(uid_of(NEXT), None);
        assert_eq!(uid_of("/uids/x"), None);
        assert_eq!(parse_next(b"10000002"), Some(10_000_002));
        assert_eq!(parse_next(b"?"), None);
        assert_eq!(after(10_000_000, &RANGE), 10_000_001);
        assert_eq!(after(99_999_999, &RANGE), 10_000_000);
        assert_eq!(after(5, &RANGE), 10_000_000);
    }

    #[test]
    fn the_range_stays_clear_of_system_and_subordinate_ids() {
        let (lo, hi) = (*RANGE.start(), *RANGE.end());
        // nobody, the 16-bit -1, and the subuid blocks of the first 151 users.
        assert!(lo > 65_535);
        assert!(lo >= 100_000 + 151 * 65_536);
        assert!(hi < 1 << 31);
    }

    #[test]
    fn wraps_around_and_skips_held_uids() {
        let range = 10..=14;
        let held: HashSet<u32> = [13, 14, 10].into();
        assert_eq!(first_free(13, &held, &range), Some(11));
        assert_eq!(first_free(12, &held, &range), Some(12));
        assert_eq!(first_free(99, &held, &range), Some(11));
        let all: HashSet<u32> = range.clone().collect();
        assert_eq!(first_free(12, &all, &range), None);
        // A full real range is answered without walking it.
        assert_eq!(first_free(*RANGE.start(), &HashSet::new(), &RANGE), Some(*RANGE.start()));
    }

    /// The uids from `start` to the range's end and then from its start, each once.
    fn cyclic(start: u32, range: &RangeInclusive<u32>) -> Vec<u32> {
        let start = if range.contains(&start) { start } else { *range.start() };
        (start..=*range.end()).chain(*range.start()..start).collect()
    }

    proptest! {
        #[test]
        fn first_free_is_the_first_unheld_uid_from_next(
            lo in 0u32..50,
            len in 1u32..40,
            next in 0u32..100,
            picks in proptest::collection::vec(0u32..100, 0..80),
        ) {
            let range = lo..=lo + len - 1;
            let held: HashSet<u32> = picks.into_iter().collect();
            let order = cyclic(next, &range);
            match first_free(next, &held, &range) {
                Some(uid) => {
                    prop_assert!(range.contains(&uid));
                    prop_assert!(!held.contains(&uid));
                    let skipped: Vec<u32> = order.iter().copied().take_while(|u| *u != uid).collect();
                    prop_assert!(skipped.iter().all(|u| held.contains(u)), "skipped a free uid before {}", uid);
                }
                None => prop_assert!(range.clone().all(|u| held.contains(&u))),
            }
        }

        #[test]
        fn handing_out_in_turn_uses_every_uid_before_reusing_one(
            lo in 0u32..50,
            len in 1u32..20,
            released in proptest::collection::vec(0u32..20, 0..10),
        ) {
            // Allocate the whole range, release some, then allocate as many again: the
            // released ones come back only in counter order, never before the range's end.
            let range = lo..=lo + len - 1;
            let mut held = HashSet::new();
            let mut next = lo;
            for _ in 0..len {
                let uid = first_free(next, &held, &range).ok_or_else(|| TestCaseError::fail("range full early"))?;
                prop_assert_eq!(uid, next);
                held.insert(uid);
                next = after(uid, &range);
            }
            prop_assert_eq!(first_free(next, &held, &range), None);
            for r in &released {
                held.remove(&(lo + r % len));
            }
            let mut again = Vec::new();
            while let Some(uid) = first_free(next, &held, &range) {
                held.insert(uid);
                again.push(uid);
                next = after(uid, &range);
            }
            let mut expected: Vec<u32> = released.iter().map(|r| lo + r % len).collect();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(again, expected);
        }
    }
}
