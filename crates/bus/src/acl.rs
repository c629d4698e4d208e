//! Who may subscribe to and publish on which topics: one table per role, enforced by the hub on
//! every subscribe and publish. A member's role and id come from its certificate's common name,
//! which only the ring's key service writes (it signs certificates from CSRs and sets the name
//! itself, never from the request), so a member cannot choose its own role.
//!
//! | role     | common name        | id (in topics)     | who                                   |
//! |----------|--------------------|--------------------|---------------------------------------|
//! | parent   | `parent:<name>`    | `parent`           | the key service's own components      |
//! | host     | `host:<node-uuid>` | the node uuid      | a ring 1 host's agent                 |
//! | edge     | `edge:<node-uuid>` | the node uuid      | the edge (router and DNS)             |
//! | member   | `member:<key>`     | 32 hex of the key  | a key joined without a node (tools)   |
//!
//! The same table gives each NATS user its publish/subscribe permissions when the bus moves to
//! NATS ([`Member::permissions`]); nothing here depends on the embedded hub.
//!
//! # Rules
//! - A subscription is allowed only if *every* topic its pattern can match is allowed: one allowed
//!   pattern must cover it ([`covers`]). Covering by a union of patterns is not considered; that
//!   only ever refuses more, and no role needs it.
//! - A publish is allowed if its topic matches an allowed pattern and its reply-to, if any, is an
//!   inbox of the publisher's own (`_inbox.<own-id>.…`); the parent may name any reply-to.
//! - Replies: a service answers only on the requester's own inbox ([`reply_allowed`]); in the
//!   tables, hosts may publish only onto the parent's inboxes, the edge onto none.
//!
//! Nothing here allocates per check beyond substituting the member's id, or panics on any input.

use std::fmt;

use crate::topic;
use crate::trust::TRUST_UPDATE_TOPIC;

/// The first token of every inbox topic.
pub const INBOX: &str = "_inbox";
/// The id of the parent in topics: all of the key service's components share its inboxes.
pub const PARENT_ID: &str = "parent";

/// What a member is on the bus, fixed by its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The ring's parent (the control plane, its hub): every topic.
    Parent,
    /// A host's agent.
    Host,
    /// The edge: HTTP router and DNS.
    Edge,
    /// A key joined without a node: the trust topic, its own inbox, and topics outside the
    /// platform's namespaces.
    Member,
}

impl Role {
    /// The role as spelled before the `:` of a certificate's common name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Host => "host",
            Role::Edge => "edge",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// First tokens the platform's own topics use. A `member` may use only topics outside them (its
/// own inbox and the trust topic aside).
pub const PLATFORM_NAMESPACES: &[&str] =
    &["state", INBOX, "packages", "logs", "stats", "observe", "edge", "keys"];

/// Allowed patterns of one role; `{id}` stands for the member's id.
struct Rules {
    subscribe: &'static [&'static str],
    publish: &'static [&'static str],
}

/// Everything the agent does on the bus: follow trust and its own desired set, answer the
/// parent's log requests, report observations (its own and its children's: see below), use,
/// and ask the package store for chunks.
///
/// `observe.*` and not `observe.{id}`: a host reports on the instances it supervises, whose ids
/// the hub does not know; the key service stores a report only from the key bound to the node
/// or to its supervisor, so a host cannot speak for another host's nodes.
const HOST: Rules = Rules {
    subscribe: &[TRUST_UPDATE_TOPIC, "state.desired.{id}", "logs.{id}", "_inbox.{id}.>"],
    publish: &[
        "observe.*",
        "stats.{id}",
        "packages.fetch",
        "_inbox.parent.>",
        "keys.certificate",
        "keys.rotate",
    ],
};

/// The edge follows trust, the route table and the zone, and reports on itself.
const EDGE: Rules = Rules {
    subscribe: &[TRUST_UPDATE_TOPIC, "state.routes", "state.dns", "_inbox.{id}.>"],
    publish: &["observe.{id}", "edge.{id}", "keys.certificate", "keys.rotate"],
};

