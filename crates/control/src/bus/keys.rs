//! The ring's keys and its trust bundle: public halves and life cycle in the store at
//! `/keys/<ring>/<id>` (private halves never leave the machine that made them), join, rotation
//! and revocation, each one transaction compared against what it read; and the bundle built from
//! them, published whole, signed by the parent key, on the retained trust topic after every
//! change.

use super::{BusAuthority, BusError, EDGE_ROLE_LABEL, file_error, members, now_ms, to_json};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use enjin_bus::acl::{self, Member, Role};
use enjin_bus::identity::{Identity, KeyId};
use enjin_bus::transport::TransportError;
use enjin_bus::trust::{
    KeyRole, Publisher, TRUST_UPDATE_TOPIC, TrustBundle, TrustChange, TrustUpdate, TrustedKey,
};
use enjin_model::api::{JoinRequest, JoinResponse, KeyInfo};
use enjin_model::kinds::NodeSpec;
use enjin_model::{Ring, validate_label};
use enjin_store::{Compare, Op, StoreError, Txn};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::JoinGrant;
use crate::registry::RegistryError;

/// A key as stored: public half and life cycle only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KeyRecord {
    pub(super) id: KeyId,
    pub(super) ring: u8,
    pub(super) role: KeyRole,
    pub(super) label: String,
    #[serde(default)]
    pub(super) node: Option<Uuid>,
    /// The machine label that holds the private half, when that machine is a parent here.
    #[serde(default)]
    pub(super) holder: Option<String>,
    pub(super) revoked: bool,
    pub(super) created_at: DateTime<Utc>,
    #[serde(default)]
    pub(super) not_after: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) replaced_by: Option<KeyId>,
}

impl KeyRecord {
    /// A newly recorded, active key.
    pub(super) fn new(
        id: KeyId,
        ring: u8,
        role: KeyRole,
        label: &str,
        node: Option<Uuid>,
        holder: Option<String>,
    ) -> Self {
        KeyRecord {
            id,
            ring,
            role,
            label: label.to_string(),
            node,
            holder,
            revoked: false,
            created_at: Utc::now(),
            not_after: None,
            replaced_by: None,
        }
    }
}

pub(super) fn keys_prefix(ring: u8) -> String {
    format!("/keys/{ring}/")
}

pub(super) fn key_key(ring: u8, id: &KeyId) -> String {
    format!("/keys/{ring}/{id}")
}

impl BusAuthority {
    pub(super) async fn record_own_key(&self, id: KeyId) -> Result<(), BusError> {
        let k = key_key(self.ring, &id);
        let label = &self.config.label;
        let record =
            KeyRecord::new(id, self.ring, KeyRole::Parent, label, self.config.node, Some(label.clone()));
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        // Only the first start writes it; later starts find it.
        self.store.txn(Txn::new().when([Compare::absent(&k)]).then([Op::put(&k, value)])).await?;
        Ok(())
    }

    /// The ring's trust set as the store has it, versioned by the store revision it was read
    /// at, so versions only grow.
    pub async fn bundle(&self) -> Result<TrustBundle, BusError> {
        let range = self.store.range(&keys_prefix(self.ring)).await?;
        let mut keys = Vec::new();
        let mut records = Vec::new();
        for kv in &range.kvs {
            let r: KeyRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
            keys.push(TrustedKey {
                id: r.id,
                role: r.role,
                label: r.label.clone(),
                not_after_ms: r.not_after.map(|t| t.timestamp_millis()),
                revoked: r.revoked,
            });
            records.push(r);
        }
        if let Ok(mut p) = self.parents.write() {
            *p = keys
                .iter()
                .filter(|k| k.role == KeyRole::Parent && !k.revoked)
                .map(|k| (k.id, k.not_after_ms))
                .collect();
        }
        let table = members::AdmissionTable::from_records(&records);
        if let Ok(mut a) = self.admitted.write() {
            *a = table;
        }
        let version = u64::try_from(range.revision).unwrap_or(0);
        self.trust_version.fetch_max(version, std::sync::atomic::Ordering::Relaxed);
        Ok(TrustBundle { ring: self.ring, version, keys })
    }

    /// The newest trust bundle version this server has read.
    pub(crate) fn latest_trust_version(&self) -> u64 {
        self.trust_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current bundle as a signed envelope, for a child's birth.
    pub(super) async fn sealed_bundle(&self, publisher: &Publisher) -> Result<Vec<u8>, BusError> {
        let bundle = self.bundle().await?;
        let update = TrustUpdate { version: bundle.version, change: TrustChange::Replace(bundle) };
        let payload = update.to_json().map_err(BusError::from)?;
        publisher.seal(TRUST_UPDATE_TOPIC, None, payload, now_ms()).map_err(BusError::from)
    }

    /// Publish the whole bundle on the retained trust topic (level-triggered).
    pub async fn publish_trust(&self) -> Result<(), BusError> {
        self.publish_trust_as(&self.publisher()).await
    }

    pub(super) async fn publish_trust_as(&self, publisher: &Publisher) -> Result<(), BusError> {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return Ok(()) };
        let sealed = self.sealed_bundle(publisher).await?;
        match t.publish(TRUST_UPDATE_TOPIC, None, sealed) {
            Ok(()) => Ok(()),
            // The bundle is state: the next change or reconnect publishes it again.
            Err(TransportError::Full) => {
                tracing::warn!(ring = self.ring, "bus queue full; trust bundle will be republished");
                Ok(())
            }
            Err(e) => Err(BusError::from(e)),
        }
    }

