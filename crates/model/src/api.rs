//! The wire types of the HTTP API, version 1 (`/v1`). The server and the client both use these
//! and nothing else; a breaking change means a `/v2`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Kind, Object, Ring, Spec};

/// The API version: the first segment of every API path (`/v1/...`).
pub const VERSION: &str = "v1";

/// The largest request body the API accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `POST /v1/<kind>s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CreateRequest_{S}", bound = "S: Spec", transform = label_required::<S>)]
pub struct CreateRequest<S> {
    /// The account the object belongs to. Absent means the caller's own account: the system
    /// account for the operator's principals, or the one account a tenant is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
    /// The ring the object is created in; it cannot change later.
    pub ring: Ring,
    /// The object's name; kinds that are named need one. `null` is the same as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::validate::optional_label_schema")]
    pub label: Option<String>,
    /// Selector labels to set; absent or empty sets none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::validate::labels_schema")]
    pub labels: BTreeMap<String, String>,
    /// The kind's spec, checked by the kind's rules and its references' ring rules.
    pub spec: S,
}

/// `PUT /v1/<kind>s/{uuid}`: replaces label, labels and spec. The ring cannot change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "UpdateRequest_{S}", bound = "S: Spec", transform = label_required::<S>)]
pub struct UpdateRequest<S> {
    /// The revision the change is based on; the update is refused with 409 if the object has
    /// changed since.
    #[schemars(range(min = 1))]
    pub revision: i64,
    /// The object's name; kinds that are named need one. `null` is the same as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::validate::optional_label_schema")]
    pub label: Option<String>,
    /// The complete new selector labels: absent or empty removes them all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::validate::labels_schema")]
    pub labels: BTreeMap<String, String>,
    /// The complete new spec; it replaces the stored one, and the kind's update rules (a task's
    /// state machine, fields referrers rely on) are checked against the old one.
    pub spec: S,
}

/// Where a kind is named ([`Kind::named`]), its create and update requests must carry a label,
/// and the schema says so, as the registry does.
fn label_required<S: Spec>(schema: &mut schemars::Schema) {
    if !S::KIND.named() {
        return;
    }
    if let Some(label) = schema.get_mut("properties").and_then(|p| p.get_mut("label")) {
        label["type"] = "string".into();
    }
    if let Some(required) = schema.get_mut("required").and_then(serde_json::Value::as_array_mut) {
        required.push("label".into());
    }
}

/// A list, with the store revision it was read at (watch from `revision + 1` to follow it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "List_{S}")]
pub struct List<S> {
    /// The matching objects, ordered by ring, then label, then creation time.
    pub items: Vec<Object<S>>,
    /// The store revision the list was read at.
    #[schemars(range(min = 0))]
    pub revision: i64,
}

/// The path of `/v1/<kind>s/{uuid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectPath {
    /// The object's uuid.
    pub uuid: Uuid,
}

/// The path of `/v1/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPath {
    /// The token's id, as [`TokenInfo::id`] gives it (not the secret).
    pub id: Uuid,
}

/// The path of `/v1/keys/{id}/…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPath {
    /// The Ed25519 public key, hex.
    #[schemars(regex(pattern = KEY_ID_PATTERN))]
    pub id: String,
}

/// A bus key id: an Ed25519 public key (32 bytes) in lowercase hex.
pub const KEY_ID_PATTERN: &str = "^[0-9a-f]{64}$";

/// The path of `/v1/apps/{app}/…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPath {
    /// The app's name.
    #[schemars(regex(pattern = crate::kinds::APP_NAME_PATTERN), length(min = 1, max = 40))]
    pub app: String,
}

/// Filters of `GET /v1/<kind>s`; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only objects of this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
    /// Only objects in this ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<Ring>,
    /// Only objects whose spec places them in this compartment ([`Spec::compartment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment: Option<Uuid>,
    /// Only objects that serve this tier ([`Spec::tiers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Uuid>,
    /// Only the object with this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Only objects whose parent this is ([`Spec::parent`]: a node's supervisor, an observation's
    /// node, a release's app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
    /// Selector labels, `key=value[,key=value]`: every pair must match. Keys end at the
    /// first `=`; pairs are separated by `,`, which neither keys nor values may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SELECTOR_PATTERN))]
    pub selector: Option<String>,
}