/// On top of topics outside [`PLATFORM_NAMESPACES`].
const MEMBER: Rules = Rules {
    subscribe: &[TRUST_UPDATE_TOPIC, "_inbox.{id}.>"],
    publish: &["keys.certificate", "keys.rotate"],
};

/// Permissions of one member, spelled out: what a NATS user of this member gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Patterns it may subscribe to, with the member's id filled in (`>` alone for the parent).
    pub subscribe: Vec<String>,
    /// Patterns of topics it may publish on, with the member's id filled in.
    pub publish: Vec<String>,
    /// Reply-to topics a publish may name; `None`: any.
    pub reply_to: Option<String>,
    /// Also allowed: any topic whose first token is not one of [`PLATFORM_NAMESPACES`].
    pub outside_platform: bool,
}

/// Why a common name is not a member identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberNameError {
    /// The common name has no `:`, so it is not one the key service wrote.
    #[error("the certificate's common name names no bus role (expected role:id)")]
    NoRole,
    /// The text before the `:` is not a role (cut to 16 characters, as it came from outside).
    #[error("unknown bus role {0:?}")]
    UnknownRole(String),
    /// The id does not have its role's shape: a lowercase hyphenated uuid for hosts and edges,
    /// 32 lowercase hex digits for members, 1 to 48 of `a-z 0-9 - _` for a parent's name.
    #[error("the {role} id {id:?} is not valid")]
    BadId {
        /// The role the id was given for.
        role: Role,
        /// The id as given.
        id: String,
    },
}

/// A member of the ring's bus as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    role: Role,
    /// One topic token: the node uuid, key prefix, or [`PARENT_ID`].
    id: String,
    /// The parent component's name, for logs only.
    name: String,
}

impl Member {
    /// A component of the parent machine named `name` (for logs; any printable text without
    /// `:` would do, but the name is kept to a topic-token alphabet).
    pub fn parent(name: &str) -> Result<Member, MemberNameError> {
        if name.is_empty() || name.len() > 48 || !name.bytes().all(is_name_byte) {
            return Err(MemberNameError::BadId { role: Role::Parent, id: name.to_owned() });
        }
        Ok(Member { role: Role::Parent, id: PARENT_ID.to_owned(), name: name.to_owned() })
    }

    /// The host or edge bound to node `uuid` (hyphenated, lowercase).
    pub fn node(role: Role, uuid: &str) -> Result<Member, MemberNameError> {
        if !matches!(role, Role::Host | Role::Edge) || !is_uuid(uuid) {
            return Err(MemberNameError::BadId { role, id: uuid.to_owned() });
        }
        Ok(Member { role, id: uuid.to_owned(), name: uuid.to_owned() })
    }

    /// A key joined without a node; `key_hex` is its public key in hex (the id is its first 128
    /// bits).
    pub fn keyed(key_hex: &str) -> Result<Member, MemberNameError> {
        let id = key_hex.get(..32).unwrap_or_default();
        if !is_lower_hex(id, 32) {
            return Err(MemberNameError::BadId { role: Role::Member, id: key_hex.to_owned() });
        }
        Ok(Member { role: Role::Member, id: id.to_owned(), name: id.to_owned() })
    }

    /// Parse a certificate common name written by [`Member::common_name`].
    pub fn from_common_name(cn: &str) -> Result<Member, MemberNameError> {
        let Some((role, rest)) = cn.split_once(':') else { return Err(MemberNameError::NoRole) };
        match role {
            "parent" => Member::parent(rest),
            "host" => Member::node(Role::Host, rest),
            "edge" => Member::node(Role::Edge, rest),
            "member" if is_lower_hex(rest, 32) => Member::keyed(rest),
            "member" => Err(MemberNameError::BadId { role: Role::Member, id: rest.to_owned() }),
            other => Err(MemberNameError::UnknownRole(other.chars().take(16).collect())),
        }
    }

    /// The common name the key service writes into this member's certificate. At most 43
    /// bytes, and never a valid node label (labels have no `:`), so a label chosen by a
    /// joining node cannot be mistaken for it.
    pub fn common_name(&self) -> String {
        match self.role {
            Role::Parent => format!("parent:{}", self.name),
            role => format!("{}:{}", role.name(), self.id),
        }
    }

