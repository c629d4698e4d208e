use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, reference, text};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule, validate_label};

/// A tenant. Only the operator (a member of the system account) creates, changes or deletes
/// accounts; members of an account may read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// What the account is for, for people; at most 1,024 characters, no control characters but
    /// tab and newline. Empty is left out of the JSON.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
    /// What the account's objects may use at most; an absent limit is no limit.
    #[serde(default, skip_serializing_if = "Quota::is_unlimited", deserialize_with = "null_is_unlimited")]
    #[schemars(with = "Option<Quota>")]
    pub quota: Quota,
}

/// Limits on what one account's objects use together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<u32>,
    /// Ring 2 instances, of apps or created as nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// The memory limits of those instances, added up, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Their disk quotas, added up, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// The packages the account has uploaded, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_bytes: Option<u64>,
}

/// `null` is no quota, as an absent one is; anything but an object (or null) is refused.
fn null_is_unlimited<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Quota, D::Error> {
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? {
        None => Ok(Quota::default()),
        Some(m) => serde_json::from_value(serde_json::Value::Object(m)).map_err(serde::de::Error::custom),
    }
}

impl Quota {
    /// Whether no limit is set at all (the default); such a quota is left out of the JSON.
    pub fn is_unlimited(&self) -> bool {
        *self == Quota::default()
    }
}

impl Spec for AccountSpec {
    const KIND: Kind = Kind::Account;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        text("spec.description", &self.description, 1024)
    }
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Read one object.
    Get,
    /// List objects (or tokens, keys).
    List,
    /// Create an object; for `token`, issue an API token.
    Create,
    /// Change an existing object.
    Update,
    /// Delete an object; for `token`, revoke one.
    Delete,
    /// Follow changes as they happen (a watch query, `enjin bus tail`).
    Watch,
    /// Every verb, written `*`; expanded to [`Verb::CONCRETE`] when permissions are compared.
    #[serde(rename = "*")]
    Any,
}

impl Verb {
    /// Every verb but the wildcard.
    pub const CONCRETE: [Verb; 6] =
        [Verb::Get, Verb::List, Verb::Create, Verb::Update, Verb::Delete, Verb::Watch];

    /// The verb as roles and the API spell it (`get`, …, `*`).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// Objects of one kind, named by its singular name (`node`, `network-interface`).
    Kind(Kind),
    /// API tokens: issuing (`create`), listing and revoking (`delete`) them.
    Token,
    /// Bus identities: list, rotate, revoke.
    Key,
    /// Single-use tokens with which a child joins its ring.
    JoinToken,
    /// The join itself, which only a join token may do.
    Join,
    /// Reading the ring bus (`enjin bus tail`).
    Bus,
    /// The audit log of changes (`enjin audit`). Not in the viewer role: it shows who did what.
    Audit,
    /// Reading the API's OpenAPI document.
    OpenApi,
    /// Reading the Prometheus metrics.
    Metrics,
    /// Every resource, written `*`; expanded by [`Resource::concrete`] when permissions are
    /// compared.
    Any,
}

impl Resource {
    /// Every resource but the wildcard.
    pub fn concrete() -> impl Iterator<Item = Resource> {
        let others = Resource::OTHERS.into_iter().map(|(_, r)| r).filter(|r| *r != Resource::Any);
        Kind::ALL.into_iter().map(Resource::Kind).chain(others)
    }

