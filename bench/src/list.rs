//! A list with a selector over a large kind, as the API answers it: by scanning the kind's
//! prefix in the store and decoding every object (a registry without a cache), and from the
//! watch cache's label index (what `enjin up` does). The objects are written straight into
//! the store in transactions of [`BATCH`] keys, encoded as the registry encodes them; one app
//! label in a thousand is shared by 100 objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use enjin_control::cache::WatchCache;
use enjin_control::{Registry, object_key};
use enjin_model::api::ListQuery;
use enjin_model::kinds::NodeSpec;
use enjin_model::{Kind, Object, ObjectMeta, Ring};
use enjin_store::{Op, Store, Txn};
use uuid::Uuid;

use crate::report::Row;
use crate::run::{self, Limits, TaskReport};

/// Objects written per transaction while filling the store.
const BATCH: u64 = 1_000;
/// How many objects share each `app` label value: the selector's matches.
pub const MATCHES: u64 = 100;
/// How long the cache may take to catch up with the filled store.
const CATCH_UP: Duration = Duration::from_secs(120);

/// The objects of the full run, and of `--quick`.
pub fn objects(quick: bool) -> u64 {
    if quick { 5_000 } else { 100_000 }
}

/// The two list rows over `count` nodes in a fresh store in `dir`.
pub async fn rows(dir: &Path, count: u64, limits: Limits) -> anyhow::Result<Vec<Row>> {
    let store: Arc<dyn Store> = crate::store::open(dir).await?;
    fill(&store, count).await?;
    let selector = format!("app=app-{}", count / MATCHES / 2);
    let mut rows = Vec::new();

    let scan = Registry::new(Arc::clone(&store));
    let sample = lists(&scan, &selector, limits).await?;
    rows.push(Row::read(
        format!("list 1 kind with a selector, {count} objects ({MATCHES} match): store scan"),
        sample,
    ));

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let cache = WatchCache::start(Arc::clone(&store), stopping);
    let revision = store.current_revision().await?;
    ensure!(
        cache.wait_for(revision, CATCH_UP).await,
        "the watch cache did not reach revision {revision} in {CATCH_UP:?}"
    );
    let cached = Registry::new(Arc::clone(&store)).with_cache(cache);
    let sample = lists(&cached, &selector, limits).await?;
    rows.push(Row::read(
        format!("list 1 kind with a selector, {count} objects ({MATCHES} match): watch cache"),
        sample,
    ));
    let _ = stop.send(true);
    store.close().await.context("failed to close the list benchmark's store")?;
    Ok(rows)
}

/// `count` nodes, in transactions of [`BATCH`].
async fn fill(store: &Arc<dyn Store>, count: u64) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut next = 0;
    while next < count {
        let end = (next + BATCH).min(count);
        let ops = (next..end).map(|i| {
            let uuid = Uuid::new_v4();
            let node = Object {
                meta: ObjectMeta {
                    uuid,
                    kind: Kind::Node,
                    ring: Ring::META,
                    account: Uuid::nil(),
                    label: Some(format!("node-{i}")),
                    labels: BTreeMap::from([("app".to_string(), format!("app-{}", i / MATCHES))]),
                    created_at: now,
                    updated_at: now,
                    revision: 0,
                },
                spec: NodeSpec::default(),
            };
            let value = serde_json::to_vec(&node).unwrap_or_default();
            Op::put(object_key(Kind::Node, uuid), value)
        });
        let response = store.txn(Txn::new().then(ops)).await.context("failed to fill the store")?;
        if !response.succeeded {
            bail!("a fill transaction did not apply");
        }
        next = end;
    }
    Ok(())
}

/// Lists with `selector` from one task until `limits` end; each must return [`MATCHES`] nodes.
async fn lists(registry: &Registry, selector: &str, limits: Limits) -> anyhow::Result<crate::run::Sample> {
    let query = ListQuery { selector: Some(selector.to_string()), ..ListQuery::default() };
    run::run(1, limits, |_, budget| {
        let registry = registry.clone();
        let query = query.clone();
        async move {
            let mut report = TaskReport::default();
            while budget.claim().is_some() {
                let start = Instant::now();
                match registry.list::<NodeSpec>(&query).await {
                    Ok((items, _)) if items.len() as u64 == MATCHES => report.latencies.push(start.elapsed()),
                    Ok((items, _)) => report.error(format!("{} nodes matched, not {MATCHES}", items.len())),
                    Err(e) => report.error(e),
                }
            }
            report
        }
    })
    .await
}
