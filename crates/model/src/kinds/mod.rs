//! One module per group of kinds; each spec says which fields refer to other objects and which
//! rules it keeps on its own.

mod compartment;
mod network;
mod node;
mod release;
mod task;
mod tenancy;
mod tier;

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use compartment::{CompartmentSpec, CompartmentType};
pub use network::{
    APP_SELECTOR_PATTERN, AccessRuleSetSpec, AccessRuleSpec, Action, AppSelector, Cidr, Direction,
    NetworkInterfaceSpec, NetworkSpec, NetworkStrategy, Peer, PortRange, Protocol,
};
pub use node::{
    DesiredState, NodeObservationSpec, NodeSpec, ObservationState, ObservationStrategy, ProbeSpec, Resources,
    RestartKind, RestartPolicy, RunSpec, Strategy,
};
pub use release::{
    APP_NAME_PATTERN, AppManifest, HealthCheck, HealthKind, MAX_INSTANCES, PackageRef, ProcessType,
    ReleaseSpec, ReleaseState, WEB, valid_app_name, validate_manifest,
};
pub use task::{
    RolloutIsolation, RolloutMode, RolloutPlan, RolloutStep, TaskKind, TaskProgress, TaskSpec, TaskState,
};
pub use tenancy::{AccountSpec, MembershipSpec, PermSet, Permission, Quota, Resource, RoleSpec, Verb};
pub use tier::TierSpec;

use crate::{FieldError, Reference, Ring, Target};

/// Every kind of object in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A tenant and the owner of objects ([`AccountSpec`]).
    Account,
    /// A set of permissions ([`RoleSpec`]).
    Role,
    /// A principal's role in an account ([`MembershipSpec`]); unnamed.
    Membership,
    /// An address range and where it is ([`NetworkSpec`]).
    Network,
    /// A node's attachment to a network, with its addresses ([`NetworkInterfaceSpec`]); unnamed.
    NetworkInterface,
    /// A group of access rules on one network ([`AccessRuleSetSpec`]).
    AccessRuleSet,
    /// One firewall rule ([`AccessRuleSpec`]); unnamed.
    AccessRule,
    /// A locality, or an app's environment in ring 2 ([`CompartmentSpec`]).
    Compartment,
    /// A role that nodes serve ([`TierSpec`]).
    Tier,
    /// Anything supervised: a machine, a host, an instance ([`NodeSpec`]).
    Node,
    /// What an observer last saw of a node ([`NodeObservationSpec`]); unnamed.
    NodeObservation,
    /// A unit of work with a state machine ([`TaskSpec`]).
    Task,
    /// One version of an app's code and configuration ([`ReleaseSpec`]).
    Release,
}

impl Kind {
    /// Every kind, in declaration order (the order kinds sort in).
    pub const ALL: [Kind; 13] = [
        Kind::Account,
        Kind::Role,
        Kind::Membership,
        Kind::Network,
        Kind::NetworkInterface,
        Kind::AccessRuleSet,
        Kind::AccessRule,
        Kind::Compartment,
        Kind::Tier,
        Kind::Node,
        Kind::NodeObservation,
        Kind::Task,
        Kind::Release,
    ];