/// What a list's `selector` may be: empty, or `key=value` pairs separated by `,` (the
/// registry's selector parser accepts exactly these).
pub const SELECTOR_PATTERN: &str = "^([^,=]*=[^,]*(,[^,=]*=[^,]*)*)?$";

/// Query of `DELETE /v1/<kind>s/{uuid}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete only if the object is still at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}

/// Query of `GET /v1/watch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// The first revision to deliver; absent means changes after now. A reconnecting client
    /// may send `Last-Event-ID` instead (the last revision it saw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub from: Option<i64>,
    /// Only changes to objects of this kind; absent means every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

/// What happened to an object in a [`WatchEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// Created or updated.
    Put,
    /// Deleted; the event carries the object as it was.
    Deleted,
}

/// One changed object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchEvent {
    /// Whether the object was written or deleted. Written `type` in the JSON.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The object's kind, which says how to read `object`.
    pub kind: Kind,
    /// The object after the change, or as it was when deleted.
    pub object: serde_json::Value,
}

/// Everything one store transaction changed: one server-sent event whose id is `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchBatch {
    /// The store revision of the transaction; batches arrive in increasing revision order.
    #[schemars(range(min = 1))]
    pub revision: i64,
    /// The objects the transaction wrote or deleted that the caller may watch (and of the
    /// kind asked for); may be empty, as the revision still moves.
    pub events: Vec<WatchEvent>,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// A URI naming the sort of error (`urn:enjin:problem:not-found`); stable, for programs to
    /// match on. Written `type` in the JSON.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The HTTP status's reason phrase (`Not Found`).
    pub title: String,
    /// The HTTP status code, the same as the response's.
    pub status: u16,
    /// What went wrong in this case, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A URI for this occurrence of the problem; the server does not set it today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request field at fault, as a JSON path (`spec.parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    /// Who the token speaks for; the principal's memberships give it its roles.
    #[schemars(schema_with = "crate::validate::label_schema")]
    pub principal: String,
    /// What the token is for, for people; at most 1,024 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub description: String,
    /// The account the token acts in, and belongs to. Absent: every account where its creator
    /// holds permissions, and it belongs to the creator's own account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
    /// Narrow the token to this role's permissions (a role of `account` or of the system
    /// account); absent: the creator's own permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Uuid>,
    /// Seconds until the token stops working; absent: it works until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

/// An API token as listed: never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// The token's id: names it for listing and revocation; not a secret.
    pub id: Uuid,
    /// The principal the token speaks for.
    pub principal: String,
    /// What the token is for, as given on creation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When the token was issued.
    pub created_at: DateTime<Utc>,
    /// The account the token belongs to.
    pub account: Uuid,
    /// The principal that created it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// The role it is narrowed to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Uuid>,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Every permission the token can ever use, per account (`*` for every account), as
    /// `verb resource` pairs: never more than its creator held when it was made.
    pub ceiling: BTreeMap<String, Vec<String>>,
}

/// A new token; the secret is shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenCreated {
    /// The token as listed.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret bearer token, for `Authorization: Bearer`. Shown this once: the server keeps
    /// only a digest of it.
    pub token: String,
    /// The same token as a root biscuit (`enjinb_…`): its holder can derive narrower tokens
    /// from it offline (`enjin token attenuate`). Shown this once, like `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biscuit: Option<String>,
}

/// `POST /v1/tokens/revoke-derived`: revoke a biscuit and everything derived from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeDerivedRequest {
    /// The biscuit (`enjinb_…`) to revoke.
    pub biscuit: String,
}

