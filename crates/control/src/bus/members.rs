//! Members on their own feet: the hub admits a member only while the key its certificate is
//! bound to is trusted ([`BusAuthority::hub_admission`]), members renew their short-lived
//! certificates and rotate their own keys by asking over the bus ([`enjin_bus::renewal`]),
//! and the ring's state is published again the moment this service reconnects to its hub.

use std::collections::HashMap;

use enjin_bus::renewal::{
    self, CERTIFICATE_TOPIC, CertificateRequest, KeyReply, ROTATE_TOPIC, RotateRequest,
};

use super::*;

/// What the hub's admission check knows of each key of the ring: read on every handshake and
/// every recheck, so a plain map behind a lock, rebuilt whole from the store whenever the
/// bundle is ([`BusAuthority::bundle`]).
#[derive(Debug, Default)]
pub(super) struct AdmissionTable {
    keys: HashMap<KeyId, Admitted>,
}

#[derive(Debug)]
struct Admitted {
    role: KeyRole,
    node: Option<Uuid>,
    revoked: bool,
    not_after_ms: Option<i64>,
}

impl AdmissionTable {
    pub(super) fn from_records(records: &[KeyRecord]) -> Self {
        let keys = records
            .iter()
            .map(|r| {
                let admitted = Admitted {
                    role: r.role,
                    node: r.node,
                    revoked: r.revoked,
                    not_after_ms: r.not_after.map(|t| t.timestamp_millis()),
                };
                (r.id, admitted)
            })
            .collect();
        AdmissionTable { keys }
    }

    /// The node `key` is bound to (`Some(None)`: bound to none), or `None` when this table
    /// does not know the key (it may be newer than the table).
    pub(super) fn node_of(&self, key: &KeyId) -> Option<Option<Uuid>> {
        self.keys.get(key).map(|k| k.node)
    }

    /// Whether `member`, whose certificate is bound to `key`, may be connected at `now_ms`.
    /// The parent's own components hold certificates made in memory at each start, bound to
    /// no key; every other member's certificate must be bound to a member key of the ring that
    /// is neither revoked nor retired, and name the member that key belongs to.
    fn admit(&self, member: &Member, key: Option<&KeyId>, now_ms: i64) -> Result<(), String> {
        if member.role() == Role::Parent {
            return Ok(());
        }
        let key = key.ok_or("the certificate is bound to no bus key")?;
        let k = self.keys.get(key).ok_or_else(|| format!("key {} is not a key of this ring", key.short()))?;
        if k.revoked {
            return Err(format!("key {} is revoked", key.short()));
        }
        if k.not_after_ms.is_some_and(|end| now_ms >= end) {
            return Err(format!("key {} is retired", key.short()));
        }
        if k.role != KeyRole::Member {
            return Err(format!("key {} is a parent key; a member certificate cannot use it", key.short()));
        }
        let owner = match k.node {
            Some(node) => node.to_string(),
            None => Member::keyed(&key.to_string()).map(|m| m.id().to_string()).map_err(|e| e.to_string())?,
        };
        if owner != member.id() {
            return Err(format!(
                "the certificate names {member}, but key {} belongs to {owner}",
                key.short()
            ));
        }
        Ok(())
    }
}

/// How often the request server reads the ring's keys again, at most (a rotation it made
/// itself is adopted at once).
const TRUST_REFRESH: Duration = Duration::from_secs(1);
/// After a request it could not verify, the request server reads the keys again if it has not
/// for this long.
const RETRY_REFRESH: Duration = Duration::from_millis(100);

impl BusAuthority {
    /// The hub's admission check: see [`AdmissionTable::admit`].
    pub fn hub_admission(&self) -> enjin_bus::hub::Admission {
        let table = self.admitted.clone();
        Arc::new(move |member: &Member, key: Option<&KeyId>| match table.read() {
            Ok(t) => t.admit(member, key, now_ms()),
            Err(_) => Err("the key table is unavailable".to_owned()),
        })
    }