    /// Every key of the ring, public halves and life cycle only, as the API lists them.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, BusError> {
        let range = self.store.range(&keys_prefix(self.ring)).await?;
        let mut out = Vec::new();
        for kv in &range.kvs {
            let r: KeyRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
            out.push(self.info(&r));
        }
        out.sort_by_key(|k| k.created_at);
        Ok(out)
    }

    pub(super) fn info(&self, r: &KeyRecord) -> KeyInfo {
        let now = Utc::now();
        let state = if r.revoked {
            "revoked"
        } else if r.not_after.is_some_and(|t| t <= now) {
            "retired"
        } else if r.not_after.is_some() {
            "retiring"
        } else {
            "active"
        };
        KeyInfo {
            id: r.id.to_string(),
            ring: Ring::new(i64::from(r.ring)).unwrap_or(Ring::INFRASTRUCTURE),
            role: match r.role {
                KeyRole::Parent => "parent".into(),
                KeyRole::Member => "member".into(),
            },
            label: r.label.clone(),
            node: r.node,
            state: state.into(),
            created_at: r.created_at,
            not_after: r.not_after,
            replaced_by: r.replaced_by.map(|k| k.to_string()),
            local: r.holder.as_deref() == Some(self.config.label.as_str()),
        }
    }

    pub(super) async fn record(&self, id: &str) -> Result<(KeyRecord, i64), BusError> {
        let key: KeyId = id.parse().map_err(|_| BusError::NoSuchKey(id.to_string(), self.ring))?;
        let kv = self.store.get(&key_key(self.ring, &key)).await?;
        let kv = kv.ok_or_else(|| BusError::NoSuchKey(id.to_string(), self.ring))?;
        let r: KeyRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        Ok((r, kv.mod_revision))
    }

    /// Rotate a key this machine holds: a new key takes over at once, the old one stays
    /// accepted for `overlap`. The bundle announcing it is signed by the old key, which every
    /// node still trusts; from then on this machine signs with the new one.
    pub async fn rotate(&self, id: &str, overlap: Duration) -> Result<KeyInfo, BusError> {
        let (old, rev) = self.record(id).await?;
        let current = self.publisher();
        if old.id != current.identity().key_id() || old.revoked || old.not_after.is_some() {
            return Err(BusError::Refused(format!(
                "key {} is not the active key this machine holds; a node rotates its own key",
                old.id.short()
            )));
        }
        let fresh = Identity::generate().map_err(BusError::from)?;
        let path = self.config.keys_dir.join(format!("ring-{}-parent.key", self.ring));
        let next_path = path.with_extension("key.next");
        let _ = std::fs::remove_file(&next_path);
        fresh.save(&next_path).map_err(BusError::from)?;
        let now = Utc::now();
        let overlap = TimeDelta::from_std(overlap).unwrap_or(TimeDelta::seconds(300));
        let new = KeyRecord {
            id: fresh.key_id(),
            created_at: now,
            not_after: None,
            replaced_by: None,
            ..old.clone()
        };
        let retiring = KeyRecord { not_after: Some(now + overlap), replaced_by: Some(new.id), ..old.clone() };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key_key(self.ring, &old.id), rev),
                Compare::absent(key_key(self.ring, &new.id)),
            ])
            .then([
                Op::put(key_key(self.ring, &old.id), to_json(&retiring)?),
                Op::put(key_key(self.ring, &new.id), to_json(&new)?),
            ]);
        if !self.store.txn(txn).await?.succeeded {
            let _ = std::fs::remove_file(&next_path);
            return Err(BusError::Refused(format!("key {} changed meanwhile; retry", old.id.short())));
        }
        self.publish_trust_as(&current).await?;
        enjin_sys::fs::rename_durable(&next_path, &path).map_err(file_error(&path))?;
        let publisher = Publisher::starting_now(fresh, self.ring, self.counters.clone());
        if let Ok(mut p) = self.publisher.lock() {
            *p = Arc::new(publisher);
        }
        tracing::info!(ring = self.ring, old = %old.id.short(), new = %new.id.short(), "rotated key");
        Ok(self.info(&new))
    }

    /// Revoke a key: every node of the ring stops accepting it with the next bundle.
    pub async fn revoke(&self, id: &str) -> Result<KeyInfo, BusError> {
        let (r, rev) = self.record(id).await?;
        if r.id == self.publisher().identity().key_id() {
            return Err(BusError::Refused(
                "this is the key this machine signs the ring's trust with; rotate it instead".into(),
            ));
        }
        let revoked = KeyRecord { revoked: true, ..r };
        let txn = Txn::new()
            .when([Compare::mod_revision(key_key(self.ring, &revoked.id), rev)])
            .then([Op::put(key_key(self.ring, &revoked.id), to_json(&revoked)?)]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(BusError::Refused(format!("key {} changed meanwhile; retry", revoked.id.short())));
        }
        self.publish_trust().await?;
        tracing::info!(ring = self.ring, key = %revoked.id.short(), "revoked key");
        Ok(self.info(&revoked))
    }

    /// A child joins with a join token: its public key is whitelisted, its CSR signed by the
    /// ring CA, and it gets the signed bundle — its trust at birth. The token is consumed in
    /// the same transaction that records the key, so it works exactly once.
    pub async fn join(&self, grant: &JoinGrant, req: JoinRequest) -> Result<JoinResponse, BusError> {
        if grant.ring.get() != self.ring {
            return Err(BusError::Refused(format!(
                "this join token is for ring {}; this server runs ring {}",
                grant.ring, self.ring
            )));
        }
        validate_label(&req.label).map_err(|m| BusError::Invalid { field: "label", message: m })?;
        let id: KeyId = req.public_key.parse().map_err(|_| BusError::Invalid {
            field: "public_key",
            message: "not a hex Ed25519 public key".into(),
        })?;
        if id.verifying_key().is_none() {
            return Err(BusError::Invalid {
                field: "public_key",
                message: "not a valid Ed25519 point".into(),
            });
        }
        let node = match (req.node, grant.node) {
            (Some(asked), Some(bound)) if asked != bound => {
                return Err(BusError::Invalid {
                    field: "node",
                    message: format!("this join token is for node {bound}, not {asked}"),
                });
            }
            (asked, bound) => asked.or(bound),
        };
        if let Some(node) = node {
            let n = match self.registry.get::<NodeSpec>(node).await {
                Ok(n) => n,
                Err(RegistryError::NotFound { .. }) => {
                    return Err(BusError::Invalid {
                        field: "node",
                        message: format!("node {node} does not exist"),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if n.meta.ring != grant.ring || n.spec.parent != Some(grant.parent) {
                return Err(BusError::Invalid {
                    field: "node",
                    message: format!("node {node} is not a ring {} node under {}", grant.ring, grant.parent),
                });
            }
        }
        // The role is the key service's to say, from what it knows of the node, never the
        // joiner's: the certificate names it, and the hub's access rules follow it.
        let member = match node {
            Some(node) => self.node_member(node).await?,
            None => Member::keyed(&id.to_string()).map_err(BusError::from)?,
        };
        // Checked before anything is written: a bad user key refuses the join.
        let nats = self.nats_join(&member, req.nats_user.as_deref())?;
        let cert_pem = self
            .ca
            .sign_csr(
                &member.common_name(),
                Some(&id.to_string()),
                &req.csr_pem,
                self.config.certificate_validity,
            )
            .map_err(|e| BusError::Invalid { field: "csr_pem", message: e.to_string() })?;
        let record = KeyRecord::new(id, self.ring, KeyRole::Member, &req.label, node, None);
        let k = key_key(self.ring, &id);
        let txn = Txn::new()
            .when([Compare::mod_revision(&grant.key, grant.revision), Compare::absent(&k)])
            .then([Op::delete(&grant.key), Op::put(&k, to_json(&record)?)]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(BusError::Refused(
                "the join token was already used, or the key is already known".into(),
            ));
        }
        let bundle = self.sealed_bundle(&self.publisher()).await?;
        self.publish_trust().await?;
        tracing::info!(ring = self.ring, label = %req.label, key = %id.short(), "node joined");
        Ok(JoinResponse {
            ring: grant.ring,
            parent: grant.parent,
            cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            bundle: bundle.iter().map(|b| format!("{b:02x}")).collect(),
            hub: self.hub_addr().map(|a| a.to_string()),
            node,
            nats,
        })
    }

    /// Who the certificate of `node` names on the bus: the edge when the node carries the
    /// edge's role label, a host otherwise.
    pub(super) async fn node_member(&self, node: Uuid) -> Result<Member, BusError> {
        let n = self.registry.get::<NodeSpec>(node).await?;
        let role = match n.meta.labels.get(EDGE_ROLE_LABEL.0).map(String::as_str) {
            Some(v) if v == EDGE_ROLE_LABEL.1 => Role::Edge,
            _ => Role::Host,
        };
        Member::node(role, &node.to_string()).map_err(BusError::from)
    }

    /// The id a key's holder has in inbox topics, as its certificate names it (see
    /// [`enjin_bus::acl`]): `parent` for parent keys, the node for a key bound to one, the
    /// key's first 128 bits otherwise. `None` for a key this ring does not know.
    pub(super) async fn inbox_id_of_key(&self, key: &KeyId) -> Result<Option<String>, BusError> {
        let Some(kv) = self.store.get(&key_key(self.ring, key)).await? else { return Ok(None) };
        let r: KeyRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
        Ok(Some(match (r.role, r.node) {
            (KeyRole::Parent, _) => acl::PARENT_ID.to_string(),
            (KeyRole::Member, Some(node)) => node.to_string(),
            (KeyRole::Member, None) => {
                Member::keyed(&key.to_string()).map_err(BusError::from)?.id().to_string()
            }
        }))
    }
}
