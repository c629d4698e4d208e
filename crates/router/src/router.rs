//! `Router`: the table being served, the pools to instances and the counters, behind one `Arc`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use enjin_model::api::RouteTable;

use crate::balance::BackendState;
use crate::config::RouterConfig;
use crate::metrics::{self, AppMetrics, AppStats, RouterMetrics};
use crate::table::Table;

/// The HTTP router. Cloning is cheap and every clone is the same router.
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: RouterConfig,
    /// The table being served. Requests clone the `Arc` under a read lock held for no longer
    /// than that; `apply` builds the next table outside it and swaps it in.
    table: RwLock<Arc<Table>>,
    /// What outlives a table: app counters and backend state by name and address. Only
    /// `apply` and the metrics readers take this lock, never a request.
    registry: Mutex<Registry>,
    pub metrics: RouterMetrics,
    /// Ejection deadlines are kept as milliseconds since this instant, so they fit an atomic.
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Registry {
    apps: BTreeMap<String, Arc<AppMetrics>>,
    backends: HashMap<SocketAddr, Arc<BackendState>>,
}

impl Router {
    /// A router serving no routes (every request gets 404) until a table is applied.
    pub fn new(config: RouterConfig) -> Router {
        Router {
            inner: Arc::new(Inner {
                config,
                table: RwLock::new(Arc::new(Table::default())),
                registry: Mutex::new(Registry::default()),
                metrics: RouterMetrics::default(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Serves `table` from the next request on if its version is newer than the one served;
    /// returns whether it did. An older or equal version is ignored: tables can arrive out of
    /// order, and the newest one wins.
    pub fn apply(&self, table: RouteTable) -> bool {
        // Held for the whole apply so that two racing applies cannot both pass the version
        // check and then swap in the wrong order.
        let mut registry = self.inner.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let served = self.inner.table().version;
        if served.is_some_and(|v| table.version <= v) {
            tracing::debug!(version = table.version, served, "ignoring a route table that is not newer");
            return false;
        }
        let version = table.version;
        let Registry { apps, backends } = &mut *registry;
        let mut seen = HashMap::new();
        let workers = self.inner.config.threads.max(1);
        let (compiled, conflicts) = Table::compile(
            table,
            |name| apps.entry(name.to_string()).or_insert_with(|| Arc::new(AppMetrics::new(name))).clone(),
            |addr| {
                seen.entry(addr)
                    .or_insert_with(|| {
                        backends.get(&addr).cloned().unwrap_or_else(|| Arc::new(BackendState::new(workers)))
                    })
                    .clone()
            },
        );
        // Backends no longer named are forgotten; requests still using one hold their own Arc.
        *backends = seen;
        let mut per_app: HashMap<&str, usize> = HashMap::new();
        for route in compiled.hosts.values().flatten() {
            let n = per_app.entry(route.app.name()).or_default();
            *n = (*n).max(route.backends.len());
        }
        for (name, app) in apps.iter() {
            app.set_backends(per_app.get(name.as_str()).copied().unwrap_or(0));
        }
        for conflict in &conflicts {
            tracing::warn!(version, route = %conflict, "two routes claim the same host and prefix; the first wins");
        }
        let hosts = compiled.hosts.len();
        *self.inner.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(compiled);
        tracing::info!(version, hosts, "serving a new route table");
        true
    }

    /// The version of the table being served, `None` before the first.
    pub fn version(&self) -> Option<i64> {
        self.inner.table().version
    }

    /// Every metric in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let version = self.version();
        let registry = self.inner.registry.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::render(version, &self.inner.metrics, registry.apps.values().map(|a| &**a))
    }

    /// One app's numbers since the router started, if it has ever been in a table.
    pub fn stats(&self, app: &str) -> Option<AppStats> {
        let registry = self.inner.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.apps.get(app).map(|a| a.stats())
    }
}

impl Inner {
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
