//! Port allocation for ring 2 instances, a ring 1 service: each port is held by at most one
//! node, through one store key per port (`/ports/<port>`) written in the same transaction as
//! the node — so two instances never get one port, even from two servers at once, and a port
//! is released when its node goes. Ports are unique cloud-wide rather than per host, so that
//! hosts sharing an address (plain-process hosts on one machine) cannot collide either.

use std::collections::HashSet;
use std::ops::RangeInclusive;

/// The prefix of every port key: a range read of it lists the ports taken.
pub const PREFIX: &str = "/ports/";

/// The ports instances are given.
pub const RANGE: RangeInclusive<u16> = 20000..=29999;

/// The store key that holds `port` (`/ports/<port>`): it exists exactly while a node has it.
pub fn key(port: u16) -> String {
    format!("{PREFIX}{port}")
}

/// The port a key holds.
pub fn port_of(key: &str) -> Option<u16> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// The first port of [`RANGE`] not in `used`.
pub fn first_free(used: &HashSet<u16>) -> Option<u16> {
    RANGE.into_iter().find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_the_first_free_port_skips_used_ones() {
        assert_eq!(port_of(&key(20001)), Some(20001));
        assert_eq!(port_of("/ports/x"), None);
        let used: HashSet<u16> = [20000, 20001, 20003].into();
        assert_eq!(first_free(&used), Some(20002));
        let all: HashSet<u16> = RANGE.collect();
        assert_eq!(first_free(&all), None);
    }
}
