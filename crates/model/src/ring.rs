use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A ring: 0 (meta: the machines and the control plane), 1 (infrastructure: hosts) or
/// 2 (platform: app instances). A ring-N node is supervised by a ring-(N-1) node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Ring(#[schemars(range(min = 0, max = 2))] u8);

/// A ring number outside 0..=2, as given (-1 when the text given to `FromStr` was not a number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ring {0} does not exist (rings are 0 meta, 1 infrastructure, 2 platform)")]
pub struct RingError(pub i64);

impl Ring {
    /// Ring 0: the machines and the control plane, supervised by the operator.
    pub const META: Ring = Ring(0);
    /// Ring 1: infrastructure (the hosts), supervised by ring-0 nodes.
    pub const INFRASTRUCTURE: Ring = Ring(1);
    /// Ring 2: the platform (app instances), supervised by ring-1 hosts.
    pub const PLATFORM: Ring = Ring(2);
    /// Every ring, from the metal up.
    pub const ALL: [Ring; 3] = [Ring::META, Ring::INFRASTRUCTURE, Ring::PLATFORM];

    /// Checks the number: only 0, 1 and 2 are rings. Deserializing and parsing go through here.
    pub fn new(n: i64) -> Result<Ring, RingError> {
        match n {
            0..=2 => Ok(Ring(n as u8)),
            _ => Err(RingError(n)),
        }
    }

    /// The ring's number, 0 to 2.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The ring that supervises this one, `None` for ring 0 (supervised by the operator).
    pub fn parent(self) -> Option<Ring> {
        self.0.checked_sub(1).map(Ring)
    }

    /// The ring's name in the seed's vocabulary (`meta`, `infrastructure`, `platform`), for messages
    /// and help text; `Display` prints the number.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "meta",
            1 => "infrastructure",
            _ => "platform",
        }
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        Ring::new(n).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Ring {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: i64 = s.trim().parse().map_err(|_| RingError(-1))?;
        Ring::new(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_zero_to_two() {
        assert!(Ring::new(3).is_err());
        assert!(Ring::new(-1).is_err());
        assert_eq!(Ring::new(2).map(Ring::parent), Ok(Some(Ring::INFRASTRUCTURE)));
        assert_eq!(Ring::META.parent(), None);
        assert!(serde_json::from_str::<Ring>("7").is_err());
        assert_eq!(serde_json::from_str::<Ring>("1").ok(), Some(Ring::INFRASTRUCTURE));
    }
}
