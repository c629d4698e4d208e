use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Kind, Spec, text};
use crate::{FieldError, Ring, validate_label};

/// A group or role that nodes serve ("postgres-primary", "web").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// What the tier is for, for people; at most 1,024 characters, no control characters but tab
    /// and newline.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
    /// Commands the agents run on topology changes, by hook name (`promote`, `follow`,
    /// `demote`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "propertyNames" = {"pattern": crate::LABEL_PATTERN, "maxLength": 63},
        "additionalProperties" = {"type": "string", "maxLength": 4096, "pattern": super::TEXT_PATTERN}
    ))]
    pub hooks: BTreeMap<String, String>,
}

impl Spec for TierSpec {
    const KIND: Kind = Kind::Tier;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        text("spec.description", &self.description, 1024)?;
        for (name, command) in &self.hooks {
            validate_label(name)
                .map_err(|m| FieldError::new(format!("spec.hooks.{name}"), format!("hook name {m}")))?;
            text(&format!("spec.hooks.{name}"), command, 4096)?;
            if command.trim().is_empty() {
                return Err(FieldError::new(format!("spec.hooks.{name}"), "command is empty"));
            }
        }
        Ok(())
    }
}
