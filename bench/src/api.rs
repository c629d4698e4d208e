//! The meta HTTP API, served in-process on loopback over TLS and a SQLite store in a temp dir, driven
//! through the real client.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use enjin_client::Client;
use enjin_control::{ControlConfig, ControlPlane};
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
    serve_and_measure(store, limits, Rows::All).await
}

/// The create and paced-write rows again, the server's store on an etcd of its own (one
/// member on loopback, its data in a temp dir).
pub async fn etcd_rows(limits: Limits) -> anyhow::Result<Vec<Row>> {
    let server = tokio::task::spawn_blocking(enjin_testkit::EtcdServer::start).await.context("etcd")?;
    let config = enjin_store::EtcdStoreConfig::new([server.endpoint()]);
    let store = Arc::new(enjin_store::EtcdStore::connect(config).await.context("etcd does not answer")?);
    let rows = serve_and_measure(store, limits, Rows::Etcd).await;
    drop(server);
    rows
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    All,
    Etcd,
}

async fn serve_and_measure<S: Store + 'static>(
    store: Arc<S>,
    limits: Limits,
    which: Rows,
) -> anyhow::Result<Vec<Row>> {
    // The rows measure the API, not the per-principal rate limit in front of it.
    let mut config = ControlConfig::default();
    config.api.rate = None;
    let plane = ControlPlane::with_config(Arc::clone(&store) as Arc<dyn Store>, &config);
    plane.bootstrap().await.context("failed to bootstrap the control plane")?;
    let issued = plane
        .auth()
        .issue_admin("bench", chrono::Utc::now())
        .await
        .context("failed to issue an admin token")?;
    let token = issued.token;
    let root = issued.biscuit.context("the admin token came without a biscuit")?;
    let public = plane.auth().token_public_key();
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

    let base = format!("https://{addr}");
    let client =
        Client::with_ca(&base, Some(token), Some(ca.cert_pem())).context("failed to build the API client")?;
    let mut measured = if which == Rows::All {
        measure(&client, limits).await
    } else {
        create_rows(&client, limits, &[8], " on etcd").await.map(|(rows, _)| rows)
    };
    if which == Rows::All
        && let Ok(rows) = &mut measured
    {
        match attenuation_rows(&base, ca.cert_pem(), &client, &root, public, limits).await {
            Ok(more) => rows.extend(more),
            Err(e) => measured = Err(e),
        }
    }
    if let Ok(rows) = &mut measured {
        match tenant_client(&client, &base, ca.cert_pem()).await {
            Ok(tenant) => rows.push(Row::write(
                format!(
                    "POST /v1/tiers as a tenant, paced at {PACED_RATE}/s (scoped write){}",
                    if which == Rows::Etcd { " on etcd" } else { "" }
                ),
                paced_writes(&tenant, limits).await,
            )),
            Err(e) => measured = Err(e),
        }
    }

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
    let (mut rows, created) = create_rows(client, limits, &CREATE_CONCURRENCY, "").await?;
    let uuids: Arc<[Uuid]> = created.into();
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

/// The create rows at each of `levels`, and the nodes they made.
async fn create_rows(
    client: &Client,
    limits: Limits,
    levels: &[usize],
    suffix: &str,
) -> anyhow::Result<(Vec<Row>, Vec<Uuid>)> {
    // Labels must be unique among ring-0 nodes across all rows.
    let next_label = Arc::new(AtomicU64::new(0));
    let created = Arc::new(Mutex::new(Vec::new()));
    let mut rows = Vec::new();
    for &concurrency in levels {
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
        rows.push(Row::write(format!("POST /v1/nodes (create ring-0 node){suffix}"), sample));
    }
    let created =
        created.lock().map_err(|_| anyhow::anyhow!("the list of created nodes is poisoned"))?.clone();
    Ok((rows, created))
}

/// The rate of the paced tenant-write row.
pub const PACED_RATE: u32 = 1000;
/// At most this many of its writes in flight; more are counted as errors rather than queued
/// without bound.
const PACED_IN_FLIGHT: usize = 512;

/// A client of a principal that is a member of one tenant account only (the admin role there),
/// so that each of its requests is authorized per account, as a tenant's are.
async fn tenant_client(admin: &Client, base: &str, ca_pem: &str) -> anyhow::Result<Client> {
    use enjin_model::api::TokenCreateRequest;
    let account =
        admin.create_json(Kind::Account, &json!({"ring": 0, "label": "bench-tenant", "spec": {}})).await?;
    let account =
        account.get("uuid").and_then(|u| u.as_str()).context("the account has no uuid")?.to_string();
    let roles = admin
        .list_json(
            Kind::Role,
            &enjin_model::api::ListQuery { label: Some("admin".into()), ..Default::default() },
        )
        .await?;
    let role = roles.items.first().context("no admin role")?.meta.uuid;
    let spec = json!({"principal": "bench-tenant", "account": account, "role": role});
    admin.create_json(Kind::Membership, &json!({"ring": 0, "spec": spec})).await?;
    let req = TokenCreateRequest {
        principal: "bench-tenant".into(),
        description: "bench".into(),
        account: None,
        role: None,
        expires_in_seconds: None,
    };
    let token = admin.token_create(&req).await?.token;
    Client::with_ca(base, Some(token), Some(ca_pem)).context("failed to build the tenant's client")
}

/// Creates ring-2 tiers as the tenant at a fixed rate (an open loop: one request every
/// 1/rate, whatever the answers' latency, so that queueing shows as a client sending at that
/// rate sees it), within the row's count and time limits.
async fn paced_writes(client: &Client, limits: Limits) -> Sample {
    let period = Duration::from_secs_f64(1.0 / f64::from(PACED_RATE));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(PACED_IN_FLIGHT));
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut report = TaskReport::default();
    for i in 0..limits.ops {
        if started.elapsed() >= limits.time {
            break;
        }
        tick.tick().await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            report.error(format!(
                "more than {PACED_IN_FLIGHT} writes in flight: the server falls behind {PACED_RATE}/s"
            ));
            continue;
        };
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let start = Instant::now();
            let body = json!({"ring": 2, "label": format!("t-{i}"), "spec": {}});
            let result = client.create_json(Kind::Tier, &body).await;
            drop(permit);
            (start.elapsed(), result)
        }));
    }
    for call in calls {
        match call.await {
            Ok((latency, Ok(_))) => report.latencies.push(latency),
            Ok((_, Err(e))) => report.error(e),
            Err(e) => report.error(e),
        }
    }
    Sample::new(1, limits, started.elapsed(), vec![report])
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