    /// Answer members' certificate and rotation requests until the bus goes away.
    pub(super) async fn serve_key_requests(self: Arc<Self>) {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return };
        let mut sub = match t.subscribe("keys.*") {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, "members cannot renew certificates or rotate keys");
                return;
            }
        };
        let mut verifier = match self.bundle().await.and_then(|b| {
            Verifier::new(b, VerifierConfig::default(), self.counters.clone()).map_err(BusError::from)
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "members cannot renew certificates or rotate keys");
                return;
            }
        };
        // As if read long ago: the first request that does not verify reads the keys again.
        let now = std::time::Instant::now();
        let mut refreshed = now.checked_sub(TRUST_REFRESH).unwrap_or(now);
        while let Some(m) = sub.next().await {
            if refreshed.elapsed() > TRUST_REFRESH {
                self.refresh(&mut verifier).await;
                refreshed = std::time::Instant::now();
            }
            let env = match verifier.accept(&m.payload, now_ms()) {
                Ok(env) => env,
                // A member that joined since the last read: read the keys again at once if this
                // server has made a newer bundle since (a join or a rotation did), else at most
                // so often, so that garbage cannot turn into a store read per message.
                Err(_)
                    if verifier.bundle().version < self.latest_trust_version()
                        || refreshed.elapsed() > RETRY_REFRESH =>
                {
                    self.refresh(&mut verifier).await;
                    refreshed = std::time::Instant::now();
                    let Ok(env) = verifier.accept(&m.payload, now_ms()) else { continue };
                    env
                }
                Err(_) => continue,
            };
            let Some(inbox) = env.reply_to().map(str::to_string) else { continue };
            let requester = self.inbox_id_of_key(&env.sender()).await.ok().flatten();
            if !requester.as_deref().is_some_and(|id| acl::reply_allowed(id, &inbox)) {
                self.counters.reply_refused();
                tracing::warn!(topic = %env.topic(), sender = %env.sender().short(), reply_to = %inbox, "key request refused: its reply-to is not an inbox of its sender");
                continue;
            }
            let reply = match self.answer_key_request(&env).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::warn!(topic = %env.topic(), sender = %env.sender().short(), error = %e, "key request refused");
                    KeyReply::refused(e.to_string())
                }
            };
            if env.topic() == ROTATE_TOPIC && reply.error.is_none() {
                // The new key may speak at once.
                self.refresh(&mut verifier).await;
            }
            let sent = to_json(&reply).and_then(|payload| {
                self.publisher().seal(&inbox, None, payload, now_ms()).map_err(BusError::from)
            });
            match sent {
                Ok(sealed) => {
                    if let Err(e) = t.publish(&inbox, None, sealed) {
                        tracing::debug!(error = %e, "key reply not sent");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "key reply not sealed"),
            }
        }
    }

    async fn refresh(&self, verifier: &mut Verifier) {
        match self.bundle().await {
            Ok(b) => {
                if let Err(e) = verifier.adopt(&b) {
                    tracing::warn!(error = %e, "key request server cannot adopt the trust bundle");
                }
            }
            Err(e) => tracing::warn!(error = %e, "key request server cannot read the ring's keys"),
        }
    }

    async fn answer_key_request(&self, env: &Envelope) -> Result<KeyReply, BusError> {
        let (record, revision) = self.record(&env.sender().to_string()).await?;
        if record.role != KeyRole::Member {
            return Err(BusError::Refused("parent keys are rotated through the API".into()));
        }
        if record.revoked || record.not_after.is_some() {
            return Err(BusError::Refused(format!(
                "key {} is revoked or retiring; only an active key renews or rotates",
                record.id.short()
            )));
        }
        let invalid = |e: serde_json::Error| BusError::Invalid { field: "payload", message: e.to_string() };
        match env.topic() {
            CERTIFICATE_TOPIC => {
                let req: CertificateRequest = serde_json::from_slice(env.payload()).map_err(invalid)?;
                self.member_certificate(&record, &record.id, &req.csr_pem, None).await
            }
            ROTATE_TOPIC => {
                let req: RotateRequest = serde_json::from_slice(env.payload()).map_err(invalid)?;
                self.rotate_member_key(record, revision, &req).await
            }
            other => Err(BusError::Refused(format!("no key service on {other}"))),
        }
    }

    /// A certificate for the member that holds `record`'s node (or key), bound to `key`.
    async fn member_certificate(
        &self,
        record: &KeyRecord,
        key: &KeyId,
        csr_pem: &str,
        bundle_version: Option<u64>,
    ) -> Result<KeyReply, BusError> {
        let member = match record.node {
            Some(node) => self.node_member(node).await?,
            None => Member::keyed(&key.to_string()).map_err(BusError::from)?,
        };
        let validity = self.config.certificate_validity;
        let cert_pem = self
            .ca
            .sign_csr(&member.common_name(), Some(&key.to_string()), csr_pem, validity)
            .map_err(|e| BusError::Invalid { field: "csr_pem", message: e.to_string() })?;
        let not_after = enjin_bus::tls::first_certificate_der(&cert_pem)
            .and_then(|der| enjin_bus::tls::certificate_not_after(&der));
        tracing::info!(ring = self.ring, %member, key = %key.short(), "member certificate issued");
        Ok(KeyReply { cert_pem: Some(cert_pem), not_after, bundle_version, error: None })
    }

    /// Replace `old` with the key the request proves it holds: the old key stays accepted for
    /// the configured overlap, the new one is bound to the same node, and the bundle saying so
    /// is published before the answer.
    async fn rotate_member_key(
        &self,
        old: KeyRecord,
        revision: i64,
        req: &RotateRequest,
    ) -> Result<KeyReply, BusError> {
        let new_id = renewal::verify_rotation(self.ring, &old.id, req)
            .map_err(|e| BusError::Invalid { field: "rotate", message: e.to_string() })?;
        // The certificate first: a bad CSR must not leave a rotated key without one.
        let probe = KeyRecord { id: new_id, ..old.clone() };
        let mut reply = self.member_certificate(&probe, &new_id, &req.csr_pem, None).await?;
        let now = Utc::now();
        let overlap = TimeDelta::from_std(self.config.member_key_overlap).unwrap_or(TimeDelta::seconds(300));
        let new =
            KeyRecord { id: new_id, created_at: now, not_after: None, replaced_by: None, ..old.clone() };
        let retiring = KeyRecord { not_after: Some(now + overlap), replaced_by: Some(new_id), ..old.clone() };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key_key(self.ring, &old.id), revision),
                Compare::absent(key_key(self.ring, &new_id)),
            ])
            .then([
                Op::put(key_key(self.ring, &old.id), to_json(&retiring)?),
                Op::put(key_key(self.ring, &new_id), to_json(&new)?),
            ]);
        if !self.store.txn(txn).await?.succeeded {
            return Err(BusError::Refused(format!(
                "key {} changed meanwhile, or key {} is already known",
                old.id.short(),
                new_id.short()
            )));
        }
        let bundle = self.bundle().await?;
        self.publish_trust().await?;
        reply.bundle_version = Some(bundle.version);
        tracing::info!(ring = self.ring, old = %old.id.short(), new = %new_id.short(), label = %old.label, "member rotated its key");
        Ok(reply)
    }

    /// A member that died between asking to rotate its key and starting to use the new one
    /// left it in `bus.key.next`: if the ring knows that key as this node's active key, it is
    /// the member's key now; otherwise the file is a leftover of a refused rotation.
    pub(super) async fn finish_rotation(
        &self,
        node: Uuid,
        key_path: &std::path::Path,
    ) -> Result<(), BusError> {
        let next = key_path.with_extension("key.next");
        if !next.exists() {
            return Ok(());
        }
        let candidate = Identity::load(&next)?.key_id();
        let known = match self.record(&candidate.to_string()).await {
            Ok((r, _)) => r.node == Some(node) && !r.revoked && r.not_after.is_none(),
            Err(BusError::NoSuchKey(..)) => false,
            Err(e) => return Err(e),
        };
        if known {
            enjin_sys::fs::rename_durable(&next, key_path).map_err(super::file_error(key_path))?;
            tracing::info!(%node, key = %candidate.short(), "finished the member's interrupted key rotation");
        } else {
            std::fs::remove_file(&next).map_err(super::file_error(&next))?;
        }
        Ok(())
    }

    /// Publish the trust bundle, and have every host's desired set published, each time the
    /// transport connects again: a hub that restarted without its retained messages has them back at once, not
    /// at the next periodic republication.
    pub(super) async fn republish_on_reconnect(
        self: Arc<Self>,
        mut connected: tokio::sync::watch::Receiver<bool>,
    ) {
        // The state at attach was published by `attach` itself.
        connected.borrow_and_update();
        loop {
            if connected.wait_for(|c| !*c).await.is_err() || connected.wait_for(|c| *c).await.is_err() {
                return;
            }
            tracing::info!(ring = self.ring, "reconnected to the hub; publishing the ring's state again");
            if let Err(e) = self.publish_trust().await {
                tracing::warn!(error = %e, "failed to republish the trust bundle");
            }
            // Wakes the desired-state publisher and the routes publisher.
            self.reconnections.send_modify(|n| *n += 1);
        }
    }

    /// Counts the transport's reconnections, for other publishers of retained state (routes,
    /// zone) to publish again at once.
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnections.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: KeyId, node: Option<Uuid>) -> KeyRecord {
        KeyRecord::new(id, 1, KeyRole::Member, "h", node, None)
    }

    #[test]
    fn admission_follows_the_keys_life() {
        let node = Uuid::new_v4();
        let key = Identity::generate().expect("key").key_id();
        let host = Member::node(Role::Host, &node.to_string()).expect("member");
        let table = AdmissionTable::from_records(&[record(key, Some(node))]);
        assert_eq!(table.admit(&host, Some(&key), 0), Ok(()));
        assert!(table.admit(&host, None, 0).expect_err("unbound").contains("bound to no bus key"));
        let stranger = Identity::generate().expect("key").key_id();
        assert!(table.admit(&host, Some(&stranger), 0).expect_err("unknown").contains("not a key"));
        let other = Member::node(Role::Host, &Uuid::new_v4().to_string()).expect("member");
        assert!(table.admit(&other, Some(&key), 0).expect_err("other node").contains("belongs to"));
        let edge = Member::node(Role::Edge, &node.to_string()).expect("member");
        assert_eq!(table.admit(&edge, Some(&key), 0), Ok(()), "the role is the name's, the node the key's");

        let revoked = AdmissionTable::from_records(&[KeyRecord { revoked: true, ..record(key, Some(node)) }]);
        assert!(revoked.admit(&host, Some(&key), 0).expect_err("revoked").contains("revoked"));
        let end = Utc::now();
        let retiring =
            AdmissionTable::from_records(&[KeyRecord { not_after: Some(end), ..record(key, Some(node)) }]);
        let end_ms = end.timestamp_millis();
        assert_eq!(retiring.admit(&host, Some(&key), end_ms - 1), Ok(()));
        assert!(retiring.admit(&host, Some(&key), end_ms).expect_err("retired").contains("retired"));

        let keyed = Member::keyed(&key.to_string()).expect("member");
        let table = AdmissionTable::from_records(&[record(key, None)]);
        assert_eq!(table.admit(&keyed, Some(&key), 0), Ok(()));
        assert!(table.admit(&host, Some(&key), 0).is_err(), "a tool's key is no host's");
        let parent = Member::parent("hub").expect("parent");
        assert_eq!(AdmissionTable::default().admit(&parent, None, 0), Ok(()));
    }
}