    /// Every resource that is not a kind, by the name a role spells it with.
    const OTHERS: [(&'static str, Resource); 9] = [
        ("token", Resource::Token),
        ("key", Resource::Key),
        ("join-token", Resource::JoinToken),
        ("join", Resource::Join),
        ("bus", Resource::Bus),
        ("openapi", Resource::OpenApi),
        ("metrics", Resource::Metrics),
        ("audit", Resource::Audit),
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
            "description": "What a permission applies to: a kind, API tokens (`token`), bus keys (`key`), join tokens (`join-token`), the join (`join`), the bus (`bus`), the API document (`openapi`), metrics (`metrics`), the audit log (`audit`), or anything (`*`).",
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
            Resource::Audit => f.write_str("audit"),
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
            "audit" => Resource::Audit,
            "openapi" => Resource::OpenApi,
            "metrics" => Resource::Metrics,
            other => Resource::Kind(other.parse().map_err(|_| {
                format!("unknown resource {other:?}: use a kind name, token, key, join-token, join, bus, audit, openapi, metrics or *")
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
    /// The verbs granted, at least one; `*` grants them all.
    #[schemars(length(min = 1))]
    pub verbs: Vec<Verb>,
    /// What they are granted on, at least one; `*` is every resource.
    #[schemars(length(min = 1))]
    pub resources: Vec<Resource>,
}

/// A set of permissions, bound to principals by memberships.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// What the role grants: the union of its permissions. Empty grants nothing.
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// What the role is for, for people; at most 1,024 characters, no control characters but tab
    /// and newline.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
}

impl RoleSpec {
    /// Whether some permission of the role grants `verb` on `resource`, wildcards included on both
    /// sides of the check.
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

    /// Read every object, the API document and the metrics; nothing else (no tokens, keys,
    /// join tokens, bus or audit log).
    pub fn viewer() -> Self {
        let resources =
            Kind::ALL.into_iter().map(Resource::Kind).chain([Resource::OpenApi, Resource::Metrics]).collect();
        RoleSpec {
            permissions: vec![Permission { verbs: vec![Verb::Get, Verb::List, Verb::Watch], resources }],
            description: "may read every object".into(),
        }
    }
}

/// Concrete permissions, wildcards expanded, so that "holds at least these" is set inclusion:
/// the ground on which nobody can grant more than they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermSet(BTreeSet<(Verb, Resource)>);

impl PermSet {
    /// Everything there is.
    pub fn all() -> Self {
        Verb::CONCRETE.into_iter().flat_map(|v| Resource::concrete().map(move |r| (v, r))).collect()
    }

    /// What a list of permissions allows.
    pub fn of(permissions: &[Permission]) -> Self {
        let mut set = BTreeSet::new();
        for p in permissions {
            let verbs: Vec<Verb> =
                if p.verbs.contains(&Verb::Any) { Verb::CONCRETE.to_vec() } else { p.verbs.clone() };
            let resources: Vec<Resource> = if p.resources.contains(&Resource::Any) {
                Resource::concrete().collect()
            } else {
                p.resources.clone()
            };
            for v in &verbs {
                for r in &resources {
                    set.insert((*v, *r));
                }
            }
        }
        PermSet(set)
    }

    /// Whether the set holds exactly this pair; a wildcard is never in a set (they are expanded).
    pub fn contains(&self, verb: Verb, resource: Resource) -> bool {
        self.0.contains(&(verb, resource))
    }

    /// Whether the set grants nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs held, in the order of `Verb` then `Resource` (their declaration order).
    pub fn iter(&self) -> impl Iterator<Item = (Verb, Resource)> + '_ {
        self.0.iter().copied()
    }

    /// Adds one concrete pair; adding a wildcard would grant nothing that [`PermSet::contains`]
    /// finds.
    pub fn insert(&mut self, verb: Verb, resource: Resource) {
        self.0.insert((verb, resource));
    }

    /// What either set holds.
    pub fn union(&self, other: &PermSet) -> PermSet {
        PermSet(self.0.union(&other.0).copied().collect())
    }

    /// What both sets hold: what a holder keeps when capped by a ceiling (a token's scope).
    pub fn intersection(&self, other: &PermSet) -> PermSet {
        PermSet(self.0.intersection(&other.0).copied().collect())
    }

    /// What `other` holds that this set does not.
    pub fn lacks(&self, other: &PermSet) -> PermSet {
        PermSet(other.0.difference(&self.0).copied().collect())
    }

    /// `verb resource` pairs, for messages and listings.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(v, r)| format!("{} {r}", v.name())).collect()
    }

    /// Back from [`PermSet::names`]; `None` if a pair is not one.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<PermSet> {
        let mut set = BTreeSet::new();
        for n in names {
            let (v, r) = n.split_once(' ')?;
            let verb = Verb::CONCRETE.into_iter().find(|x| x.name() == v)?;
            let resource: Resource = r.parse().ok()?;
            if resource == Resource::Any {
                return None;
            }
            set.insert((verb, resource));
        }
        Some(PermSet(set))
    }
}

impl FromIterator<(Verb, Resource)> for PermSet {
    fn from_iter<T: IntoIterator<Item = (Verb, Resource)>>(iter: T) -> Self {
        PermSet(iter.into_iter().collect())
    }
}

impl RoleSpec {
    /// The role's permissions, wildcards expanded.
    pub fn perm_set(&self) -> PermSet {
        PermSet::of(&self.permissions)
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
    /// The account the principal is a member of; any ring. The account cannot be deleted while
    /// the membership exists.
    pub account: Uuid,
    /// The role that says what the principal may do in that account; any ring. The role cannot be
    /// deleted while the membership exists.
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
        assert!(admin.allows(Verb::List, Resource::Audit));
        assert!(!viewer.allows(Verb::List, Resource::Audit), "who did what is not for every reader");
        assert!(!RoleSpec::default().allows(Verb::Get, Resource::OpenApi));
    }

    #[test]
    fn resources_parse() {
        assert_eq!("node".parse::<Resource>(), Ok(Resource::Kind(Kind::Node)));
        assert_eq!("*".parse::<Resource>(), Ok(Resource::Any));
        assert_eq!("audit".parse::<Resource>(), Ok(Resource::Audit));
        assert_eq!(Resource::Audit.to_string(), "audit");
        assert!("nodez".parse::<Resource>().is_err());
        let p: Permission = serde_json::from_str(r#"{"verbs":["get","*"],"resources":["task","token"]}"#)
            .expect("valid permission");
        assert_eq!(p.resources, vec![Resource::Kind(Kind::Task), Resource::Token]);
    }
}
