//! The wire types of the HTTP API, version 1 (`/v1`). The server and the client both use these
//! and nothing else; a breaking change means a `/v2`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Kind, Object, Ring, Spec};

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
    pub ring: Ring,
    /// The object's name; kinds that are named need one. `null` is the same as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::validate::optional_label_schema")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::validate::labels_schema")]
    pub labels: BTreeMap<String, String>,
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::validate::labels_schema")]
    pub labels: BTreeMap<String, String>,
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
    pub items: Vec<Object<S>>,
    #[schemars(range(min = 0))]
    pub revision: i64,
}

/// The path of `/v1/<kind>s/{uuid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectPath {
    pub uuid: Uuid,
}

/// The path of `/v1/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenPath {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<Ring>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// Created or updated.
    Put,
    Deleted,
}

/// One changed object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub kind: Kind,
    /// The object after the change, or as it was when deleted.
    pub object: serde_json::Value,
}

/// Everything one store transaction changed: one server-sent event whose id is `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchBatch {
    #[schemars(range(min = 1))]
    pub revision: i64,
    pub events: Vec<WatchEvent>,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    pub id: Uuid,
    pub principal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
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
    #[serde(flatten)]
    pub info: TokenInfo,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
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
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// `active`, `retiring` (rotated; accepted until `not_after`) or `revoked`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Whether this machine holds the private half (and so can rotate it).
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
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
}

/// A join token; the secret is shown this once and works once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenCreated {
    pub id: Uuid,
    pub ring: Ring,
    pub parent: Uuid,
    pub expires_at: DateTime<Utc>,
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
}

/// What an agent reports about a node it runs (or about itself), on the bus topic
/// `observe.<node>`; the control plane stores it as the node's observation for that strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationReport {
    pub node: Uuid,
    pub strategy: crate::kinds::ObservationStrategy,
    pub state: crate::kinds::ObservationState,
    pub observed_at: DateTime<Utc>,
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
    pub ring: Ring,
    pub parent: Uuid,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The signed trust bundle (an encoded bus envelope, hex) from the parent ring.
    pub bundle: String,
    /// Where the ring's hub listens, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

/// One bus message as `enjin bus tail` shows it, after verification by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BusMessage {
    pub ring: Ring,
    pub topic: String,
    /// The sender's key id, hex.
    pub sender: String,
    pub seq: u64,
    pub timestamp_ms: i64,
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
    pub children: Vec<DesiredChild>,
    /// The host's firewall for its instances; absent leaves the host's firewall as it is
    /// (hosts without instance isolation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<HostFirewall>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredChild {
    pub uuid: Uuid,
    pub label: String,
    pub strategy: crate::kinds::Strategy,
    pub run: crate::kinds::RunSpec,
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
    pub instances: Vec<FirewallInstance>,
}

/// One instance's rules on its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallInstance {
    pub node: Uuid,
    pub account: Uuid,
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
    pub action: crate::kinds::Action,
    pub protocol: crate::kinds::Protocol,
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
    pub node: Uuid,
    pub account: Uuid,
    pub app: String,
    pub process: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub action: crate::kinds::Action,
    pub protocol: crate::kinds::Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<crate::kinds::PortRange>,
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
    pub routes: Vec<RouteEntry>,
}

/// Requests whose `Host` is one of `hosts` (without a port, lowercase) and whose path starts
/// with `path_prefix` go to one of `backends`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// The app the route serves (its label), for metrics and error pages.
    pub app: String,
    pub hosts: Vec<String>,
    /// `/` for the whole host.
    pub path_prefix: String,
    /// The app's healthy instances; empty means the app is known but nothing may serve it.
    pub backends: Vec<RouteBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBackend {
    /// The instance node.
    pub instance: Uuid,
    pub label: String,
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
    pub records: Vec<DnsRecord>,
}

/// One record; names are fully qualified, without a trailing dot, inside the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum DnsRecord {
    A { name: String, addr: std::net::Ipv4Addr },
    Srv { name: String, priority: u16, weight: u16, port: u16, target: String },
}

