use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, no_duplicates, reference};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule};

/// What sort of locality a compartment is. The model does not order the first four (a rack
/// may lie in a zone or a zone in a rack); only `app-environment` is tied to a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CompartmentType {
    /// A geographic region.
    Region,
    /// A datacenter (a building or a provider's site).
    Datacenter,
    /// A rack of machines in a datacenter.
    Rack,
    /// An availability zone: machines that fail together.
    Zone,
    /// A deployed app's environment: the ring-2 compartment its instances live in.
    AppEnvironment,
}

/// A locality. Compartments form a directed acyclic graph through `parents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompartmentSpec {
    /// The sort of locality; `app-environment` exactly when the compartment is in ring 2.
    /// Written `type` in the JSON.
    #[serde(rename = "type")]
    pub compartment_type: CompartmentType,
    /// The compartments this one lies in; the first is its primary parent, which scopes its
    /// label.
    #[serde(default)]
    pub parents: Vec<Uuid>,
    /// Compartments this one offers a private link to; a link is up when both sides list it.
    #[serde(default)]
    pub links: Vec<Uuid>,
}

impl Spec for CompartmentSpec {
    const KIND: Kind = Kind::Compartment;

    fn validate(&self, ring: Ring) -> Result<(), FieldError> {
        let app_env = self.compartment_type == CompartmentType::AppEnvironment;
        if app_env != (ring == Ring::PLATFORM) {
            return Err(FieldError::new(
                "spec.type",
                "app-environment compartments are exactly the ring 2 compartments",
            ));
        }
        no_duplicates("spec.parents", &self.parents)?;
        no_duplicates("spec.links", &self.links)
    }

    fn references(&self) -> Vec<Reference> {
        let parents = self.parents.iter().enumerate().map(|(i, p)| {
            reference(
                format!("spec.parents[{i}]"),
                Kind::Compartment,
                *p,
                RingRule::SameOrLower,
                OnDelete::Restrict,
            )
        });
        let links = self.links.iter().enumerate().map(|(i, l)| {
            reference(format!("spec.links[{i}]"), Kind::Compartment, *l, RingRule::Any, OnDelete::Restrict)
        });
        parents.chain(links).collect()
    }

    fn compartment(&self) -> Option<Uuid> {
        self.parents.first().copied()
    }

    fn parent(&self) -> Option<Uuid> {
        self.parents.first().copied()
    }
}
