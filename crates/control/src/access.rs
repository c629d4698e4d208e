//! What a principal may do, and where: permissions per account. A membership of the system
//! account holds in every account (the operator's, as a Kubernetes ClusterRoleBinding does);
//! any other membership holds in its own account only. Permissions are concrete sets
//! ([`PermSet`]), so "may grant this" is plain set inclusion, checked the same way for tokens,
//! roles and memberships: nobody can grant, mint or derive more than they hold.

use std::collections::BTreeMap;

use enjin_model::kinds::{PermSet, Resource, Verb};
use uuid::Uuid;

/// Where a grant holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every account (a membership of the system account).
    Everywhere,
    /// One account only, by its uuid (a membership of any account but the system one).
    Account(Uuid),
}

impl Scope {
    /// The scope a membership of `account` grants in.
    pub fn of(account: Uuid, system: Uuid) -> Scope {
        if account == system { Scope::Everywhere } else { Scope::Account(account) }
    }

    /// As written in token listings: `*` for everywhere, else the account's uuid.
    pub fn name(self) -> String {
        match self {
            Scope::Everywhere => "*".into(),
            Scope::Account(a) => a.to_string(),
        }
    }

    /// Back from [`Scope::name`]: `*` is everywhere, a uuid one account; `None` for anything else.
    pub fn parse(s: &str) -> Option<Scope> {
        if s == "*" { Some(Scope::Everywhere) } else { s.parse().ok().map(Scope::Account) }
    }
}

/// Permissions per scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    everywhere: PermSet,
    accounts: BTreeMap<Uuid, PermSet>,
}

impl Grants {
    /// Nothing at all.
    pub fn none() -> Grants {
        Grants::default()
    }

    /// Everything, everywhere.
    pub fn all() -> Grants {
        Grants { everywhere: PermSet::all(), accounts: BTreeMap::new() }
    }

    /// Add `perms` in `scope` to what is already granted there (a union; nothing is ever removed).
    pub fn add(&mut self, scope: Scope, perms: &PermSet) {
        match scope {
            Scope::Everywhere => self.everywhere = self.everywhere.union(perms),
            Scope::Account(a) => {
                let entry = self.accounts.entry(a).or_default();
                *entry = entry.union(perms);
            }
        }
    }

    /// [`Grants::add`] by value, for building grants in one expression.
    pub fn with(mut self, scope: Scope, perms: &PermSet) -> Grants {
        self.add(scope, perms);
        self
    }

    /// What the grants allow in `account`.
    pub fn in_account(&self, account: Uuid) -> PermSet {
        match self.accounts.get(&account) {
            Some(p) => self.everywhere.union(p),
            None => self.everywhere.clone(),
        }
    }

    /// Whether `verb resource` is allowed in `account`, by a grant everywhere or one in that account.
    pub fn allows(&self, verb: Verb, resource: Resource, account: Uuid) -> bool {
        self.everywhere.contains(verb, resource)
            || self.accounts.get(&account).is_some_and(|p| p.contains(verb, resource))
    }

    /// Whether the grants allow `verb resource` in some account.
    pub fn allows_somewhere(&self, verb: Verb, resource: Resource) -> bool {
        self.everywhere.contains(verb, resource) || self.accounts.values().any(|p| p.contains(verb, resource))
    }

    /// Whether the grants hold in every account.
    pub fn is_everywhere(&self) -> bool {
        !self.everywhere.is_empty()
    }

    /// The accounts named by a grant of their own.
    pub fn accounts(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.accounts.iter().filter(|(_, p)| !p.is_empty()).map(|(a, _)| *a)
    }

    /// Whether nothing at all is allowed, in any scope (a grant of an empty set counts as none).
    pub fn is_empty(&self) -> bool {
        self.everywhere.is_empty() && self.accounts.values().all(PermSet::is_empty)
    }

    /// What both allow: in every account, the permissions each of them holds there.
    pub fn intersection(&self, other: &Grants) -> Grants {
        let everywhere = self.everywhere.intersection(&other.everywhere);
        let mut accounts = BTreeMap::new();
        for a in self.accounts.keys().chain(other.accounts.keys()) {
            let both = self.in_account(*a).intersection(&other.in_account(*a));
            let own = everywhere.lacks(&both);
            if !own.is_empty() {
                accounts.insert(*a, own);
            }
        }
        Grants { everywhere, accounts }
    }

    /// Only what holds in `account`, as a grant in that account alone (or everywhere, if
    /// `account` is the system account).
    pub fn narrowed_to(&self, account: Uuid, system: Uuid) -> Grants {
        let perms = if account == system { self.everywhere.clone() } else { self.in_account(account) };
        Grants::none().with(Scope::of(account, system), &perms)
    }

    /// What `other` allows that these grants do not, per scope; empty when `other` is no more
    /// than these grants. This is the one check behind every grant.
    pub fn lacks(&self, other: &Grants) -> Vec<(Scope, PermSet)> {
        let mut out = Vec::new();
        let missing = self.everywhere.lacks(&other.everywhere);
        if !missing.is_empty() {
            out.push((Scope::Everywhere, missing));
        }
        for (a, perms) in &other.accounts {
            let missing = self.in_account(*a).lacks(perms);
            if !missing.is_empty() {
                out.push((Scope::Account(*a), missing));
            }
        }
        out
    }

