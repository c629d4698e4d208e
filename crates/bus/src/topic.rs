//! Topic names and subscription patterns, NATS-style: tokens separated by `.`; in a pattern `*`
//! matches exactly one token and `>` (last token only) matches one or more trailing tokens. These
//! rules are part of the wire protocol: the hub, the client and any later transport (NATS uses
//! the same subject syntax) validate with the functions here, so a name accepted by one is
//! accepted by all. Nothing here allocates or panics on arbitrary input.

/// Longest topic or pattern, in bytes. Short enough to keep frame headers small, long enough for
/// `state.<ring>.<compartment>.<instance>`-style names.
pub const MAX_TOPIC_LEN: usize = 256;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name has no bytes at all.
    #[error("topic is empty")]
    Empty,
    /// The name is over [`MAX_TOPIC_LEN`] bytes.
    #[error("topic {topic:?} is {len} bytes long, the limit is {MAX_TOPIC_LEN}")]
    TooLong {
        /// The name's first 64 characters only, since it may come from the network.
        topic: String,
        /// Its full length in bytes.
        len: usize,
    },
    /// The name starts or ends with a dot, or has two in a row.
    #[error("topic {topic:?} has an empty token")]
    EmptyToken {
        /// The name as given.
        topic: String,
    },
    /// The name contains whitespace or a control character.
    #[error("topic {topic:?} contains whitespace or a control character")]
    InvalidCharacter {
        /// The name as given.
        topic: String,
    },
    /// A concrete topic (to publish to) contains `*` or `>`.
    #[error("topic {topic:?} contains a wildcard; only subscription patterns may")]
    Wildcard {
        /// The topic as given.
        topic: String,
    },
    /// A pattern has `*` or `>` inside a token (`a*`), or `>` before the last token.
    #[error(
        "pattern {pattern:?} uses a wildcard wrongly: `*` and `>` must be whole tokens and `>` must be last"
    )]
    MisplacedWildcard {
        /// The pattern as given.
        pattern: String,
    },
}

/// Check a concrete topic (something one publishes to): no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.bytes().any(|b| b == b'*' || b == b'>') {
        return Err(TopicError::Wildcard { topic: topic.to_owned() });
    }
    Ok(())
}

/// Check a subscription pattern: a topic in which whole tokens may be `*`, and the last may be `>`.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check_common(pattern)?;
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        let is_last = tokens.peek().is_none();
        let wildcard_ok = match token {
            "*" => true,
            ">" => is_last,
            // `a*b` is a literal in NATS; we refuse it rather than let it mean two things.
            other => !other.bytes().any(|b| b == b'*' || b == b'>'),
        };
        if !wildcard_ok {
            return Err(TopicError::MisplacedWildcard { pattern: pattern.to_owned() });
        }
    }
    Ok(())
}

fn check_common(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            // Cap what we echo back: the name may come from the network.
            topic: name.chars().take(64).collect(),
            len: name.len(),
        });
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::InvalidCharacter { topic: name.to_owned() });
    }
    if name.split('.').any(str::is_empty) {
        return Err(TopicError::EmptyToken { topic: name.to_owned() });
    }
    Ok(())
}

/// Whether `topic` matches `pattern`. Both are assumed valid; on invalid input the answer is
/// simply `false` or a literal comparison, never a panic.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for p in pattern.split('.') {
        match p {
            ">" => return topic_tokens.next().is_some(),
            "*" => {
                if topic_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_and_invalid_topics() {
        for ok in ["a", "state.node.1", "_inbox.00ff", "ring-1.x_y"] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
            assert_eq!(validate_pattern(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(matches!(validate_topic("a..b"), Err(TopicError::EmptyToken { .. })));
        assert!(matches!(validate_topic(".a"), Err(TopicError::EmptyToken { .. })));
        assert!(matches!(validate_topic("a."), Err(TopicError::EmptyToken { .. })));
        assert!(matches!(validate_topic("a b"), Err(TopicError::InvalidCharacter { .. })));
        assert!(matches!(validate_topic("a.*"), Err(TopicError::Wildcard { .. })));
        assert!(matches!(validate_topic(&"a".repeat(MAX_TOPIC_LEN + 1)), Err(TopicError::TooLong { .. })));
        assert_eq!(validate_topic(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
    }

    #[test]
    fn valid_and_invalid_patterns() {
        for ok in ["*", ">", "a.*", "a.>", "*.b.>", "*.*"] {
            assert_eq!(validate_pattern(ok), Ok(()), "{ok}");
        }
        for bad in ["a.>.b", ">.a", "a*", "a.b>", "a.**"] {
            assert!(matches!(validate_pattern(bad), Err(TopicError::MisplacedWildcard { .. })), "{bad}");
        }
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("*.b.>", "x.b.y.z"));
        assert!(!matches("*.b.>", "x.c.y"));
    }

    fn token() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,8}"
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>(), p in any::<String>()) {
            let _ = validate_topic(&s);
            let _ = validate_pattern(&s);
            let _ = matches(&p, &s);
        }

        #[test]
        fn topic_matches_itself_and_its_wildcards(tokens in prop::collection::vec(token(), 1..6), i in any::<prop::sample::Index>()) {
            let topic = tokens.join(".");
            prop_assert!(validate_topic(&topic).is_ok());
            prop_assert!(matches(&topic, &topic));
            // Replacing any one token with `*` still matches.
            let k = i.index(tokens.len());
            let mut star = tokens.clone();
            star[k] = "*".into();
            prop_assert!(matches(&star.join("."), &topic));
            // A `>` after any proper prefix matches.
            if k + 1 < tokens.len() || k > 0 {
                let cut = if k + 1 < tokens.len() { k + 1 } else { k };
                let mut full = tokens[..cut].to_vec();
                full.push(">".into());
                prop_assert!(matches(&full.join("."), &topic));
            }
            // A `>` never matches the prefix itself.
            let mut longer = tokens.clone();
            longer.push(">".into());
            prop_assert!(!matches(&longer.join("."), &topic));
        }
    }
}
