//! The router's table and the DNS zone, computed from the store and published whole on the
//! ring bus (retained topics, signed by the parent key) by a controller on the watch cache,
//! after every change and periodically.
//! Ring 1 services serve from the last snapshot they got, so they keep working while the
//! control plane is away.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enjin_model::api::{
    DNS_TOPIC, DnsRecord, DnsZone, ListQuery, ROUTES_TOPIC, RouteBackend, RouteEntry, RouteTable,
};
use enjin_model::kinds::{
    CompartmentSpec, CompartmentType, NetworkInterfaceSpec, NodeObservationSpec, NodeSpec, ObservationState,
    ObservationStrategy, ReleaseSpec, ReleaseState, WEB,
};
use enjin_model::{Kind, Object, Ring};
use uuid::Uuid;

use super::{APP_LABEL, DRAINING_LABEL, Health, PROCESS_LABEL, Platform, PlatformError, RELEASE_LABEL};
use crate::bus::BusAuthority;
use crate::cache::Change;
use crate::controller::{Action, ReconcileError, Reconciler};
use crate::registry::Registry;

/// How often the snapshots are published even without a change.
const REPUBLISH_EVERY: Duration = Duration::from_secs(5);

/// Everything the tables are computed from, read at one moment.
#[derive(Debug, Default)]
pub struct View {
    /// The store revision of the list of apps (read first); it versions the route table and the
    /// zone, so a consumer can tell a newer table from an older one.
    pub revision: i64,
    /// The app environments: ring 2 compartments of type `app-environment`.
    pub apps: Vec<Object<CompartmentSpec>>,
    /// Every ring 2 release of any app, by uuid.
    pub releases: HashMap<Uuid, Object<ReleaseSpec>>,
    /// The ring 2 nodes with an app label: the apps' instances.
    pub instances: Vec<Object<NodeSpec>>,
    /// The ring 1 nodes (the hosts), by uuid.
    pub hosts: HashMap<Uuid, Object<NodeSpec>>,
    /// Every network interface, on any network: where instances and hosts are reached.
    pub interfaces: Vec<Object<NetworkInterfaceSpec>>,
    /// Every node observation, grouped by the node observed.
    pub observations: HashMap<Uuid, Vec<Object<NodeObservationSpec>>>,
}

impl View {
    /// Read everything from the registry, one list per kind. The lists are separate reads, so a
    /// write landing between two of them is seen by the later ones only; the next change publishes
    /// again.
    pub async fn read(registry: &Registry) -> Result<View, PlatformError> {
        let ring = |r: Ring| ListQuery { ring: Some(r), ..ListQuery::default() };
        let (apps, revision) = registry.list::<CompartmentSpec>(&ring(Ring::PLATFORM)).await?;
        let apps =
            apps.into_iter().filter(|c| c.spec.compartment_type == CompartmentType::AppEnvironment).collect();
        let (releases, _) = registry.list::<ReleaseSpec>(&ring(Ring::PLATFORM)).await?;
        let (instances, _) = registry.list::<NodeSpec>(&ring(Ring::PLATFORM)).await?;
        let (hosts, _) = registry.list::<NodeSpec>(&ring(Ring::INFRASTRUCTURE)).await?;
        let (interfaces, _) = registry.list::<NetworkInterfaceSpec>(&ListQuery::default()).await?;
        let (observations, _) = registry.list::<NodeObservationSpec>(&ListQuery::default()).await?;
        let mut by_node: HashMap<Uuid, Vec<Object<NodeObservationSpec>>> = HashMap::new();
        for o in observations {
            by_node.entry(o.spec.node).or_default().push(o);
        }
        Ok(View {
            revision,
            apps,
            releases: releases.into_iter().map(|r| (r.meta.uuid, r)).collect(),
            instances: instances.into_iter().filter(|n| n.meta.labels.contains_key(APP_LABEL)).collect(),
            hosts: hosts.into_iter().map(|h| (h.meta.uuid, h)).collect(),
            interfaces,
            observations: by_node,
        })
    }

    /// The release of `app` that is live: of its active releases, the one with the highest
    /// version.
    pub fn live_release(&self, app: Uuid) -> Option<&Object<ReleaseSpec>> {
        self.releases
            .values()
            .filter(|r| r.spec.app == app && r.spec.state == ReleaseState::Active)
            .max_by_key(|r| r.spec.version)
    }