/// A list of API tokens, as `GET /v1/tokens` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    /// The tokens the caller may list; never their secrets.
    pub items: Vec<TokenInfo>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` whenever the server answers at all.
    pub status: String,
    /// The server's version (its package version).
    pub version: String,
}

/// A bus identity as the control plane knows it: the public half only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyInfo {
    /// The Ed25519 public key, hex.
    pub id: String,
    /// The ring whose bus the key speaks on.
    pub ring: Ring,
    /// `parent` keys may change the ring's trust; `member` keys are the ring's nodes.
    pub role: String,
    /// The key's name, for people.
    pub label: String,
    /// The node the key speaks for, if it is bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// `active`, `retiring` (rotated; accepted until `not_after`), `retired` (past `not_after`)
    /// or `revoked`.
    pub state: String,
    /// When the key was recorded by the control plane.
    pub created_at: DateTime<Utc>,
    /// Until when a rotated key is accepted; absent for a key that was not rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// The key that replaced this one on rotation, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Whether this machine holds the private half (and so can rotate it).
    pub local: bool,
}

/// A list of bus keys, as `GET /v1/keys` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
    /// Every key of the rings the caller may read.
    pub items: Vec<KeyInfo>,
}

/// `POST /v1/keys/{id}/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key stays accepted, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_seconds: Option<u64>,
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreateRequest {
    /// The ring the child will join.
    pub ring: Ring,
    /// The node, one ring below, that will supervise the child.
    pub parent: Uuid,
    /// How long the token may be used, in seconds (default 900, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The node the joiner will speak for: a node of `ring` under `parent`. A token bound to a
    /// node joins as that node (a host, or the edge) whatever the join request says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
}

/// A join token; the secret is shown this once and works once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenCreated {
    /// The join token's id, for listing and revoking it.
    pub id: Uuid,
    /// The ring the child will join.
    pub ring: Ring,
    /// The node that will supervise the child.
    pub parent: Uuid,
    /// When the token stops working, used or not.
    pub expires_at: DateTime<Utc>,
    /// The node the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// The secret the child presents once, as its bearer token on `POST /v1/join`.
    pub token: String,
}

/// `POST /v1/join`, authenticated by a join token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joining node's label.
    pub label: String,
    /// Its Ed25519 public key, hex: its identity on the bus.
    pub public_key: String,
    /// A PEM certificate signing request for its TLS key (the key never leaves the child).
    pub csr_pem: String,
    /// The node this key speaks for: a node of the token's ring under the token's parent. A
    /// key bound to a node may report observations of it and of the nodes it supervises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// The joiner's NATS user public key (`U…`; it keeps the seed): on a cloud whose bus is
    /// NATS, the answer carries a user JWT for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_user: Option<String>,
}

/// What an agent reports about a node it runs (or about itself), on the bus topic
/// `observe.<node>`; the control plane stores it as the node's observation for that strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationReport {
    /// The node observed.
    pub node: Uuid,
    /// How it was observed; the stored observation for this node and strategy is replaced.
    pub strategy: crate::kinds::ObservationStrategy,
    /// What was seen.
    pub state: crate::kinds::ObservationState,
    /// When it was seen, by the reporter's clock.
    pub observed_at: DateTime<Utc>,
    /// What the reporter said, for people; empty is left out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The bus topic observations of `node` are reported on.
pub fn observation_topic(node: Uuid) -> String {
    format!("observe.{node}")
}

/// What a joining child gets: its certificate, the ring CA, and its trust bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JoinResponse {
    /// The ring the child joined.
    pub ring: Ring,
    /// The node that supervises the child.
    pub parent: Uuid,
    /// The child's TLS certificate (PEM), signed by the ring CA, for the bus.
    pub cert_pem: String,
    /// The ring CA's certificate (PEM), the only root the child trusts on the bus.
    pub ca_pem: String,
    /// The signed trust bundle (an encoded bus envelope, hex) from the parent ring.
    pub bundle: String,
    /// Where the ring's hub listens, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The node the child's key speaks for, when it joined as one (from its request or its
    /// token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// Where the ring's bus is and the child's user on it, when the bus is NATS and the request
    /// named a user key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsJoin>,
}

/// A joiner's place on a ring bus that runs on NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NatsJoin {
    /// The server, `tls://address:port`.
    pub url: String,
    /// The user JWT for the joiner's key, signed by the ring's account.
    pub jwt: String,
}

