//! The bus authority's controllers, on the shared watch cache: the desired-state publisher
//! (every host's set of children, on its retained topic) and liveness (a host whose heartbeat
//! stopped becomes *disconnected*, then *lost*).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_model::Kind;
use enjin_model::api::{ListQuery, UpdateRequest};
use enjin_model::kinds::{NodeObservationSpec, ObservationState, ObservationStrategy};
use uuid::Uuid;

use super::{BusAuthority, REPUBLISH_EVERY};
use crate::cache::Change;
use crate::controller::{Action, ReconcileError, Reconciler};

/// The hosts `bus` supervises, from the watch cache.
fn own_hosts(bus: &BusAuthority) -> Vec<Uuid> {
    match (bus.config.node, bus.registry.cache()) {
        (Some(machine), Some(cache)) => cache.children(Kind::Node, machine),
        _ => Vec::new(),
    }
}

/// Publishes each host's desired children whenever anything they are made of changes (nodes,
/// interfaces, access rules: a rule or an instance anywhere can change any host's firewall),
/// when the bus connects again, and every [`REPUBLISH_EVERY`].
pub(super) struct DesiredPublisher(pub Arc<BusAuthority>);

const DESIRED_INPUTS: [Kind; 4] = [Kind::Node, Kind::NetworkInterface, Kind::AccessRule, Kind::AccessRuleSet];

impl Reconciler for DesiredPublisher {
    type Key = Uuid;

    fn name(&self) -> &'static str {
        "desired-state publisher"
    }

    fn keys_of(&self, change: &Change) -> Vec<Uuid> {
        if DESIRED_INPUTS.contains(&change.kind) { own_hosts(&self.0) } else { Vec::new() }
    }

    async fn all_keys(&self) -> Result<Vec<Uuid>, ReconcileError> {
        Ok(own_hosts(&self.0))
    }

    async fn reconcile(&self, host: &Uuid) -> Result<Action, ReconcileError> {
        self.0.publish_desired(*host).await.map_err(ReconcileError::new)?;
        Ok(Action::Done)
    }

    fn resync(&self) -> Option<Duration> {
        Some(REPUBLISH_EVERY)
    }

    fn wake(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.0.reconnections())
    }
}

/// Marks a host whose heartbeat stopped *disconnected* after `disconnected_after` (its
/// children are presumed running: a network blip must never double or kill healthy work),
/// and *lost* after `lost_after`; it looks again when the next threshold falls due.
pub(super) struct Liveness {
    pub bus: Arc<BusAuthority>,
    pub disconnected_after: Duration,
    pub lost_after: Duration,
}

impl Reconciler for Liveness {
    type Key = Uuid;

    fn name(&self) -> &'static str {
        "host liveness"
    }

    fn keys_of(&self, change: &Change) -> Vec<Uuid> {
        let machine = self.bus.config.node;
        let entry = change.new.as_ref().or(change.old.as_ref());
        match (change.kind, entry) {
            (Kind::NodeObservation, Some(e)) => e.parent.into_iter().collect(),
            (Kind::Node, Some(e)) if e.parent.is_some() && e.parent == machine => vec![change.uuid],
            _ => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Result<Vec<Uuid>, ReconcileError> {
        Ok(own_hosts(&self.bus))
    }

    async fn reconcile(&self, host: &Uuid) -> Result<Action, ReconcileError> {
        let q = ListQuery { parent: Some(*host), ..ListQuery::default() };
        let (obs, _) =
            self.bus.registry.list::<NodeObservationSpec>(&q).await.map_err(ReconcileError::new)?;
        let Some(beat) = obs.into_iter().find(|o| o.spec.strategy == ObservationStrategy::Heartbeat) else {
            // No heartbeat yet: the first one is a change, and brings the host back here.
            return Ok(Action::Done);
        };
        if beat.spec.state == ObservationState::Lost {
            return Ok(Action::Done);
        }
        let silent = (Utc::now() - beat.spec.observed_at).to_std().unwrap_or_default();
        let (next, then) = if silent >= self.lost_after {
            (ObservationState::Lost, None)
        } else if silent >= self.disconnected_after {
            (ObservationState::Disconnected, Some(self.lost_after.saturating_sub(silent)))
        } else {
            return Ok(Action::RequeueAfter(self.disconnected_after.saturating_sub(silent)));
        };
        if beat.spec.state != next {
            let message = format!("no heartbeat for {}s", silent.as_secs());
            let spec = NodeObservationSpec { state: next, message, ..beat.spec.clone() };
            let req =
                UpdateRequest { revision: beat.meta.revision, label: None, labels: beat.meta.labels, spec };
            // Compared against the revision read: a heartbeat that lands first wins, and its
            // change brings the host back here.
            match self.bus.registry.update(beat.meta.uuid, req, Utc::now()).await {
                Ok(_) => tracing::warn!(%host, state = ?next, "host heartbeat missing"),
                Err(e) => tracing::debug!(%host, error = %e, "liveness update raced"),
            }
        }
        Ok(then.map_or(Action::Done, Action::RequeueAfter))
    }
}