    /// The instances in `app`'s environment (nodes whose compartment is the app), of every release
    /// and process type.
    pub fn instances_of(&self, app: Uuid) -> impl Iterator<Item = &Object<NodeSpec>> {
        self.instances.iter().filter(move |n| n.spec.compartment == Some(app))
    }

    /// What the node's observations say of its health ([`Health::of`]): `Starting` until its
    /// process has been observed, then its probe's verdict if its spec has a probe.
    pub fn health(&self, node: &Object<NodeSpec>) -> Health {
        let obs: Vec<&Object<NodeObservationSpec>> =
            self.observations.get(&node.meta.uuid).map(|v| v.iter().collect()).unwrap_or_default();
        Health::of(&node.spec, &obs)
    }

    /// Whether the host's heartbeat says it is gone for good.
    fn host_lost(&self, host: Uuid) -> bool {
        self.observations.get(&host).is_some_and(|obs| {
            obs.iter().any(|o| {
                o.spec.strategy == ObservationStrategy::Heartbeat && o.spec.state == ObservationState::Lost
            })
        })
    }

    /// Where the instance serves: its own address on the instance network for an instance with a
    /// network of its own (`None` until it has one), else its host's address (loopback when the
    /// host has no interface). `None` when it serves no port.
    pub fn address_of(&self, node: &Object<NodeSpec>) -> Option<SocketAddr> {
        let run = node.spec.run.as_ref()?;
        let port = run.port?;
        if run.own_network {
            // Its own address (its interface on the instance network), or nowhere yet.
            let address = self
                .interfaces
                .iter()
                .find(|i| i.spec.node == node.meta.uuid)
                .and_then(|i| i.spec.addresses.first().copied())?;
            return Some(SocketAddr::new(address, port));
        }
        let host = node.spec.parent?;
        Some(SocketAddr::new(super::host_address(host, &self.interfaces), port))
    }

    /// Whether the router sends the instance requests: a web instance of a live release, not
    /// draining, healthy, on a host not lost.
    pub fn routed(&self, node: &Object<NodeSpec>) -> bool {
        let release = node.meta.labels.get(RELEASE_LABEL).and_then(|r| r.parse::<Uuid>().ok());
        let live =
            release.and_then(|r| self.releases.get(&r)).is_some_and(|r| r.spec.state == ReleaseState::Active);
        live && node.meta.labels.get(PROCESS_LABEL).map(String::as_str) == Some(WEB)
            && !node.meta.labels.contains_key(DRAINING_LABEL)
            && !node.spec.parent.is_some_and(|h| self.host_lost(h))
            && matches!(self.health(node), Health::Healthy(_))
            && self.address_of(node).is_some()
    }

    /// The router's table: one route per app at `<app>.<domain>`, path `/`, with every
    /// [routed](View::routed) instance as a backend, sorted by app then instance label. An app with
    /// no routed instance keeps its route with no backends (the router answers 503 for it).
    pub fn routes(&self, domain: &str) -> RouteTable {
        let mut routes: Vec<RouteEntry> = self
            .apps
            .iter()
            .map(|app| {
                let name = app.meta.label.clone().unwrap_or_default();
                let mut backends: Vec<RouteBackend> = self
                    .instances_of(app.meta.uuid)
                    .filter(|n| self.routed(n))
                    .filter_map(|n| {
                        Some(RouteBackend {
                            instance: n.meta.uuid,
                            label: n.meta.label.clone().unwrap_or_default(),
                            addr: self.address_of(n)?,
                        })
                    })
                    .collect();
                backends.sort_by(|a, b| a.label.cmp(&b.label));
                RouteEntry {
                    hosts: vec![format!("{name}.{domain}")],
                    app: name,
                    path_prefix: "/".into(),
                    backends,
                }
            })
            .collect();
        routes.sort_by(|a, b| a.app.cmp(&b.app));
        RouteTable { version: self.revision, routes }
    }

