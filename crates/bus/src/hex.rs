//! Lowercase hex for the few byte strings the bus writes as text (signatures in requests,
//! topics as file names). Decoding never panics on any input.

/// `bytes` as lowercase hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `s` spells in hex (either case), or `None` if it is not hex of whole bytes.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    // Digits only: `from_str_radix` alone would take a sign (`"+f"` is 15).
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(super::decode(&super::encode(&bytes)), Some(bytes));
        }

        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = super::decode(&s);
        }
    }

    #[test]
    fn only_hex_digits_decode() {
        assert_eq!(super::decode("0aFf"), Some(vec![0x0a, 0xff]));
        for bad in ["+f", "-1", "0x", " 1", "g0", "abc"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