/// One bus message as `enjin bus tail` shows it, after verification by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusMessage {
    /// The ring whose bus carried it.
    pub ring: Ring,
    /// The message's topic.
    pub topic: String,
    /// The sender's key id, hex.
    pub sender: String,
    /// The sender's sequence number: each sender's messages are accepted only in increasing
    /// order, so a replay is refused.
    pub seq: u64,
    /// When the sender sent it, in milliseconds since the Unix epoch, by its clock.
    pub timestamp_ms: i64,
    /// The topic the sender wants an answer on, if it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The payload as text when it is UTF-8, else hex.
    pub payload: String,
    /// `utf-8` or `hex`.
    pub encoding: String,
}

/// Query of `GET /v1/bus/tail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// The ring whose bus to read (default 1).
    #[serde(default = "ring_one")]
    pub ring: Ring,
    /// A topic or pattern: `*` matches one token, `>` the rest.
    #[schemars(regex(pattern = TOPIC_PATTERN_PATTERN), length(min = 1, max = 256))]
    pub topic: String,
}

/// What `topic` of a bus tail may be: tokens of printable ASCII separated by `.`, each `*` or
/// free of `*` and `>`, the last one possibly `>` (the bus's pattern rules, in ASCII).
pub const TOPIC_PATTERN_PATTERN: &str =
    r"^(([\x21-\x29\x2b-\x2d\x2f-\x3d\x3f-\x7e]+|\*)\.)*([\x21-\x29\x2b-\x2d\x2f-\x3d\x3f-\x7e]+|\*|>)$";

fn ring_one() -> Ring {
    Ring::INFRASTRUCTURE
}

/// What a parent wants one of its children (a host) to run: the whole set, every time, on the
/// retained bus topic `state.desired.<node>` — level-triggered, so a host that missed updates
/// or restarted is brought level by the next (or the retained) message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredChildren {
    /// The host these are for.
    pub node: Uuid,
    /// The store revision the set was read at; a host ignores a set older than one it has.
    pub revision: i64,
    /// Every child the host should run, with how; a running child not listed is stopped.
    pub children: Vec<DesiredChild>,
    /// The host's firewall for its instances; absent leaves the host's firewall as it is
    /// (hosts without instance isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<HostFirewall>,
}

/// One child a host should run: its identity, how to run it, and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredChild {
    /// The child's node.
    pub uuid: Uuid,
    /// The node's label; empty if it has none.
    pub label: String,
    /// How the host runs the child.
    pub strategy: crate::kinds::Strategy,
    /// What the child runs.
    pub run: crate::kinds::RunSpec,
    /// The child's limits; absent ones are unlimited.
    #[serde(default)]
    pub resources: crate::kinds::Resources,
    /// The child's own network: its namespace's address and how the host reaches it. Absent
    /// for children that share the host's network (ring 1 services, hosts without isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ChildNetwork>,
}

/// An instance's place on the instance network: a network namespace of its own, joined to the
/// host's by a veth pair (`interface` on the host's side), holding `address` (from IPAM, a
/// `NetworkInterface` of the instance's node) with a default route through the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildNetwork {
    /// The instance's address in its namespace, from IPAM.
    pub address: std::net::IpAddr,
    /// The host-side veth's name (at most 15 bytes), derived from the node's uuid.
    pub interface: String,
    /// The namespace's name under `/run/netns`.
    pub netns: String,
    /// The resolvers the instance's `/etc/resolv.conf` names (port 53): the edge's DNS on the
    /// hosts network, which answers for the platform's zone.
    #[serde(default)]
    pub nameservers: Vec<std::net::IpAddr>,
}

/// What a host's firewall admits, computed by the control plane from the model (instances,
/// their addresses and accounts, access rules) and sent with the desired children; the agent
/// compiles it into one nftables transaction (`enjin_net::firewall`). Everything not admitted
/// here is dropped: the default is deny, as with a Kubernetes default-deny NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostFirewall {
    /// Where the router's connections come from: admitted to each instance's `port`.
    pub edge: Vec<std::net::IpAddr>,
    /// DNS servers an instance may query (UDP and TCP).
    #[serde(default)]
    pub dns: Vec<std::net::SocketAddr>,
    /// Ranges no instance may open a connection to (ring 0 and ring 1 networks: the hub, the
    /// API, agents, other hosts), whatever a rule says. The host's own addresses are always
    /// protected.
    pub protected: Vec<crate::kinds::Cidr>,
    /// The whole instance network: traffic to it leaves an instance's side freely and is
    /// judged by the receiving instance's ingress rules (on its own host).
    pub instance_network: Option<crate::kinds::Cidr>,
    /// One entry per isolated instance on this host, with its ingress and egress rules.
    pub instances: Vec<FirewallInstance>,
}