    /// The DNS zone for `origin`: `<host>.hosts.<origin>` for each host, `<app>.<origin>` pointing
    /// at the router (loopback when `router` is unset, unspecified or IPv6), `<instance>.<app>.<origin>`
    /// for each instance with an IPv4 address, and an `_http._tcp.<app>.<origin>` SRV record per
    /// routed instance. Records are sorted, so an unchanged model gives an identical zone.
    pub fn zone(&self, origin: &str, router: Option<SocketAddr>) -> DnsZone {
        let router_ip = match router.map(|r| r.ip()) {
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
            _ => Ipv4Addr::LOCALHOST,
        };
        let mut records = Vec::new();
        for h in self.hosts.values() {
            let Some(label) = &h.meta.label else { continue };
            if let IpAddr::V4(ip) = super::host_address(h.meta.uuid, &self.interfaces) {
                records.push(DnsRecord::A { name: format!("{label}.hosts.{origin}"), addr: ip });
            }
        }
        for app in &self.apps {
            let Some(name) = &app.meta.label else { continue };
            records.push(DnsRecord::A { name: format!("{name}.{origin}"), addr: router_ip });
            for n in self.instances_of(app.meta.uuid) {
                let (Some(label), Some(addr)) = (&n.meta.label, self.address_of(n)) else { continue };
                let IpAddr::V4(ip) = addr.ip() else { continue };
                let target = format!("{label}.{name}.{origin}");
                records.push(DnsRecord::A { name: target.clone(), addr: ip });
                if self.routed(n) {
                    records.push(DnsRecord::Srv {
                        name: format!("_http._tcp.{name}.{origin}"),
                        priority: 10,
                        weight: 10,
                        port: addr.port(),
                        target,
                    });
                }
            }
        }
        records.sort_by_key(|r| format!("{r:?}"));
        DnsZone { version: self.revision, origin: origin.to_string(), records }
    }
}

/// The kinds the tables are computed from.
const EDGE_INPUTS: [Kind; 5] =
    [Kind::Compartment, Kind::Release, Kind::Node, Kind::NetworkInterface, Kind::NodeObservation];

/// What was published last, and when.
struct Published {
    tables: (Vec<RouteEntry>, Vec<DnsRecord>),
    /// The store revision the tables were read at.
    version: i64,
    /// The bus's reconnection count then: a hub that restarted may have lost it.
    reconnections: u64,
    at: Instant,
}

/// Keeps both snapshots published (a controller with one key): after each change of what they
/// are computed from, when the bus connects again, and at least every [`REPUBLISH_EVERY`].
/// Unchanged tables are not published again until then.
pub(super) struct EdgePublisher {
    platform: Arc<Platform>,
    bus: Arc<BusAuthority>,
    last: Mutex<Option<Published>>,
}

impl EdgePublisher {
    pub(super) fn new(platform: Arc<Platform>, bus: Arc<BusAuthority>) -> Self {
        EdgePublisher { platform, bus, last: Mutex::new(None) }
    }
}

impl Reconciler for EdgePublisher {
    type Key = ();

    fn name(&self) -> &'static str {
        "route and zone publisher"
    }

    fn keys_of(&self, change: &Change) -> Vec<()> {
        if EDGE_INPUTS.contains(&change.kind) { vec![()] } else { Vec::new() }
    }

    async fn all_keys(&self) -> Result<Vec<()>, ReconcileError> {
        Ok(vec![()])
    }

    async fn reconcile(&self, _: &()) -> Result<Action, ReconcileError> {
        let view = View::read(&self.platform.registry).await.map_err(ReconcileError::new)?;
        let config = &self.platform.config;
        let routes = view.routes(&config.domain);
        let zone = view.zone(&config.zone, config.router);
        let tables = (routes.routes.clone(), zone.records.clone());
        let reconnections = *self.bus.reconnections().borrow();
        let wanted = i64::try_from(*self.platform.routes_wanted.borrow()).unwrap_or(i64::MAX);
        {
            let last =
                self.last.lock().map_err(|_| ReconcileError::new("the publisher's state is poisoned"))?;
            let due = last.as_ref().map(|p| REPUBLISH_EVERY.saturating_sub(p.at.elapsed()));
            if let (Some(p), Some(due)) = (last.as_ref(), due)
                && p.tables == tables
                && p.reconnections == reconnections
                && p.version >= wanted
                && !due.is_zero()
            {
                return Ok(Action::RequeueAfter(due));
            }
        }
        let r = serde_json::to_vec(&routes).map_err(ReconcileError::new)?;
        let z = serde_json::to_vec(&zone).map_err(ReconcileError::new)?;
        self.bus.publish_state(ROUTES_TOPIC, r).map_err(ReconcileError::new)?;
        self.bus.publish_state(DNS_TOPIC, z).map_err(ReconcileError::new)?;
        tracing::debug!(version = routes.version, routes = routes.routes.len(), "routes and zone published");
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Published { tables, version: routes.version, reconnections, at: Instant::now() });
        }
        Ok(Action::RequeueAfter(REPUBLISH_EVERY))
    }

    /// A rollout waiting for a table at least as new as a revision, or a reconnection.
    fn wake(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.platform.routes_wanted.subscribe())
    }
}