    /// The singular name, as in the CLI noun and store keys (`network-interface`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Role => "role",
            Kind::Membership => "membership",
            Kind::Network => "network",
            Kind::NetworkInterface => "network-interface",
            Kind::AccessRuleSet => "access-rule-set",
            Kind::AccessRule => "access-rule",
            Kind::Compartment => "compartment",
            Kind::Tier => "tier",
            Kind::Node => "node",
            Kind::NodeObservation => "node-observation",
            Kind::Task => "task",
            Kind::Release => "release",
        }
    }

    /// The plural, as in API paths (`/v1/network-interfaces`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Account => "accounts",
            Kind::Role => "roles",
            Kind::Membership => "memberships",
            Kind::Network => "networks",
            Kind::NetworkInterface => "network-interfaces",
            Kind::AccessRuleSet => "access-rule-sets",
            Kind::AccessRule => "access-rules",
            Kind::Compartment => "compartments",
            Kind::Tier => "tiers",
            Kind::Node => "nodes",
            Kind::NodeObservation => "node-observations",
            Kind::Task => "tasks",
            Kind::Release => "releases",
        }
    }

    /// The Rust-style name, used for schema names (`NetworkInterface`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Account => "Account",
            Kind::Role => "Role",
            Kind::Membership => "Membership",
            Kind::Network => "Network",
            Kind::NetworkInterface => "NetworkInterface",
            Kind::AccessRuleSet => "AccessRuleSet",
            Kind::AccessRule => "AccessRule",
            Kind::Compartment => "Compartment",
            Kind::Tier => "Tier",
            Kind::Node => "Node",
            Kind::NodeObservation => "NodeObservation",
            Kind::Task => "Task",
            Kind::Release => "Release",
        }
    }

    /// Whether objects of this kind must carry a label (a name).
    pub fn named(self) -> bool {
        !matches!(self, Kind::Membership | Kind::NetworkInterface | Kind::AccessRule | Kind::NodeObservation)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kind name that is none of a kind's singular, plural or title; holds the text given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?}")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    /// Accepts the singular, the plural and the title (`node`, `nodes`, `Node`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s || k.plural() == s || k.title() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// The spec of one kind: its own rules and its references to other objects.
pub trait Spec:
    Serialize + DeserializeOwned + JsonSchema + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The kind whose objects have this spec; [`with_spec_type!`](crate::with_spec_type) maps back.
    const KIND: Kind;

    /// Rules this object keeps on its own, given its ring.
    fn validate(&self, ring: Ring) -> Result<(), FieldError>;

    /// Every field that names another object.
    fn references(&self) -> Vec<Reference> {
        Vec::new()
    }

    /// Rules that need the referenced objects, each given with its reference.
    fn check_targets(&self, _ring: Ring, _targets: &[(Reference, Target)]) -> Result<(), FieldError> {
        Ok(())
    }

    /// Rules on a change from `old` (a task's state machine).
    fn check_update(&self, _old: &Self) -> Result<(), FieldError> {
        Ok(())
    }

    /// A field changed from `old` that objects referring to this one rely on (an interface's
    /// addresses lie in its network's range): such a change is refused while they exist.
    fn change_referrers_rely_on(&self, _old: &Self) -> Option<&'static str> {
        None
    }

    /// The compartment the object is in: labels are unique per kind, ring and compartment, and
    /// lists filter on it.
    fn compartment(&self) -> Option<Uuid> {
        None
    }

    /// The tiers the object serves, for list filters.
    fn tiers(&self) -> &[Uuid] {
        &[]
    }

    /// The object's parent (a node's supervisor, a compartment's first parent), for filters.
    fn parent(&self) -> Option<Uuid> {
        None
    }
}

/// Shorthand for a reference list entry.
pub(crate) fn reference(
    field: impl Into<String>,
    kind: Kind,
    uuid: Uuid,
    ring: crate::RingRule,
    on_delete: crate::OnDelete,
) -> Reference {
    Reference { field: field.into(), kind, uuid, ring, on_delete }
}

/// Refuses the same uuid twice in a list field.
pub(crate) fn no_duplicates(field: &str, ids: &[Uuid]) -> Result<(), FieldError> {
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(FieldError::new(format!("{field}[{i}]"), format!("{id} is listed twice")));
        }
    }
    Ok(())
}

/// [`text`]'s rule on characters as a JSON Schema pattern: no control characters but tab
/// and newline. Fields checked by [`text`] carry it with their `maxLength`.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$";

/// Refuses free text that is too long (in characters, as JSON Schema's `maxLength` counts) or
/// has control characters.
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(field, format!("is longer than {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Runs `$body` with `$S` bound to the spec type of `$kind`, for code that handles objects of
/// a kind only known at run time.
#[macro_export]
macro_rules! with_spec_type {
    ($kind:expr, $S:ident => $body:expr) => {{
        use $crate::kinds::*;
        match $kind {
            $crate::Kind::Account => {
                type $S = AccountSpec;
                $body
            }
            $crate::Kind::Role => {
                type $S = RoleSpec;
                $body
            }
            $crate::Kind::Membership => {
                type $S = MembershipSpec;
                $body
            }
            $crate::Kind::Network => {
                type $S = NetworkSpec;
                $body
            }
            $crate::Kind::NetworkInterface => {
                type $S = NetworkInterfaceSpec;
                $body
            }
            $crate::Kind::AccessRuleSet => {
                type $S = AccessRuleSetSpec;
                $body
            }
            $crate::Kind::AccessRule => {
                type $S = AccessRuleSpec;
                $body
            }
            $crate::Kind::Compartment => {
                type $S = CompartmentSpec;
                $body
            }
            $crate::Kind::Tier => {
                type $S = TierSpec;
                $body
            }
            $crate::Kind::Node => {
                type $S = NodeSpec;
                $body
            }
            $crate::Kind::NodeObservation => {
                type $S = NodeObservationSpec;
                $body
            }
            $crate::Kind::Task => {
                type $S = TaskSpec;
                $body
            }
            $crate::Kind::Release => {
                type $S = ReleaseSpec;
                $body
            }
        }
    }};
}

/// The references and the label scope of a stored spec of `kind`, read without knowing its
/// type at compile time.
pub fn references_of(
    kind: Kind,
    spec: &serde_json::Value,
) -> Result<(Vec<Reference>, Option<Uuid>), serde_json::Error> {
    with_spec_type!(kind, S => {
        let s: S = S::deserialize(spec)?;
        Ok((s.references(), s.compartment()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
            assert_eq!(k.plural().parse::<Kind>(), Ok(k));
            assert_eq!(serde_json::to_value(k).ok(), Some(serde_json::json!(k.name())));
        }
        assert!("widget".parse::<Kind>().is_err());
    }
}