/// One instance's rules on its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallInstance {
    /// The instance's node.
    pub node: Uuid,
    /// The account that owns the instance.
    pub account: Uuid,
    /// The instance's address on the instance network.
    pub address: std::net::IpAddr,
    /// The host-side veth.
    pub interface: String,
    /// The port the edge reaches, if the instance serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Connections the instance accepts, beyond the edge's: first match wins, in order.
    #[serde(default)]
    pub ingress: Vec<FirewallRule>,
    /// Connections the instance may open outside the instance network: first match wins.
    #[serde(default)]
    pub egress: Vec<FirewallRule>,
}

/// One compiled access rule: the peers are addresses (an app selector already resolved to its
/// instances' addresses by the control plane).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    /// What the rule does with matching connections.
    pub action: crate::kinds::Action,
    /// The protocol matched.
    pub protocol: crate::kinds::Protocol,
    /// The ports matched; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<crate::kinds::PortRange>,
    /// The other end; empty means anywhere.
    #[serde(default)]
    pub peers: Vec<crate::kinds::Cidr>,
    /// The access rule it came from, for `enjin access-rule effective` and counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Uuid>,
}

/// `GET /v1/nodes/{uuid}/effective-rules`: what an instance's firewall admits beyond the
/// defaults (the edge to its port, DNS), first match wins in each list, with every app
/// selector resolved to the addresses of its instances now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectiveRules {
    /// The instance's node.
    pub node: Uuid,
    /// The account that owns the instance.
    pub account: Uuid,
    /// The app the instance belongs to.
    pub app: String,
    /// The instance's process type.
    pub process: String,
    /// The instance's address on the instance network.
    pub address: std::net::IpAddr,
    /// The port the edge reaches, if the instance serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Connections the instance accepts beyond the edge's; everything else is refused.
    pub ingress: Vec<EffectiveRule>,
    /// Connections the instance may open outside the instance network; everything else is
    /// refused. Traffic to other instances leaves freely and meets their ingress rules.
    pub egress: Vec<EffectiveRule>,
}

/// One access rule as it applies to one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectiveRule {
    /// The access rule.
    pub rule: Uuid,
    /// The access rule's label, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the rule does with matching connections.
    pub action: crate::kinds::Action,
    /// The protocol matched.
    pub protocol: crate::kinds::Protocol,
    /// The ports matched; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<crate::kinds::PortRange>,
    /// The rule's priority: lower is tried first.
    pub priority: u32,
    /// The other end as the rule names it: an address range, `app[:process]`, or `anywhere`.
    pub peer: String,
    /// The other end's addresses now; empty means anywhere.
    pub peers: Vec<crate::kinds::Cidr>,
}

/// The retained bus topic of a host's desired children.
pub fn desired_topic(node: Uuid) -> String {
    format!("state.desired.{node}")
}

/// The HTTP router's table, on the retained bus topic [`ROUTES_TOPIC`]: every route, whole,
/// each time (a snapshot). A router applies a table only if its version is newer than the one
/// it serves, and keeps serving the last one it applied while no newer one comes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// The store revision the table was computed at.
    pub version: i64,
    /// Every route, sorted by app; a route not in the table is no longer served.
    pub routes: Vec<RouteEntry>,
}

/// Requests whose `Host` is one of `hosts` (without a port, lowercase) and whose path starts
/// with `path_prefix` go to one of `backends`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// The app the route serves (its label), for metrics and error pages.
    pub app: String,
    /// The host names the route answers, lowercase, without a port.
    pub hosts: Vec<String>,
    /// `/` for the whole host.
    pub path_prefix: String,
    /// The app's healthy instances; empty means the app is known but nothing may serve it.
    pub backends: Vec<RouteBackend>,
}

