use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

use crate::{Kind, Ring};

/// A write refused because of one field, named as a JSON path (`spec.parent`, `label`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON path of the refused field, from the object's top (`spec.address`, `labels.tier`).
    pub field: String,
    /// Why it was refused, for the user who sent the write; displayed after the field as
    /// `field: message`.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field`; `message` is rendered once, here.
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        FieldError { field: field.into(), message: message.to_string() }
    }
}

/// How the ring of a referenced object must relate to the ring of the referring one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingRule {
    /// Same ring ("a node's tiers and compartment belong to its ring").
    Same,
    /// Exactly one ring below: the supervisor ("a ring-N node's parent is a ring-(N-1) node").
    Parent,
    /// The same ring or one closer to the metal (a rack of ring 0 may contain a ring-1 zone).
    SameOrLower,
    /// No constraint (an account or role may be referred to from any ring).
    Any,
}

impl RingRule {
    /// Whether a referrer in ring `referrer` may point at an object in ring `target`.
    pub fn allows(self, referrer: Ring, target: Ring) -> bool {
        match self {
            RingRule::Same => referrer == target,
            RingRule::Parent => referrer.parent() == Some(target),
            RingRule::SameOrLower => target <= referrer,
            RingRule::Any => true,
        }
    }

    /// The rule as the end of an error message ("must be in ring 1 …"), for a referrer in ring
    /// `referrer`; the caller writes the referenced object before it.
    pub fn describe(self, referrer: Ring) -> String {
        match self {
            RingRule::Same => format!("must be in ring {referrer}"),
            RingRule::Parent => match referrer.parent() {
                Some(p) => format!("must be in ring {p} (the ring that supervises ring {referrer})"),
                None => "ring 0 objects have no supervisor".to_string(),
            },
            RingRule::SameOrLower => format!("must be in ring {referrer} or below"),
            RingRule::Any => "may be in any ring".to_string(),
        }
    }
}

/// What deleting a referenced object does to the object that refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// The delete is refused while this reference exists.
    Restrict,
    /// The referring object is deleted with the target (observations of a deleted node).
    Cascade,
}

/// One reference from an object to another, checked on every write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The JSON path of the referring field, for error messages (`spec.tiers[2]`).
    pub field: String,
    /// The kind the referenced object must have.
    pub kind: Kind,
    /// The referenced object's uuid; the write is refused if no object of `kind` has it.
    pub uuid: Uuid,
    /// How the referenced object's ring must relate to the referrer's ring.
    pub ring: RingRule,
    /// What deleting the referenced object does to the referrer.
    pub on_delete: OnDelete,
}

/// A referenced object as resolved by the control plane, for checks that need more than its
/// existence (an interface's address must lie inside its network's range).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The target's kind, as the reference asked for it.
    pub kind: Kind,
    /// The ring the target lives in.
    pub ring: Ring,
    /// The target's label, `None` if it has none.
    pub label: Option<String>,
    /// The target's spec as stored, undecoded: the check reads the fields it needs from it.
    pub spec: serde_json::Value,
}

const LABEL_MAX: usize = 63;

/// [`validate_label`] as a JSON Schema pattern (ECMA-262 and Python `re` alike), for the
/// API document; with `maxLength` 63.
pub const LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$";

/// A selector label key as [`validate_labels`] accepts it: labels joined by `/`; with
/// `maxLength` 126.
pub const LABEL_KEY_PATTERN: &str =
    "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(/[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?)*$";

/// A selector label value: no control characters (Unicode category Cc, which is what
/// `char::is_control` tests); with `maxLength` 63 (characters).
pub const LABEL_VALUE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The schema of a label (an object's name).
pub fn label_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": LABEL_MAX,
        "pattern": LABEL_PATTERN,
    })
}

/// The schema of an optional label: absent or `null` both mean none.
pub fn optional_label_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = label_schema(g);
    s.insert("type".into(), serde_json::json!(["string", "null"]));
    s
}

/// The schema of selector labels, as [`validate_labels`] checks them.
pub fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "propertyNames": {"maxLength": 2 * LABEL_MAX, "pattern": LABEL_KEY_PATTERN},
        "additionalProperties": {"type": "string", "maxLength": LABEL_MAX, "pattern": LABEL_VALUE_PATTERN},
    })
}

/// A label (an object's name) is 1 to 63 characters of lowercase letters, digits, `-`, `_` and
/// `.`, starting and ending with a letter or digit, so it can be a DNS label or a host name.
pub fn validate_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("must not be empty".into());
    }
    if label.len() > LABEL_MAX {
        return Err(format!("is {} characters long; at most {LABEL_MAX} are allowed", label.len()));
    }
    if let Some(c) =
        label.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(*c)))
    {
        return Err(format!("contains {c:?}; only lowercase letters, digits, '-', '_' and '.' are allowed"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(label.chars().next()) || !alnum(label.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Selector labels: keys follow the label rule (plus `/` for prefixes such as `enjin.dev/app`),
/// values are at most 63 printable characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 2 * LABEL_MAX
            && k.split('/').all(|part| validate_label(part).is_ok());
        if !key_ok {
            return Err(FieldError::new(
                format!("labels.{k}"),
                "a label key is made of lowercase letters, digits, '-', '_', '.' and '/'",
            ));
        }
        if v.chars().count() > LABEL_MAX || v.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("labels.{k}"),
                format!("a label value is at most {LABEL_MAX} printable characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_label("web-1").is_ok());
        assert!(validate_label("db.primary_2").is_ok());
        assert!(validate_label("").is_err());
        assert!(validate_label("Web").is_err());
        assert!(validate_label("-web").is_err());
        assert!(validate_label("web-").is_err());
        assert!(validate_label("a b").is_err());
        assert!(validate_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn ring_rules() {
        assert!(RingRule::Parent.allows(Ring::PLATFORM, Ring::INFRASTRUCTURE));
        assert!(!RingRule::Parent.allows(Ring::PLATFORM, Ring::META));
        assert!(!RingRule::Parent.allows(Ring::META, Ring::META));
        assert!(RingRule::SameOrLower.allows(Ring::INFRASTRUCTURE, Ring::META));
        assert!(!RingRule::SameOrLower.allows(Ring::META, Ring::INFRASTRUCTURE));
        assert!(!RingRule::Same.allows(Ring::META, Ring::INFRASTRUCTURE));
    }
}
