//! The meta HTTP API, served in-process on loopback over TLS and a SQLite store in a temp dir, driven
//! through the real client.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use enjin_client::Client;
use enjin_control::{ADMIN_PRINCIPAL, ControlConfig, ControlPlane};
use enjin_model::Kind;
use enjin_store::Store;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::report::Row;
use crate::run::{self, Limits, Sample, TaskReport};
use crate::store;

/// Concurrency levels of the create rows.
pub const CREATE_CONCURRENCY: [usize; 3] = [1, 8, 32];
/// Concurrency of the read row.
pub const GET_CONCURRENCY: usize = 32;

/// How long the server gets to drain when the benchmark is done.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

/// Every API row, against one server over a fresh store in `dir`.
pub async fn rows(dir: &Path, limits: Limits) -> anyhow::Result<Vec<Row>> {
    let store = store::open(dir).await?;
    // The rows measure the API, not the per-principal rate limit in front of it.
    let mut config = ControlConfig::default();
    config.api.rate = None;
    let plane = ControlPlane::with_config(Arc::clone(&store) as Arc<dyn Store>, &config);
    plane.bootstrap().await.context("failed to bootstrap the control plane")?;
    let token = plane
        .auth()
        .issue(ADMIN_PRINCIPAL, "bench", chrono::Utc::now())
        .await
        .context("failed to issue an admin token")?
        .token;
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.context("failed to bind 127.0.0.1:0")?;
    let addr = listener.local_addr().context("failed to read the listener's address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    // Over TLS, as `enjin up` serves it.
    let ca = enjin_pki::RingCa::generate(0).context("failed to make a CA for the API")?;
    let tls = enjin_control::tls::server_config(&ca, &enjin_control::tls::api_names(addr, &[]))
        .context("failed to set up TLS for the API")?;
    let plane = plane.with_tls(tls);
    let serving = tokio::spawn(plane.serve(listener, async move {
        // A dropped sender stops the server too.
        drop(stopped.await);
    }));

    let client = Client::with_ca(&format!("https://{addr}"), Some(token), Some(ca.cert_pem()))
        .context("failed to build the API client")?;
    let measured = measure(&client, limits).await;

    // The server may already have stopped on its own; the wait below tells.
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_PATIENCE, serving).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e).context("the control plane failed while serving"),
        Ok(Err(e)) => return Err(e).context("the control plane task panicked"),
        Err(_) => anyhow::bail!("the control plane did not stop within {SHUTDOWN_PATIENCE:?}"),
    }
    store.close().await.context("failed to close the API benchmark store")?;
    measured
}

async fn measure(client: &Client, limits: Limits) -> anyhow::Result<Vec<Row>> {
    // Labels must be unique among ring-0 nodes across all rows.
    let next_label = Arc::new(AtomicU64::new(0));
    let created = Arc::new(Mutex::new(Vec::new()));
    let mut rows = Vec::new();
    for concurrency in CREATE_CONCURRENCY {
        warm_up(client, concurrency).await?;
        let (next_label, created) = (Arc::clone(&next_label), Arc::clone(&created));
        let sample = timed(concurrency, limits, client, move |client, _| {
            let (next_label, created) = (Arc::clone(&next_label), Arc::clone(&created));
            async move {
                let n = next_label.fetch_add(1, Ordering::Relaxed);
                let body = json!({ "ring": 0, "label": format!("n-{n}"), "spec": {} });
                let node = client.create_json(Kind::Node, &body).await?;
                let uuid = node
                    .get("uuid")
                    .and_then(|u| u.as_str())
                    .and_then(|u| u.parse::<Uuid>().ok())
                    .context("the created node has no uuid")?;
                created
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the list of created nodes is poisoned"))?
                    .push(uuid);
                Ok(())
            }
        })
        .await?;
        rows.push(Row::write("POST /v1/nodes (create ring-0 node)", sample));
    }

    let uuids: Arc<[Uuid]> =
        created.lock().map_err(|_| anyhow::anyhow!("the list of created nodes is poisoned"))?.clone().into();
    anyhow::ensure!(!uuids.is_empty(), "no node was created, so none can be read");
    warm_up(client, GET_CONCURRENCY).await?;
    let sample = timed(GET_CONCURRENCY, limits, client, move |client, i| {
        let uuids = Arc::clone(&uuids);
        async move {
            let uuid = uuids[(i % uuids.len() as u64) as usize];
            client.get_json(Kind::Node, uuid).await?;
            Ok(())
        }
    })
    .await?;
    rows.push(Row::read("GET /v1/nodes/{uuid} (read)", sample));
    Ok(rows)
}

/// Runs `op` (given a client and the operation's index) from `concurrency` tasks, timing each.
async fn timed<F, Fut>(concurrency: usize, limits: Limits, client: &Client, op: F) -> anyhow::Result<Sample>
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    run::run(concurrency, limits, |_, budget| {
        let (client, op) = (client.clone(), Arc::clone(&op));
        async move {
            let mut report = TaskReport::default();
            while let Some(i) = budget.claim() {
                let start = Instant::now();
                match op(client.clone(), i).await {
                    Ok(()) => report.latencies.push(start.elapsed()),
                    Err(e) => report.error(format!("{e:#}")),
                }
            }
            report
        }
    })
    .await
}

/// Opens `concurrency` connections (and touches the routing) before a row is timed, so that
/// connection setup does not land in its latencies.
async fn warm_up(client: &Client, concurrency: usize) -> anyhow::Result<()> {
    let calls: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.health().await })
        })
        .collect();
    for call in calls {
        call.await.context("a warm-up request panicked")?.context("warm-up health check failed")?;
    }
    Ok(())
}