    /// What the member is, which picks its access rules.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The member's id as it appears in topics.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `_inbox.<id>`: every inbox of this member is below it.
    pub fn inbox_prefix(&self) -> String {
        format!("{INBOX}.{}", self.id)
    }

    fn rules(&self) -> Option<&'static Rules> {
        match self.role {
            Role::Parent => None,
            Role::Host => Some(&HOST),
            Role::Edge => Some(&EDGE),
            Role::Member => Some(&MEMBER),
        }
    }

    fn expand(&self, pattern: &str) -> String {
        pattern.replace("{id}", &self.id)
    }

    /// Whether this member may subscribe to `pattern` (a valid pattern): every topic it can
    /// match must be allowed.
    pub fn may_subscribe(&self, pattern: &str) -> bool {
        let Some(rules) = self.rules() else { return true };
        if topic::validate_pattern(pattern).is_err() {
            return false;
        }
        if self.role == Role::Member && outside_platform(pattern) {
            return true;
        }
        rules.subscribe.iter().any(|allowed| covers(&self.expand(allowed), pattern))
    }

    /// Whether this member may publish on `topic` naming `reply_to`.
    pub fn may_publish(&self, topic: &str, reply_to: Option<&str>) -> bool {
        let Some(rules) = self.rules() else { return true };
        if topic::validate_topic(topic).is_err() {
            return false;
        }
        if let Some(reply_to) = reply_to
            && !is_inbox_of(&self.id, reply_to)
        {
            return false;
        }
        if self.role == Role::Member && outside_platform(topic) {
            return true;
        }
        rules.publish.iter().any(|allowed| topic::matches(&self.expand(allowed), topic))
    }

    /// The permissions this member has, spelled out (what a NATS user of it is given).
    pub fn permissions(&self) -> Permissions {
        match self.rules() {
            None => Permissions {
                subscribe: vec![">".into()],
                publish: vec![">".into()],
                reply_to: None,
                outside_platform: true,
            },
            Some(rules) => Permissions {
                subscribe: rules.subscribe.iter().map(|p| self.expand(p)).collect(),
                publish: rules.publish.iter().map(|p| self.expand(p)).collect(),
                reply_to: Some(format!("{}.>", self.inbox_prefix())),
                outside_platform: self.role == Role::Member,
            },
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.common_name())
    }
}

/// Whether `reply_to` is an inbox of the member whose id is `id`: `_inbox.<id>.` and at least
/// one more token, no wildcard.
pub fn is_inbox_of(id: &str, reply_to: &str) -> bool {
    let Some(rest) = reply_to.strip_prefix(INBOX).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(id).and_then(|r| r.strip_prefix('.')) else { return false };
    !id.is_empty() && !rest.is_empty() && topic::validate_topic(reply_to).is_ok()
}

/// Whether a service may answer a request from the member whose id is `requester_id` on
/// `reply_to`: only on that requester's own inbox. `requester_id` comes from the request's
/// verified sender key, never from the request itself.
pub fn reply_allowed(requester_id: &str, reply_to: &str) -> bool {
    is_inbox_of(requester_id, reply_to)
}

/// A fresh inbox of the member whose id is `id`: `_inbox.<id>.<128 random bits in hex>`.
pub fn inbox_for(id: &str) -> Result<String, getrandom::Error> {
    let random = crate::transport::random_inbox()?;
    // `random_inbox` is `_inbox.<hex>`; keep the hex.
    let hex = random.rsplit('.').next().unwrap_or_default();
    Ok(format!("{INBOX}.{id}.{hex}"))
}

