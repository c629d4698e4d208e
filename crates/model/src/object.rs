use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Kind, Ring};

/// What every object carries besides its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectMeta {
    /// The object's identity, chosen by the control plane on create; never reused or changed.
    pub uuid: Uuid,
    /// The kind of the object, which decides the type of its spec; never changed.
    pub kind: Kind,
    /// The ring the object lives in, chosen on create and never changed; the ring rules of its
    /// references are checked against it.
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
    /// When the object was created (control-plane clock); never changed by an update.
    pub created_at: DateTime<Utc>,
    /// When the object was last written (control-plane clock); equal to `created_at` until the
    /// first update, then set on every update.
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
    /// Identity, ownership and revision; serialized flattened, beside `spec`, not nested.
    #[serde(flatten)]
    pub meta: ObjectMeta,
    /// The kind's spec: what the owner asked for. `S` is the kind's spec type, or
    /// `serde_json::Value` where the kind is known only at run time.
    pub spec: S,
}