/// One instance a route may send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBackend {
    /// The instance node.
    pub instance: Uuid,
    /// The instance node's label, for metrics and logs.
    pub label: String,
    /// The address the router connects to: the instance's address and port.
    pub addr: std::net::SocketAddr,
}

/// The retained bus topic of the route table.
pub const ROUTES_TOPIC: &str = "state.routes";

/// The DNS service's zone, on the retained bus topic [`DNS_TOPIC`], whole each time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsZone {
    /// The store revision the zone was computed at.
    pub version: i64,
    /// The zone's origin, e.g. `enjin.internal` (no trailing dot).
    pub origin: String,
    /// Every record of the zone; the zone holds nothing else.
    pub records: Vec<DnsRecord>,
}

/// One record; names are fully qualified, without a trailing dot, inside the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum DnsRecord {
    /// An IPv4 address record: a host (`<host>.hosts.<origin>`), an app (`<app>.<origin>`, the
    /// router's address) or an instance (`<instance>.<app>.<origin>`).
    A {
        /// The owner name.
        name: String,
        /// The address it resolves to.
        addr: std::net::Ipv4Addr,
    },
    /// A service record: one per routed instance of an app, under `_http._tcp.<app>.<origin>`.
    Srv {
        /// The owner name (`_http._tcp.<app>.<origin>`).
        name: String,
        /// Lower is tried first; every instance has the same.
        priority: u16,
        /// Share of the traffic among targets of equal priority.
        weight: u16,
        /// The port the instance serves on.
        port: u16,
        /// The instance's name, which has an `A` record in the zone.
        target: String,
    },
}

/// The retained bus topic of the DNS zone.
pub const DNS_TOPIC: &str = "state.dns";

/// A request, on the bus topic [`logs_topic`] of a host, for the logs of instances it runs;
/// the host's agent answers with [`LogsReply`] on the request's reply inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// The instances whose logs are asked for; each must run on, or have logs on, the host asked.
    pub instances: Vec<Uuid>,
    /// Only lines collected at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Per instance, only lines with a greater `seq` (a follower's cursor).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub after: BTreeMap<Uuid, u64>,
    /// At most this many lines per instance, the newest (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One line an instance wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// When the line was collected from the instance's output.
    pub at: DateTime<Utc>,
    /// The instance that wrote it.
    pub instance: Uuid,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Increases by one per line of the instance, across rotations and agent restarts.
    pub seq: u64,
    /// The line, without its newline.
    pub line: String,
}

/// A host's answer to a log request it will not serve, in place of a [`LogsReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRefused {
    /// Why the request was refused, for people (an unreadable request, an instance not on this
    /// host).
    pub error: String,
}

/// A host's answer to a [`LogsRequest`], sent on the request's reply inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsReply {
    /// Oldest first, per instance; instances interleaved by `at`.
    pub lines: Vec<LogLine>,
}

/// The bus topic a host answers log requests on.
pub fn logs_topic(host: Uuid) -> String {
    format!("logs.{host}")
}

/// What an instance uses now, read from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceStats {
    /// The instance's node.
    pub instance: Uuid,
    /// CPU time used since it started, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use now, in bytes (the cgroup's `memory.current`).
    pub memory_bytes: u64,
}

/// A host's periodic report of its instances' use, on the bus topic [`stats_topic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    /// The reporting host.
    pub node: Uuid,
    /// When the host read the numbers, by its clock.
    pub at: DateTime<Utc>,
    /// One entry per instance the host runs.
    pub instances: Vec<InstanceStats>,
}

/// The bus topic a host reports its instances' use on.
pub fn stats_topic(host: Uuid) -> String {
    format!("stats.{host}")
}

/// A request, on [`PACKAGES_TOPIC`], for part of a package from the package store; the
/// answer is the raw bytes (at most [`PACKAGE_CHUNK`]), empty past the end, on the reply inbox.
/// Packages are content-addressed, so the asker checks the whole by its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageChunkRequest {
    /// The package's digest (`sha256:` and 64 lowercase hex digits).
    pub digest: String,
    /// Where the chunk starts, in bytes from the start of the package.
    pub offset: u64,
}