/// Row names of the opaque-against-biscuit comparison, which the report subtracts.
pub const OPAQUE_GET: &str = "GET /v1/nodes/{uuid}, opaque token";
pub const BISCUIT_GET: &str = "GET /v1/nodes/{uuid}, 2-block biscuit";

/// What an attenuated token costs per request: the same GET, one at a time, with the opaque
/// token and with a biscuit derived from it (root block + one block of checks); then, in
/// process, the two parts of that cost: verifying the signature chain (once per token and
/// authorization generation, then cached) and running the checks (every request).
async fn attenuation_rows(
    base: &str,
    ca_pem: &str,
    admin: &Client,
    root: &str,
    public: biscuit_auth::PublicKey,
    limits: Limits,
) -> anyhow::Result<Vec<Row>> {
    use enjin_control::biscuits::{self, RequestFacts, Restriction};
    use enjin_model::kinds::Verb;
    let restriction = Restriction {
        verbs: vec![Verb::Get, Verb::List],
        expires_at: Some(chrono::Utc::now() + chrono::TimeDelta::hours(1)),
        ..Restriction::default()
    };
    let derived = biscuits::attenuate(root, &restriction).context("failed to derive a biscuit")?;
    let node = admin.create_json(Kind::Node, &json!({"ring": 0, "label": "attenuation", "spec": {}})).await?;
    let uuid = node.get("uuid").and_then(|u| u.as_str()).and_then(|u| u.parse::<Uuid>().ok());
    let uuid = uuid.context("the created node has no uuid")?;
    let guest = Client::with_ca(base, Some(derived.clone()), Some(ca_pem))
        .context("failed to build the biscuit client")?;
    let mut rows = Vec::new();
    for (name, client) in [(OPAQUE_GET, admin), (BISCUIT_GET, &guest)] {
        warm_up(client, 1).await?;
        client.get_json(Kind::Node, uuid).await.with_context(|| format!("{name}: first read"))?;
        let sample = timed(1, limits, client, move |client, _| async move {
            client.get_json(Kind::Node, uuid).await?;
            Ok(())
        })
        .await?;
        rows.push(Row::read(name, sample));
    }
    let verified = biscuits::verify(&derived, public).context("the derived biscuit does not verify")?;
    let facts = RequestFacts {
        now: chrono::Utc::now(),
        operation: Some(Verb::Get),
        resource: Some("node".into()),
        route: Some("/v1/nodes/{uuid}".into()),
        app: None,
    };
    rows.push(Row::read(
        "in process: verify a 2-block biscuit (per token, cached)",
        in_process(limits, || biscuits::verify(&derived, public).map(drop).map_err(|e| e.to_string())),
    ));
    rows.push(Row::read(
        "in process: run its checks (every request)",
        in_process(limits, || verified.attenuation.check(&facts).map_err(|e| format!("{e:?}"))),
    ));
    Ok(rows)
}

/// Times `op` in a loop on this thread, within `limits`.
fn in_process(limits: Limits, mut op: impl FnMut() -> Result<(), String>) -> run::Sample {
    let started = Instant::now();
    let mut report = TaskReport::default();
    for _ in 0..limits.ops {
        if started.elapsed() >= limits.time {
            break;
        }
        let start = Instant::now();
        match op() {
            Ok(()) => report.latencies.push(start.elapsed()),
            Err(e) => report.error(e),
        }
    }
    run::Sample::new(1, limits, started.elapsed(), vec![report])
}