    /// Per scope, as `verb resource` names (token listings).
    pub fn to_names(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        if !self.everywhere.is_empty() {
            out.insert(Scope::Everywhere.name(), self.everywhere.names());
        }
        for (a, p) in &self.accounts {
            if !p.is_empty() {
                out.insert(Scope::Account(*a).name(), p.names());
            }
        }
        out
    }

    /// Back from [`Grants::to_names`]; `None` if anything is malformed.
    pub fn from_names(names: &BTreeMap<String, Vec<String>>) -> Option<Grants> {
        let mut g = Grants::none();
        for (scope, perms) in names {
            let scope = Scope::parse(scope)?;
            let perms = PermSet::from_names(perms.iter().map(String::as_str))?;
            g.add(scope, &perms);
        }
        Some(g)
    }
}

/// Says what is missing, for a 403: `create token everywhere; get node in account …`.
pub fn describe_missing(missing: &[(Scope, PermSet)]) -> String {
    missing
        .iter()
        .map(|(scope, perms)| {
            let names = perms.names();
            let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
            let more = names.len().saturating_sub(shown.len());
            let list =
                if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") };
            match scope {
                Scope::Everywhere => format!("{list} in every account"),
                Scope::Account(a) => format!("{list} in account {a}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use enjin_model::Kind;
    use enjin_model::kinds::{Permission, RoleSpec};
    use proptest::prelude::*;

    use super::*;

    fn perms(pairs: &[(Verb, Resource)]) -> PermSet {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_system_membership_holds_everywhere_and_others_only_at_home() {
        let system = Uuid::new_v4();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let read = perms(&[(Verb::Get, Resource::Kind(Kind::Node))]);
        let g = Grants::none().with(Scope::of(a, system), &read);
        assert!(g.allows(Verb::Get, Resource::Kind(Kind::Node), a));
        assert!(!g.allows(Verb::Get, Resource::Kind(Kind::Node), b));
        assert!(!g.allows(Verb::Get, Resource::Kind(Kind::Node), system));
        let op = Grants::none().with(Scope::of(system, system), &read);
        assert!(op.allows(Verb::Get, Resource::Kind(Kind::Node), b));
    }

    #[test]
    fn the_token_maker_cannot_mint_an_admin() {
        // A role that may only create tokens, held in the system account: the exploit.
        let system = Uuid::new_v4();
        let only_tokens = RoleSpec {
            permissions: vec![Permission { verbs: vec![Verb::Create], resources: vec![Resource::Token] }],
            description: String::new(),
        };
        let bob = Grants::none().with(Scope::Everywhere, &only_tokens.perm_set());
        let admin = Grants::none().with(Scope::of(system, system), &RoleSpec::admin().perm_set());
        let missing = bob.lacks(&admin);
        assert!(!missing.is_empty());
        assert!(describe_missing(&missing).contains("in every account"));
        // What bob can mint for admin's principal is bob's own grants, at most.
        assert!(bob.lacks(&admin.intersection(&bob)).is_empty());
    }

    fn scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            Just(Scope::Everywhere),
            (0u8..3).prop_map(|i| Scope::Account(Uuid::from_u128(u128::from(i) + 1)))
        ]
    }

    fn perm_set() -> impl Strategy<Value = PermSet> {
        let all: Vec<(Verb, Resource)> = PermSet::all().iter().collect();
        proptest::sample::subsequence(all.clone(), 0..=all.len().min(24))
            .prop_map(|v| v.into_iter().collect())
    }

    fn grants() -> impl Strategy<Value = Grants> {
        proptest::collection::vec((scope(), perm_set()), 0..4).prop_map(|v| {
            let mut g = Grants::none();
            for (s, p) in v {
                g.add(s, &p);
            }
            g
        })
    }

    fn held_somewhere(g: &Grants, accounts: &[Uuid]) -> Vec<(Verb, Resource, Uuid)> {
        let mut out = Vec::new();
        for a in accounts {
            for (v, r) in g.in_account(*a).iter() {
                out.push((v, r, *a));
            }
        }
        out
    }

    proptest! {
        /// Grant chains: each principal grants the next what it asks for, and the grant goes
        /// through only when the granter holds it; a token's ceiling is its maker's grants
        /// intersected with what it asks. Nobody ever ends up holding anything, in any account,
        /// that the principal before it in the chain did not hold.
        #[test]
        fn nobody_holds_more_than_who_granted_it(root in grants(), asks in proptest::collection::vec(grants(), 1..6)) {
            let accounts: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
            let mut holder = root;
            for ask in asks {
                let next = if holder.lacks(&ask).is_empty() { ask } else { holder.intersection(&ask) };
                prop_assert!(holder.lacks(&next).is_empty());
                for (v, r, a) in held_somewhere(&next, &accounts) {
                    prop_assert!(holder.allows(v, r, a), "{} {r} in {a} granted by one who lacks it", v.name());
                }
                holder = next;
            }
        }

        #[test]
        fn intersection_is_below_both(a in grants(), b in grants()) {
            let i = a.intersection(&b);
            prop_assert!(a.lacks(&i).is_empty());
            prop_assert!(b.lacks(&i).is_empty());
        }

        #[test]
        fn names_round_trip(a in grants()) {
            let back = Grants::from_names(&a.to_names());
            prop_assert!(back.is_some_and(|b| b.lacks(&a).is_empty() && a.lacks(&b).is_empty()));
        }
    }
}