/// The retained bus topic of the DNS zone.
pub const DNS_TOPIC: &str = "state.dns";

/// A request, on the bus topic [`logs_topic`] of a host, for the logs of instances it runs;
/// the host's agent answers with [`LogsReply`] on the request's reply inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
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
    pub instance: Uuid,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Increases by one per line of the instance, across rotations and agent restarts.
    pub seq: u64,
    pub line: String,
}

/// A host's answer to a log request it will not serve, in place of a [`LogsReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRefused {
    pub error: String,
}

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
    pub instance: Uuid,
    /// CPU time used since it started, in nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
}

/// A host's periodic report of its instances' use, on the bus topic [`stats_topic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    pub node: Uuid,
    pub at: DateTime<Utc>,
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
    pub digest: String,
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
    pub manifest: crate::kinds::AppManifest,
    pub package: crate::kinds::PackageRef,
    /// The account a new app is made in; absent: the caller's own. An existing app stays in
    /// its account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
}

/// What an account's objects use, counted as its quota counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountUsage {
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
    pub account: Object<crate::kinds::AccountSpec>,
    pub usage: AccountUsage,
}

/// `GET /v1/account-status`: every account the caller may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountStatusList {
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
    pub app: Uuid,
    pub task: Uuid,
    pub release: Uuid,
    pub version: u32,
}

/// `POST /v1/apps/{app}/scale`: instances per process type of the live release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
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
    pub package: crate::kinds::PackageRef,
    /// Whether identical content was already stored (and so stored only once).
    pub existed: bool,
}

/// One instance of an app, as `enjin app status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceStatus {
    pub uuid: Uuid,
    pub label: String,
    pub process: String,
    pub version: u32,
    pub host: String,
    /// How it really runs: `unix-user` (in the sandbox: its own uid, cgroup and namespaces) or
    /// `process` (a plain process of the user its host's agent runs as: not isolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::kinds::Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::SocketAddr>,
    /// `healthy`, `starting`, `unhealthy`, `failed` or `draining`.
    pub state: String,
    /// Whether the router sends it traffic.
    pub routed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// `GET /v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppStatus {
    pub name: String,
    pub uuid: Uuid,
    /// The account that owns the app.
    pub account: Uuid,
    /// Where the router serves it.
    pub url: String,
    /// The live release's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub instances: Vec<InstanceStatus>,
    /// The routers' counters for the app, as the edge nodes last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<AppTraffic>,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppList {
    pub items: Vec<AppStatus>,
}

/// `GET /v1/apps/{app}/releases`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseList {
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
    pub app: String,
    /// Responses sent, the router's own error pages included.
    pub requests: u64,
    pub responses_5xx: u64,
    pub in_flight: u64,
    /// Time to response headers, estimated from the router's histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    pub connect_failures: u64,
    pub retries: u64,
    /// Instances in the table the router serves.
    pub backends: u64,
}

/// What a ring 1 edge node (the HTTP router and DNS) reports every few seconds on
/// [`edge_topic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeReport {
    pub node: Uuid,
    pub at: DateTime<Utc>,
    /// The version of the route table it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_version: Option<i64>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// One authenticated mutating request (POST, PUT, PATCH, DELETE), as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// When the request arrived (UTC).
    pub time: DateTime<Utc>,
    pub principal: String,
    /// The id of the token the request presented.
    pub token: Uuid,
    /// The account the change was made in, where the handler said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Uuid>,
    pub method: String,
    /// The verb of the route's permission (`create`, `update`, `delete`).
    pub verb: crate::kinds::Verb,
    /// The matched route template, e.g. `/v1/nodes/{uuid}`.
    pub route: String,
    /// The path as requested, without the query.
    pub path: String,
    pub object: AuditObject,
    /// The HTTP status answered.
    pub status: u16,
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
    pub items: Vec<AuditRecord>,
}
