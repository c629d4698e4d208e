use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Kind, Ring};

/// What every object carries besides its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectMeta {
    pub uuid: Uuid,
    pub kind: Kind,
    pub ring: Ring,
    /// The account that owns the object; ring 0 and 1 infrastructure belongs to the system
    /// account. Set on create and never changed.
    #[serde(default)]
    pub account: Uuid,
    /// The object's name, unique among its siblings (same kind, ring and compartment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::validate::optional_label_schema")]
    pub label: Option<String>,
    /// Free-form key/value labels for selection (`--selector tier=web`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::validate::labels_schema")]
    pub labels: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The store revision that last wrote this object; send it back on update for optimistic
    /// concurrency.
    #[schemars(range(min = 1))]
    pub revision: i64,
}

/// An object of the model: its metadata and its kind's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Object_{S}")]
pub struct Object<S> {
    #[serde(flatten)]
    pub meta: ObjectMeta,
    pub spec: S,
}