/// The bus topic the package store answers chunk requests on.
pub const PACKAGES_TOPIC: &str = "packages.fetch";

/// The most bytes one chunk reply carries.
pub const PACKAGE_CHUNK: usize = 1024 * 1024;

/// `POST /v1/apps/{app}/deploys`: a new release of an app from an uploaded package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The app's manifest, as read from its `enjin.toml` or `Procfile`.
    pub manifest: crate::kinds::AppManifest,
    /// The uploaded package to run, as `POST /v1/packages` returned it.
    pub package: crate::kinds::PackageRef,
    /// The account a new app is made in; absent: the caller's own. An existing app stays in
    /// its account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
}

/// What an account's objects use, counted as its quota counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountUsage {
    /// Apps (app environments) the account has.
    pub apps: u32,
    /// Ring 2 instances.
    pub instances: u32,
    /// Their memory limits, added up.
    pub memory_bytes: u64,
    /// Their disk quotas, added up.
    pub disk_bytes: u64,
    /// The packages the account uploaded.
    pub package_bytes: u64,
}

/// An account with its quota and what it uses (`enjin account status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountStatus {
    /// The account.
    pub account: Object<crate::kinds::AccountSpec>,
    /// What the account's objects use now.
    pub usage: AccountUsage,
}

/// `GET /v1/account-status`: every account the caller may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountStatusList {
    /// One entry per account.
    pub items: Vec<AccountStatus>,
}

/// Query of `POST /v1/packages`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The account the package is stored for; absent: the caller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
}

/// A rollout under way: follow its task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RolloutStarted {
    /// The app's uuid (its app environment compartment).
    pub app: Uuid,
    /// The task the rollout runs as: watch it for progress and the outcome.
    pub task: Uuid,
    /// The release being rolled out.
    pub release: Uuid,
    /// That release's version.
    pub version: u32,
}

/// `POST /v1/apps/{app}/scale`: instances per process type of the live release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The new instance count per process type; types left out keep their count. Naming a type
    /// the live release does not have is refused.
    pub processes: BTreeMap<String, u32>,
}

/// `POST /v1/apps/{app}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; absent means the one before the live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// `POST /v1/packages`: what the package store holds for the uploaded bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PackageUploaded {
    /// The stored package, to name in a [`DeployRequest`].
    pub package: crate::kinds::PackageRef,
    /// Whether identical content was already stored (and so stored only once).
    pub existed: bool,
}

/// One instance of an app, as `enjin app status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceStatus {
    /// The instance's node.
    pub uuid: Uuid,
    /// The instance node's label.
    pub label: String,
    /// The process type it runs.
    pub process: String,
    /// The version of the release it runs; 0 if that release is not known.
    pub version: u32,
    /// The label of the host it runs on; empty if unknown.
    pub host: String,
    /// How it really runs: `unix-user` (in the sandbox: its own uid, cgroup and namespaces) or
    /// `process` (a plain process of the user its host's agent runs as: not isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::kinds::Strategy>,
    /// Where it serves: its address and port, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::SocketAddr>,
    /// `healthy`, `starting`, `unhealthy`, `failed` or `draining`.
    pub state: String,
    /// Whether the router sends it traffic.
    pub routed: bool,
    /// What its last observation said, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// CPU time used since it started, in seconds, from its host's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Memory in use, in bytes, from its host's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// `GET /v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppStatus {
    /// The app's name.
    pub name: String,
    /// The app's uuid (its app environment compartment).
    pub uuid: Uuid,
    /// The account that owns the app.
    pub account: Uuid,
    /// Where the router serves it.
    pub url: String,
    /// The live release's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Every instance of the app, of every release.
    pub instances: Vec<InstanceStatus>,
    /// The routers' counters for the app, as the edge nodes last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<AppTraffic>,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppList {
    /// Every app the caller may read.
    pub items: Vec<AppStatus>,
}