/// Whether every topic `pattern` matches is matched by `allowed` (both valid patterns).
///
/// Token by token: a literal in `allowed` covers only the same literal; `*` covers a literal or
/// `*` (exactly one token either way) but not `>`; a trailing `>` covers one or more remaining
/// tokens of any kind. Lengths must agree unless `allowed` ends in `>`.
pub fn covers(allowed: &str, pattern: &str) -> bool {
    let mut want = pattern.split('.');
    for a in allowed.split('.') {
        let Some(p) = want.next() else { return false };
        match (a, p) {
            (">", _) => return true,
            ("*", ">") => return false,
            ("*", _) => {}
            (_, "*" | ">") => return false,
            (lit, p) if lit == p => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// Whether every topic `pattern` can match lies outside the platform's namespaces: its first
/// token is a literal that is not one of them.
fn outside_platform(pattern: &str) -> bool {
    let first = pattern.split('.').next().unwrap_or_default();
    first != "*" && first != ">" && !PLATFORM_NAMESPACES.contains(&first)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `8-4-4-4-12` lowercase hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| is_lower_hex(g, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H1: &str = "6f1c2a3e-0b1d-4c5e-8f90-a1b2c3d4e5f6";
    const H2: &str = "0a0b0c0d-1111-4222-8333-444455556666";

    fn host() -> Member {
        Member::node(Role::Host, H1).expect("host")
    }

    fn edge() -> Member {
        Member::node(Role::Edge, H1).expect("edge")
    }

    #[test]
    fn common_names_round_trip_and_refuse_anything_else() {
        let key = "ab".repeat(32);
        for m in [
            Member::parent("control-plane").expect("parent"),
            host(),
            edge(),
            Member::keyed(&key).expect("k"),
        ] {
            assert_eq!(Member::from_common_name(&m.common_name()), Ok(m.clone()));
            assert!(m.common_name().len() <= 64, "fits the CA's name limit");
        }
        assert_eq!(Member::keyed(&key).expect("k").id(), &key[..32]);
        assert_eq!(Member::parent("hub").expect("p").id(), PARENT_ID);
        for bad in [
            "control-plane",
            "h1",
            "",
            ":",
            "root:x",
            "parent:",
            "parent:a.b",
            "parent:>",
            "host:h1",
            "host:6F1C2A3E-0B1D-4C5E-8F90-A1B2C3D4E5F6",
            "host:6f1c2a3e-0b1d-4c5e-8f90-a1b2c3d4e5f6.x",
            "edge:*",
            "member:abc",
            "member:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert!(Member::from_common_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Member::from_common_name("h1"), Err(MemberNameError::NoRole));
    }

    #[test]
    fn covering_patterns() {
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.c"));
        assert!(!covers("a.b", "a.*"));
        assert!(!covers("a.b", "a.>"));
        assert!(!covers("a.b", ">"));
        assert!(covers("a.*", "a.b"));
        assert!(covers("a.*", "a.*"));
        assert!(!covers("a.*", "a.>"));
        assert!(!covers("a.*", "a.b.c"));
        assert!(!covers("a.*", "a"));
        assert!(covers("a.>", "a.b"));
        assert!(covers("a.>", "a.b.c"));
        assert!(covers("a.>", "a.*"));
        assert!(covers("a.>", "a.>"));
        assert!(covers("a.>", "a.*.>"));
        assert!(!covers("a.>", "a"));
        assert!(!covers("a.>", "*.b"));
        assert!(!covers("a.>", ">"));
        assert!(covers(">", ">"));
        assert!(covers(">", "*.x"));
        assert!(!covers("*", ">"));
        assert!(!covers("*.b", "*.>"));
    }

    #[test]
    fn a_host_subscribes_to_its_own_topics_only() {
        let h = host();
        for ok in [
            "state.trust".to_owned(),
            format!("state.desired.{H1}"),
            format!("logs.{H1}"),
            format!("_inbox.{H1}.0123"),
            format!("_inbox.{H1}.>"),
            format!("_inbox.{H1}.*"),
        ] {
            assert!(h.may_subscribe(&ok), "{ok}");
        }
        for refused in [
            ">".to_owned(),
            "*.>".to_owned(),
            "state.>".to_owned(),
            "state.*".to_owned(),
            "state.desired.*".to_owned(),
            "state.desired.>".to_owned(),
            format!("state.desired.{H2}"),
            "state.routes".to_owned(),
            "packages.fetch".to_owned(),
            format!("logs.{H2}"),
            "_inbox.>".to_owned(),
            "_inbox.*.>".to_owned(),
            "_inbox.parent.>".to_owned(),
            format!("_inbox.{H2}.x"),
            format!("_inbox.{H1}"),
            "test.>".to_owned(),
            "observe.*".to_owned(),
        ] {
            assert!(!h.may_subscribe(&refused), "{refused}");
        }
    }

    #[test]
    fn a_host_publishes_reports_requests_and_replies_to_the_parent() {
        let h = host();
        let inbox = format!("_inbox.{H1}.77");
        assert!(h.may_publish(&format!("observe.{H1}"), None));
        assert!(h.may_publish(&format!("observe.{H2}"), None), "children's observations");
        assert!(h.may_publish(&format!("stats.{H1}"), None));
        assert!(h.may_publish("packages.fetch", Some(&inbox)));
        assert!(h.may_publish("_inbox.parent.abc", None));
        for (topic, reply_to) in [
            ("state.trust", None),
            ("state.routes", None),
            ("state.dns", None),
            (&*format!("state.desired.{H1}"), None),
            (&*format!("stats.{H2}"), None),
            (&*format!("observe.{H1}.x"), None),
            (&*format!("edge.{H1}"), None),
            (&*format!("logs.{H2}"), None),
            (&*format!("_inbox.{H2}.abc"), None),
            ("test.x", None),
            // A request must name the requester's own inbox.
            ("packages.fetch", Some(&*format!("state.desired.{H2}"))),
            ("packages.fetch", Some("_inbox.parent.x")),
            ("packages.fetch", Some(&*format!("_inbox.{H2}.x"))),
            ("packages.fetch", Some(&*format!("_inbox.{H1}"))),
        ] {
            assert!(!h.may_publish(topic, reply_to), "{topic} reply-to {reply_to:?}");
        }
    }

    #[test]
    fn the_edge_follows_routes_and_zone_and_reports_on_itself() {
        let e = edge();
        for ok in ["state.trust", "state.routes", "state.dns"] {
            assert!(e.may_subscribe(ok), "{ok}");
        }
        for refused in [format!("state.desired.{H1}"), "state.>".into(), format!("logs.{H1}"), ">".into()] {
            assert!(!e.may_subscribe(&refused), "{refused}");
        }
        assert!(e.may_publish(&format!("observe.{H1}"), None));
        assert!(e.may_publish(&format!("edge.{H1}"), None));
        for refused in
            [format!("observe.{H2}"), format!("edge.{H2}"), "state.routes".into(), "_inbox.parent.x".into()]
        {
            assert!(!e.may_publish(&refused, None), "{refused}");
        }
    }

    #[test]
    fn a_node_less_member_keeps_out_of_the_platforms_topics() {
        let m = Member::keyed(&"cd".repeat(32)).expect("member");
        let inbox = format!("_inbox.{}.1", m.id());
        assert!(m.may_subscribe("test.>"));
        assert!(m.may_subscribe("state.trust"));
        assert!(m.may_subscribe(&inbox));
        assert!(m.may_publish("test.x", Some(&inbox)));
        for refused in [">", "*.x", "state.>", "packages.fetch", "_inbox.>", "observe.*", "edge.>"] {
            assert!(!m.may_subscribe(refused), "{refused}");
        }
        assert!(!m.may_publish("state.trust", None));
        assert!(!m.may_publish("packages.fetch", Some(&inbox)));
        assert!(!m.may_publish("test.x", Some("_inbox.parent.1")));
    }

    #[test]
    fn the_parent_may_do_anything() {
        let p = Member::parent("control-plane").expect("parent");
        assert!(p.may_subscribe(">"));
        assert!(p.may_publish("state.trust", None));
        assert!(p.may_publish(&format!("_inbox.{H1}.1"), None));
        assert!(p.may_publish("logs.x", Some("_inbox.parent.1")));
        assert_eq!(p.permissions().subscribe, [">"]);
    }

    #[test]
    fn replies_go_only_to_the_requesters_inbox() {
        assert!(reply_allowed(H1, &format!("_inbox.{H1}.abc")));
        assert!(reply_allowed(H1, &format!("_inbox.{H1}.abc.def")));
        assert!(!reply_allowed(H1, &format!("_inbox.{H1}")));
        assert!(!reply_allowed(H1, &format!("_inbox.{H1}x.abc")));
        assert!(!reply_allowed(H1, &format!("_inbox.{H2}.abc")));
        assert!(!reply_allowed(H1, &format!("state.desired.{H1}")));
        assert!(!reply_allowed(H1, &format!("_inbox.{H1}.*")));
        assert!(!reply_allowed("", "_inbox..x"));
        let inbox = inbox_for(H1).expect("random");
        assert!(reply_allowed(H1, &inbox), "{inbox}");
        assert_ne!(inbox, inbox_for(H1).expect("random"));
    }

    #[test]
    fn permissions_spell_out_the_table() {
        let p = host().permissions();
        assert!(p.subscribe.contains(&format!("state.desired.{H1}")));
        assert_eq!(p.reply_to, Some(format!("_inbox.{H1}.>")));
        assert!(!p.outside_platform);
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_owned()), "[a-c]{1,2}"]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(token(), 1..5), any::<bool>()).prop_map(|(mut t, tail)| {
            if tail {
                t.push(">".into());
            }
            t.join(".")
        })
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in any::<String>()) {
            let _ = Member::from_common_name(&s);
            let _ = is_inbox_of(&s, &s);
        }

        /// `covers` is sound: when it says yes, every concrete topic the pattern matches (made by
        /// filling its wildcards) is matched by the allowed pattern.
        #[test]
        fn covering_is_sound(allowed in pattern(), wanted in pattern(), fill in "[a-c]{1,2}", extra in 1usize..3) {
            if covers(&allowed, &wanted) {
                assert_every_instance_matches(&allowed, &wanted, &fill, extra)?;
            }
        }

        /// Narrowing an allowed pattern (a wildcard made literal, `>` made longer) keeps it
        /// covered, and widening it (a literal made `*`, a tail made `>`) does not.
        #[test]
        fn narrowing_keeps_a_pattern_covered(allowed in pattern(), picks in prop::collection::vec(any::<bool>(), 8), lit in "[a-c]{1,2}", fill in "[a-c]{1,2}") {
            let tokens: Vec<&str> = allowed.split('.').collect();
            let narrowed: Vec<String> = tokens
                .iter()
                .zip(picks.iter().cycle())
                .map(|(t, &pick)| match (*t, pick) {
                    ("*", true) => lit.clone(),
                    (">", true) => format!("{lit}.>"),
                    (t, _) => t.to_owned(),
                })
                .collect();
            let narrowed = narrowed.join(".");
            prop_assert!(covers(&allowed, &narrowed), "{allowed} should cover {narrowed}");
            assert_every_instance_matches(&allowed, &narrowed, &fill, 2)?;
            if let Some(i) = tokens.iter().position(|t| *t != "*" && *t != ">") {
                let mut wider: Vec<&str> = tokens.clone();
                wider[i] = "*";
                prop_assert!(!covers(&allowed, &wider.join(".")));
            }
            if tokens.last() != Some(&">") {
                let mut wider = tokens.clone();
                *wider.last_mut().expect("a token") = ">";
                prop_assert!(!covers(&allowed, &wider.join(".")));
            }
        }
    }

    fn assert_every_instance_matches(
        allowed: &str,
        wanted: &str,
        fill: &str,
        extra: usize,
    ) -> Result<(), TestCaseError> {
        let mut tokens: Vec<String> =
            wanted.split('.').map(|t| if t == "*" { fill.to_owned() } else { t.to_owned() }).collect();
        if tokens.last().map(String::as_str) == Some(">") {
            tokens.pop();
            tokens.extend(std::iter::repeat_n(fill.to_owned(), extra));
        }
        let topic = tokens.join(".");
        prop_assert!(topic::matches(wanted, &topic));
        prop_assert!(topic::matches(allowed, &topic), "{allowed} covers {wanted} but not {topic}");
        Ok(())
    }
}