/// For tests and callers that want the tables without a bus.
pub async fn tables(platform: &Platform) -> Result<(RouteTable, DnsZone), PlatformError> {
    let view = View::read(&platform.registry).await?;
    Ok((view.routes(&platform.config.domain), view.zone(&platform.config.zone, platform.config.router)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::collections::BTreeMap;

    use chrono::{DateTime, TimeDelta, Utc};
    use enjin_model::kinds::{AppManifest, PackageRef, ProbeSpec, RunSpec};
    use enjin_model::{Kind, ObjectMeta, Ring};

    use super::*;

    fn meta(kind: Kind, ring: Ring, label: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        let now = Utc::now();
        ObjectMeta {
            uuid: Uuid::new_v4(),
            kind,
            ring,
            account: Uuid::nil(),
            label: Some(label.into()),
            labels,
            created_at: now,
            updated_at: now,
            revision: 1,
        }
    }

    fn obs(
        node: Uuid,
        strategy: ObservationStrategy,
        state: ObservationState,
        at: DateTime<Utc>,
    ) -> Object<NodeObservationSpec> {
        let spec = NodeObservationSpec { node, strategy, state, observed_at: at, message: String::new() };
        Object { meta: meta(Kind::NodeObservation, Ring::PLATFORM, "o", BTreeMap::new()), spec }
    }

    /// One app with a live release and one web instance on one host, with a probe.
    fn view() -> (View, Uuid) {
        let app = Object {
            meta: meta(Kind::Compartment, Ring::PLATFORM, "hello", BTreeMap::new()),
            spec: CompartmentSpec {
                compartment_type: CompartmentType::AppEnvironment,
                parents: vec![],
                links: vec![],
            },
        };
        let release = Object {
            meta: meta(Kind::Release, Ring::PLATFORM, "v1", BTreeMap::new()),
            spec: ReleaseSpec {
                app: app.meta.uuid,
                version: 1,
                package: PackageRef { digest: format!("sha256:{}", "a".repeat(64)), size: 1 },
                manifest: AppManifest::default(),
                state: ReleaseState::Active,
                description: String::new(),
            },
        };
        let host = Object {
            meta: meta(Kind::Node, Ring::INFRASTRUCTURE, "host-1", BTreeMap::new()),
            spec: NodeSpec::default(),
        };
        let labels: BTreeMap<String, String> = [
            (APP_LABEL.to_string(), "hello".to_string()),
            (PROCESS_LABEL.to_string(), WEB.to_string()),
            (RELEASE_LABEL.to_string(), release.meta.uuid.to_string()),
        ]
        .into();
        let probe = ProbeSpec {
            strategy: ObservationStrategy::Http,
            port: Some(20000),
            path: None,
            interval_ms: 500,
            timeout_ms: 500,
            failure_threshold: 2,
            success_threshold: 1,
        };
        let run = RunSpec {
            command: vec!["x".into()],
            env: BTreeMap::new(),
            restart: Default::default(),
            probe: Some(probe),
            stop_grace_seconds: 1,
            package: None,
            port: Some(20000),
            uid: None,
            own_network: false,
        };
        let instance = Object {
            meta: meta(Kind::Node, Ring::PLATFORM, "web-1", labels),
            spec: NodeSpec {
                parent: Some(host.meta.uuid),
                compartment: Some(app.meta.uuid),
                run: Some(run),
                ..NodeSpec::default()
            },
        };
        let id = instance.meta.uuid;
        let view = View {
            revision: 7,
            apps: vec![app],
            releases: [(release.meta.uuid, release)].into(),
            instances: vec![instance],
            hosts: [(host.meta.uuid, host)].into(),
            interfaces: vec![],
            observations: Default::default(),
        };
        (view, id)
    }

    fn observe(v: &mut View, id: Uuid, list: Vec<Object<NodeObservationSpec>>) {
        v.observations.insert(id, list);
    }

    #[test]
    fn only_healthy_instances_of_the_live_release_are_routed() {
        let (mut v, id) = view();
        let t = Utc::now();
        // Started, probe not yet passed: not routed.
        observe(&mut v, id, vec![obs(id, ObservationStrategy::Process, ObservationState::Starting, t)]);
        assert!(v.routes("localhost").routes[0].backends.is_empty());
        // Probe passed after the start: routed, at the host's address and its port.
        let healthy =
            obs(id, ObservationStrategy::Http, ObservationState::Running, t + TimeDelta::milliseconds(10));
        observe(
            &mut v,
            id,
            vec![obs(id, ObservationStrategy::Process, ObservationState::Starting, t), healthy.clone()],
        );
        let table = v.routes("localhost");
        assert_eq!(table.version, 7);
        assert_eq!(table.routes[0].hosts, vec!["hello.localhost".to_string()]);
        assert_eq!(table.routes[0].backends.len(), 1);
        assert_eq!(table.routes[0].backends[0].addr.port(), 20000);
        // It died: the old probe verdict no longer counts.
        let died =
            obs(id, ObservationStrategy::Process, ObservationState::Exited, t + TimeDelta::milliseconds(20));
        observe(&mut v, id, vec![died, healthy.clone()]);
        assert!(v.routes("localhost").routes[0].backends.is_empty());
        // Restarted: still not until the probe passes again.
        let restarted = obs(
            id,
            ObservationStrategy::Process,
            ObservationState::Starting,
            t + TimeDelta::milliseconds(30),
        );
        observe(&mut v, id, vec![restarted.clone(), healthy]);
        assert!(v.routes("localhost").routes[0].backends.is_empty());
        let again =
            obs(id, ObservationStrategy::Http, ObservationState::Running, t + TimeDelta::milliseconds(40));
        observe(&mut v, id, vec![restarted, again]);
        assert_eq!(v.routes("localhost").routes[0].backends.len(), 1);
        // Draining: out of the routes though healthy.
        v.instances[0].meta.labels.insert(DRAINING_LABEL.into(), "true".into());
        assert!(v.routes("localhost").routes[0].backends.is_empty());
        v.instances[0].meta.labels.remove(DRAINING_LABEL);
        // A release that is not live is not routed.
        for r in v.releases.values_mut() {
            r.spec.state = ReleaseState::Deploying;
        }
        assert!(v.routes("localhost").routes[0].backends.is_empty());
    }

    #[test]
    fn the_zone_has_apps_instances_hosts_and_srv_for_routed_instances() {
        let (mut v, id) = view();
        let t = Utc::now();
        observe(
            &mut v,
            id,
            vec![
                obs(id, ObservationStrategy::Process, ObservationState::Starting, t),
                obs(id, ObservationStrategy::Http, ObservationState::Running, t + TimeDelta::milliseconds(1)),
            ],
        );
        let zone = v.zone("enjin.internal", Some(SocketAddr::from(([127, 0, 0, 1], 7482))));
        let names: Vec<String> = zone
            .records
            .iter()
            .map(|r| match r {
                DnsRecord::A { name, .. } => format!("A {name}"),
                DnsRecord::Srv { name, target, port, .. } => format!("SRV {name} {target}:{port}"),
            })
            .collect();
        assert!(names.contains(&"A hello.enjin.internal".to_string()), "{names:?}");
        assert!(names.contains(&"A web-1.hello.enjin.internal".to_string()), "{names:?}");
        assert!(names.contains(&"A host-1.hosts.enjin.internal".to_string()), "{names:?}");
        assert!(
            names.contains(
                &"SRV _http._tcp.hello.enjin.internal web-1.hello.enjin.internal:20000".to_string()
            ),
            "{names:?}"
        );
    }

    #[test]
    fn a_supervisor_that_gave_up_means_failed() {
        let (_, id) = view();
        let spec = NodeSpec::default();
        let failed = obs(id, ObservationStrategy::Process, ObservationState::Failed, Utc::now());
        assert!(matches!(Health::of(&spec, &[&failed]), Health::Failed(_)));
        let running = obs(id, ObservationStrategy::Process, ObservationState::Running, Utc::now());
        assert!(matches!(Health::of(&spec, &[&running]), Health::Healthy(_)));
        assert!(matches!(Health::of(&spec, &[]), Health::Starting(_)));
    }
}