/// `GET /v1/apps/{app}/releases`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseList {
    /// The app's releases.
    pub items: Vec<Object<crate::kinds::ReleaseSpec>>,
}

/// Query of `GET /v1/apps/{app}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only lines collected at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// One instance, by label or uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// At most this many lines per instance, the newest (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One app's traffic through a router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppTraffic {
    /// The app's label.
    pub app: String,
    /// Responses sent, the router's own error pages included.
    pub requests: u64,
    /// Responses with a 5xx status, the router's own error pages included.
    pub responses_5xx: u64,
    /// Requests being served now.
    pub in_flight: u64,
    /// Time to response headers, estimated from the router's histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// Time to response headers at the 99th percentile, estimated from the router's histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Connections to instances that failed or timed out.
    pub connect_failures: u64,
    /// Requests sent again to another instance after a failure.
    pub retries: u64,
    /// Instances in the table the router serves.
    pub backends: u64,
}

/// What a ring 1 edge node (the HTTP router and DNS) reports every few seconds on
/// [`edge_topic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeReport {
    /// The edge node reporting.
    pub node: Uuid,
    /// When it made the report, by its clock.
    pub at: DateTime<Utc>,
    /// The version of the route table it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_version: Option<i64>,
    /// Per-app traffic, one entry per app in its table.
    pub apps: Vec<AppTraffic>,
    /// Its router's and DNS service's metrics, Prometheus text.
    pub metrics: String,
}

/// The bus topic an edge node reports on.
pub fn edge_topic(node: Uuid) -> String {
    format!("edge.{node}")
}

/// How a mutating request ended, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// 1xx–3xx: the change was made.
    Ok,
    /// 4xx: refused (forbidden, invalid, conflicting); nothing was changed.
    Refused,
    /// 5xx: the server failed; the change may or may not have been made.
    Failed,
}

impl AuditResult {
    /// The result an HTTP status stands for.
    pub fn of_status(status: u16) -> Self {
        match status {
            ..400 => AuditResult::Ok,
            400..500 => AuditResult::Refused,
            _ => AuditResult::Failed,
        }
    }

    /// The result as the audit log and `enjin audit` write it (`ok`, `refused`, `failed`).
    pub fn name(self) -> &'static str {
        match self {
            AuditResult::Ok => "ok",
            AuditResult::Refused => "refused",
            AuditResult::Failed => "failed",
        }
    }
}

/// What a request acted on: the kind of resource its permission names and, when known, the
/// object's uuid (from the path of an item route, or from the `Location` of a create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditObject {
    /// A kind name, or `token`, `key`, `join-token`, `join`.
    pub kind: String,
    /// The object's uuid, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// One authenticated mutating request (POST, PUT, PATCH, DELETE), as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the request arrived (UTC).
    pub time: DateTime<Utc>,
    /// The principal the token speaks for.
    pub principal: String,
    /// The id of the token the request presented.
    pub token: Uuid,
    /// The account the change was made in, where the handler said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
    /// The HTTP method.
    pub method: String,
    /// The verb of the route's permission (`create`, `update`, `delete`).
    pub verb: crate::kinds::Verb,
    /// The matched route template, e.g. `/v1/nodes/{uuid}`.
    pub route: String,
    /// The path as requested, without the query.
    pub path: String,
    /// What the request acted on.
    pub object: AuditObject,
    /// The HTTP status answered.
    pub status: u16,
    /// How the request ended, from `status`.
    pub result: AuditResult,
    /// The peer address of the connection, when the server knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::SocketAddr>,
    /// The caller's `X-Request-Id`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The most records `GET /v1/audit` returns at once, and how many when not asked.
pub const AUDIT_LIMIT_MAX: u32 = 1000;
/// How many records `GET /v1/audit` returns when no `limit` is given.
pub const AUDIT_LIMIT_DEFAULT: u32 = 100;

/// Query of `GET /v1/audit`; all given filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Only this principal's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub principal: Option<String>,
    /// At most this many records, the newest (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// `GET /v1/audit`: records newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditList {
    /// The records, newest first.
    pub items: Vec<AuditRecord>,
}
