use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, reference, text};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule, validate_label};

/// A tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
}

impl Spec for AccountSpec {
    const KIND: Kind = Kind::Account;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        text("spec.description", &self.description, 1024)
    }
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    Delete,
    Watch,
    #[serde(rename = "*")]
    Any,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Watch => "watch",
            Verb::Any => "*",
        }
    }
}

/// What a permission applies to: a kind, API tokens, the API document, metrics, or anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Kind(Kind),
    Token,
    /// Bus identities: list, rotate, revoke.
    Key,
    /// Single-use tokens with which a child joins its ring.
    JoinToken,
    /// The join itself, which only a join token may do.
    Join,
    /// Reading the ring bus (`enjin bus tail`).
    Bus,
    OpenApi,
    Metrics,
    Any,
}

impl Resource {
    /// Every resource that is not a kind, by the name a role spells it with.
    const OTHERS: [(&'static str, Resource); 8] = [
        ("token", Resource::Token),
        ("key", Resource::Key),
        ("join-token", Resource::JoinToken),
        ("join", Resource::Join),
        ("bus", Resource::Bus),
        ("openapi", Resource::OpenApi),
        ("metrics", Resource::Metrics),
        ("*", Resource::Any),
    ];

    /// The names a role may use, as the API writes them: kinds by their singular name.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Kind::ALL.into_iter().map(Kind::name).chain(Resource::OTHERS.into_iter().map(|(n, _)| n))
    }

    /// The resource a name written by [`Resource::names`] stands for.
    fn by_name(name: &str) -> Option<Resource> {
        let kind = Kind::ALL.into_iter().find(|k| k.name() == name).map(Resource::Kind);
        kind.or_else(|| Resource::OTHERS.into_iter().find(|(n, _)| *n == name).map(|(_, r)| r))
    }
}

/// An enum of exactly the names the API accepts in a role.
impl JsonSchema for Resource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Resource".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = Resource::names().collect();
        schemars::json_schema!({
            "description": "What a permission applies to: a kind, API tokens (`token`), bus keys (`key`), join tokens (`join-token`), the join (`join`), the bus (`bus`), the API document (`openapi`), metrics (`metrics`), or anything (`*`).",
            "type": "string",
            "enum": names,
        })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Kind(k) => f.write_str(k.name()),
            Resource::Token => f.write_str("token"),
            Resource::Key => f.write_str("key"),
            Resource::JoinToken => f.write_str("join-token"),
            Resource::Join => f.write_str("join"),
            Resource::Bus => f.write_str("bus"),
            Resource::OpenApi => f.write_str("openapi"),
            Resource::Metrics => f.write_str("metrics"),
            Resource::Any => f.write_str("*"),
        }
    }
}

impl std::str::FromStr for Resource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "*" => Resource::Any,
            "token" => Resource::Token,
            "key" => Resource::Key,
            "join-token" => Resource::JoinToken,
            "join" => Resource::Join,
            "bus" => Resource::Bus,
            "openapi" => Resource::OpenApi,
            "metrics" => Resource::Metrics,
            other => Resource::Kind(other.parse().map_err(|_| {
                format!("unknown resource {other:?}: use a kind name, token, key, join-token, join, bus, openapi, metrics or *")
            })?),
        })
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Only the names the API writes (a kind's singular name, not its plural or title, which the
/// command line also takes), so that what the API accepts is what its schema lists.
impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Resource::by_name(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown resource {s:?}: use a kind name, token, key, join-token, join, bus, openapi, metrics or *"
            ))
        })
    }
}

/// Verbs allowed on resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    #[schemars(length(min = 1))]
    pub verbs: Vec<Verb>,
    #[schemars(length(min = 1))]
    pub resources: Vec<Resource>,
}

/// A set of permissions, bound to principals by memberships.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub permissions: Vec<Permission>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
}

impl RoleSpec {
    pub fn allows(&self, verb: Verb, resource: Resource) -> bool {
        self.permissions.iter().any(|p| {
            p.verbs.iter().any(|v| *v == Verb::Any || *v == verb)
                && p.resources.iter().any(|r| *r == Resource::Any || *r == resource)
        })
    }

    /// Everything.
    pub fn admin() -> Self {
        RoleSpec {
            permissions: vec![Permission { verbs: vec![Verb::Any], resources: vec![Resource::Any] }],
            description: "may do everything".into(),
        }
    }

    /// Read everything but tokens.
    pub fn viewer() -> Self {
        let resources =
            Kind::ALL.into_iter().map(Resource::Kind).chain([Resource::OpenApi, Resource::Metrics]).collect();
        RoleSpec {
            permissions: vec![Permission { verbs: vec![Verb::Get, Verb::List, Verb::Watch], resources }],
            description: "may read every object".into(),
        }
    }
}

impl Spec for RoleSpec {
    const KIND: Kind = Kind::Role;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        for (i, p) in self.permissions.iter().enumerate() {
            if p.verbs.is_empty() {
                return Err(FieldError::new(format!("spec.permissions[{i}].verbs"), "is empty"));
            }
            if p.resources.is_empty() {
                return Err(FieldError::new(format!("spec.permissions[{i}].resources"), "is empty"));
            }
        }
        text("spec.description", &self.description, 1024)
    }
}

/// A principal's membership of an account in a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipSpec {
    /// Who: the principal name that API tokens are issued to.
    #[schemars(schema_with = "crate::validate::label_schema")]
    pub principal: String,
    pub account: Uuid,
    pub role: Uuid,
}

impl Spec for MembershipSpec {
    const KIND: Kind = Kind::Membership;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        validate_label(&self.principal).map_err(|m| FieldError::new("spec.principal", m))
    }

    fn references(&self) -> Vec<Reference> {
        vec![
            reference("spec.account", Kind::Account, self.account, RingRule::Any, OnDelete::Restrict),
            reference("spec.role", Kind::Role, self.role, RingRule::Any, OnDelete::Restrict),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_they_list() {
        let admin = RoleSpec::admin();
        assert!(admin.allows(Verb::Delete, Resource::Token));
        let viewer = RoleSpec::viewer();
        assert!(viewer.allows(Verb::List, Resource::Kind(Kind::Node)));
        assert!(!viewer.allows(Verb::Create, Resource::Kind(Kind::Node)));
        assert!(!viewer.allows(Verb::Get, Resource::Token));
        assert!(!RoleSpec::default().allows(Verb::Get, Resource::OpenApi));
    }

    #[test]
    fn resources_parse() {
        assert_eq!("node".parse::<Resource>(), Ok(Resource::Kind(Kind::Node)));
        assert_eq!("*".parse::<Resource>(), Ok(Resource::Any));
        assert!("nodez".parse::<Resource>().is_err());
        let p: Permission = serde_json::from_str(r#"{"verbs":["get","*"],"resources":["task","token"]}"#)
            .expect("valid permission");
        assert_eq!(p.resources, vec![Resource::Kind(Kind::Task), Resource::Token]);
    }
}
