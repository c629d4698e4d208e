//! The audit log: one record per authenticated mutating request (who, as which token, from
//! where, did what to which object, and how it ended), handed to the store as the answer goes
//! out, readable newest first, and deleted after the retention period.
//!
//! A record is written by a task of its own, so that the answer does not wait for a second
//! commit (the change's own was already waited for); a read of the log, and the server's
//! shutdown, first wait for every record handed over before them ([`AuditLog::flush`]). At
//! most [`IN_FLIGHT_MAX`] records are in flight; past that a request writes its own before it
//! is answered, so a flood of requests cannot queue records without bound. A crash of the
//! server loses the records still in flight: those of requests answered in the last store
//! commit or so.
//!
//! Records live at `/audit/<time>-<uuid>`, the time in nanoseconds since the epoch zero-padded
//! to 20 digits, so that key order is time order. The store ranges by prefix only, so a read
//! walks a list of decimal prefixes that together cover exactly the times it wants (see
//! [`prefixes`]): a query for the last hour reads the last hour, not the whole log.
//!
//! Invariants: an unauthenticated request is never recorded (it must not be able to fill the
//! store); a failure to record is logged and counted, never turned into a failure of the
//! request it records.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{Method, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use enjin_model::api::{AuditObject, AuditRecord, AuditResult};
use enjin_model::kinds::Verb;
use enjin_store::{KeyValue, Op, Store, StoreError, Txn};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::routes::Perm;

pub const AUDIT_PREFIX: &str = "/audit/";

/// Set by a handler, as a response extension, to name the account its change was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditAccount(pub Uuid);

/// Digits of the time in a key: enough for any `u64` of nanoseconds.
const TIME_DIGITS: u32 = 20;
/// The first time a key cannot hold.
const TIME_END: u128 = 10u128.pow(TIME_DIGITS);
/// The longest `X-Request-Id` kept; longer ones are cut.
const REQUEST_ID_MAX: usize = 128;
/// How often old records are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Deletes per store transaction, so one prune never makes a huge transaction …
const PRUNE_BATCH: usize = 500;
/// … and at most this many per pass; the next pass goes on.
const PRUNE_PER_PASS: usize = 50_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;
const DAY: u128 = 86_400 * NANOS_PER_SEC;

/// Whether requests with this method change something, and so are recorded.
pub fn is_mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// A mutating request that has been authenticated, waiting for its answer to be recorded.
#[derive(Debug)]
pub struct Pending {
    time: DateTime<Utc>,
    principal: String,
    token: Uuid,
    method: String,
    verb: Verb,
    kind: String,
    route: String,
    path: String,
    /// The object's uuid when the path names one.
    uuid: Option<Uuid>,
    source: Option<SocketAddr>,
    request_id: Option<String>,
    /// The caller's own account, for a change whose handler names none.
    home: Option<Uuid>,
}

impl Pending {
    /// What to record of `req` once answered; `None` when it is not recorded (reads).
    pub fn begin(req: &Request, principal: &Principal, perm: Perm, now: DateTime<Utc>) -> Option<Pending> {
        if !is_mutating(req.method()) {
            return None;
        }
        let (verb, kind) = match perm {
            Perm::Require(verb, resource) | Perm::RequireOrSelf(verb, resource) => {
                (verb, resource.to_string())
            }
            Perm::WatchQuery => (Verb::Watch, "watch".to_string()),
            // Public routes are not authenticated, so nobody is there to record.
            Perm::Public => return None,
        };
        let path = req.uri().path().to_string();
        let route =
            req.extensions().get::<MatchedPath>().map_or_else(|| path.clone(), |m| m.as_str().to_string());
        Some(Pending {
            time: now,
            principal: principal.name.clone(),
            token: principal.token,
            method: req.method().to_string(),
            verb,
            kind,
            uuid: uuid_in_path(&route, &path),
            route,
            path,
            source: req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
            request_id: request_id(req),
            home: principal.home().ok(),
        })
    }

    /// The record of this request answered with `resp`.
    pub fn finish(self, resp: &Response) -> AuditRecord {
        let status = resp.status().as_u16();
        let created = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.rsplit('/').next())
            .and_then(|last| Uuid::parse_str(last).ok());
        AuditRecord {
            time: self.time,
            principal: self.principal,
            token: self.token,
            account: resp.extensions().get::<AuditAccount>().map(|a| a.0).or(self.home),
            method: self.method,
            verb: self.verb,
            route: self.route,
            path: self.path,
            object: AuditObject { kind: self.kind, uuid: self.uuid.or(created) },
            status,
            result: AuditResult::of_status(status),
            source: self.source,
            request_id: self.request_id,
        }
    }
}

/// Records written after their answers went out, at most, at once.
pub const IN_FLIGHT_MAX: u32 = 1024;

/// Where the route layer hands its records (see the module's documentation).
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        AuditLog { store, metrics, in_flight: Arc::new(Semaphore::new(IN_FLIGHT_MAX as usize)) }
    }

    /// Record the answer to `pending` (if it is recorded) and hand the answer back. A record
    /// that cannot be written is logged and counted; the answer stays what it was.
    pub async fn record(&self, pending: Option<Pending>, resp: Response) -> Response {
        let Some(pending) = pending else { return resp };
        let rec = pending.finish(&resp);
        match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(permit) => {
                let log = self.clone();
                tokio::spawn(async move {
                    log.write_counted(&rec).await;
                    drop(permit);
                });
            }
            // Too many in flight (or a flush waiting): this request waits for its own.
            Err(_) => self.write_counted(&rec).await,
        }
        resp
    }

    /// Wait until every record handed over before this call is in the store (or failed).
    pub async fn flush(&self) {
        // Permits are handed out in order, so this waits for the holders before it only.
        if let Ok(all) = self.in_flight.acquire_many(IN_FLIGHT_MAX).await {
            drop(all);
        }
    }

    async fn write_counted(&self, rec: &AuditRecord) {
        match write(self.store.as_ref(), rec).await {
            Ok(()) => self.metrics.audit_recorded(rec.result.name()),
            Err(e) => {
                self.metrics.audit_write_failure();
                tracing::error!(
                    error = %e, principal = %rec.principal, method = %rec.method, path = %rec.path,
                    status = rec.status, "failed to write an audit record"
                );
            }
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("in_flight", &(IN_FLIGHT_MAX as usize - self.in_flight.available_permits()))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditWriteError {
    #[error("cannot encode the audit record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store one record, in one put.
pub async fn write(store: &dyn Store, rec: &AuditRecord) -> Result<(), AuditWriteError> {
    let value = serde_json::to_vec(rec)?;
    let key = format!("{AUDIT_PREFIX}{:020}-{}", nanos(rec.time), Uuid::new_v4().simple());
    store.txn(Txn::new().then([Op::put(key, value)])).await?;
    Ok(())
}

/// What a read of the log returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub principal: Option<String>,
    pub limit: usize,
}

/// Records matching `filter`, newest first. Unreadable records are logged and skipped.
pub async fn read(
    store: &dyn Store,
    filter: &Filter,
    now: DateTime<Utc>,
) -> Result<Vec<AuditRecord>, StoreError> {
    let lo = filter.since.map_or(0, nanos);
    let now = nanos(now);
    // Recent history in blocks of under three hours, so that a reader that has its fill stops
    // after reading little; a minute of clock skew between servers is allowed for.
    let fine = now.saturating_sub(7 * DAY)..now + 60 * NANOS_PER_SEC;
    let mut out = Vec::new();
    for prefix in prefixes(lo, TIME_END, fine, 10u128.pow(13)).iter().rev() {
        let kvs = store.range(&format!("{AUDIT_PREFIX}{prefix}")).await?.kvs;
        for kv in kvs.iter().rev() {
            let Some(rec) = decode(kv) else { continue };
            if filter.principal.as_ref().is_some_and(|p| *p != rec.principal) {
                continue;
            }
            out.push(rec);
            if out.len() >= filter.limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn decode(kv: &KeyValue) -> Option<AuditRecord> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable audit record"))
        .ok()
}

/// Delete records stamped before `cutoff`, oldest first, at most [`PRUNE_PER_PASS`] of them;
/// returns how many were deleted.
pub async fn prune(store: &dyn Store, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
    let hi = nanos(cutoff);
    // What ages out between passes is recent; older blocks are normally empty, read coarsely.
    let fine = hi.saturating_sub(30 * DAY)..hi;
    let mut deleted = 0;
    for prefix in prefixes(0, hi, fine, 10u128.pow(14)) {
        let kvs = store.range(&format!("{AUDIT_PREFIX}{prefix}")).await?.kvs;
        for batch in kvs.chunks(PRUNE_BATCH) {
            let ops = batch.iter().map(|kv| Op::delete(kv.key.clone()));
            store.txn(Txn::new().then(ops)).await?;
            deleted += batch.len();
            if deleted >= PRUNE_PER_PASS {
                return Ok(deleted);
            }
        }
    }
    Ok(deleted)
}

/// Delete records older than `retention` now and every [`PRUNE_EVERY`], until `stopping`.
pub async fn prune_loop(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let Some(cutoff) =
            chrono::TimeDelta::from_std(retention).ok().and_then(|r| Utc::now().checked_sub_signed(r))
        else {
            continue;
        };
        match prune(store.as_ref(), cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.audit_pruned(n);
                tracing::info!(deleted = n, before = %cutoff, "deleted old audit records");
            }
            Err(e) => tracing::warn!(error = %e, "failed to delete old audit records"),
        }
    }
}

/// Nanoseconds since the epoch; times before it count as the epoch.
fn nanos(t: DateTime<Utc>) -> u128 {
    t.timestamp_nanos_opt().map_or(0, |n| u128::try_from(n).unwrap_or(0))
}

/// Decimal prefixes of the 20-digit time that together cover exactly `[lo, hi)`, oldest first.
/// Inside `fine` no prefix spans more than `block` nanoseconds (a power of ten), so a reader
/// that stops early reads little; elsewhere each is as wide as the digits allow (few prefixes,
/// normally empty).
fn prefixes(lo: u128, hi: u128, fine: Range<u128>, block: u128) -> Vec<String> {
    let hi = hi.min(TIME_END);
    let mut out = Vec::new();
    cover(0, 0, lo..hi.min(fine.start), None, &mut out);
    cover(0, 0, lo.max(fine.start)..hi.min(fine.end), Some(block), &mut out);
    cover(0, 0, lo.max(fine.end)..hi, None, &mut out);
    out
}

/// Walk the decimal trie below `prefix` (of `digits` digits) in order, adding the widest
/// prefixes inside `want` (and no wider than `block`).
fn cover(prefix: u128, digits: u32, want: Range<u128>, block: Option<u128>, out: &mut Vec<String>) {
    let size = 10u128.pow(TIME_DIGITS - digits);
    let start = prefix * size;
    let end = start + size;
    if want.is_empty() || end <= want.start || start >= want.end {
        return;
    }
    // A single time (20 digits) is never wider than any block.
    if want.start <= start && end <= want.end && (digits == TIME_DIGITS || block.is_none_or(|b| size <= b)) {
        out.push(if digits == 0 { String::new() } else { format!("{prefix:0w$}", w = digits as usize) });
        return;
    }
    for d in 0..10 {
        cover(prefix * 10 + d, digits + 1, want.clone(), block, out);
    }
}

/// The uuid in the first path parameter that holds one (`/v1/nodes/{uuid}`).
fn uuid_in_path(route: &str, path: &str) -> Option<Uuid> {
    route
        .split('/')
        .zip(path.split('/'))
        .filter(|(template, _)| template.starts_with('{'))
        .find_map(|(_, value)| Uuid::parse_str(value).ok())
}

/// The caller's `X-Request-Id`: printable ASCII, at most [`REQUEST_ID_MAX`] characters.
fn request_id(req: &Request) -> Option<String> {
    let id = req.headers().get("x-request-id")?.to_str().ok()?;
    let id: String = id.chars().filter(|c| c.is_ascii_graphic()).take(REQUEST_ID_MAX).collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[String], t: u128) -> usize {
        let key = format!("{t:020}");
        prefixes.iter().filter(|p| key.starts_with(p.as_str())).count()
    }

    #[test]
    fn prefixes_cover_exactly_the_range_once() {
        let lo = 1_767_225_600_123_456_789;
        let hi = lo + 5 * DAY + 17;
        let fine = hi - DAY..hi + 60 * NANOS_PER_SEC;
        let p = prefixes(lo, hi, fine, 10u128.pow(13));
        for t in [lo, lo + 1, lo + DAY, hi - DAY - 1, hi - DAY, hi - 2, hi - 1] {
            assert_eq!(covered(&p, t), 1, "{t} is in exactly one prefix of {p:?}");
        }
        for t in [0, lo - 1, hi, hi + 1, TIME_END - 1] {
            assert_eq!(covered(&p, t), 0, "{t} is outside");
        }
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, p, "oldest first");
        // Within the fine window, no prefix is wider than the block: 20 - 13 = 7 digits.
        let last_day: Vec<_> =
            p.iter().filter(|x| x.as_str() >= format!("{:020}", hi - DAY).as_str()).collect();
        assert!(last_day.iter().all(|x| x.len() >= 7), "{last_day:?}");
        assert!(p.len() < 400, "a few hundred prefixes at most, not {}", p.len());
    }

    #[test]
    fn prefixes_of_everything_and_nothing() {
        assert_eq!(prefixes(0, TIME_END, 0..0, 1), vec![String::new()]);
        assert!(prefixes(5, 5, 0..0, 1).is_empty());
        let all = prefixes(0, TIME_END, 100..200, 10);
        for t in [0, 99, 100, 150, 199, 200, TIME_END - 1] {
            assert_eq!(covered(&all, t), 1, "{t}");
        }
    }

    fn principal() -> Principal {
        Principal {
            name: "alice".into(),
            token: Uuid::new_v4(),
            grants: Arc::new(crate::access::Grants::none()),
            system: Uuid::new_v4(),
            expires_at: None,
            join: None,
            attenuation: None,
        }
    }

    fn request(method: Method, path: &str) -> Request {
        let mut req =
            Request::builder().method(method).uri(path).body(axum::body::Body::empty()).expect("request");
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4242))));
        req
    }

    fn response(status: u16, location: Option<&str>) -> Response {
        let mut b = Response::builder().status(status);
        if let Some(l) = location {
            b = b.header(header::LOCATION, l);
        }
        b.body(axum::body::Body::empty()).expect("response")
    }

    #[test]
    fn reads_are_not_recorded() {
        let perm = Perm::Require(Verb::Get, enjin_model::kinds::Resource::Token);
        assert!(
            Pending::begin(&request(Method::GET, "/v1/tokens"), &principal(), perm, Utc::now()).is_none()
        );
        let public =
            Pending::begin(&request(Method::POST, "/healthz"), &principal(), Perm::Public, Utc::now());
        assert!(public.is_none(), "public routes have nobody to record");
    }

    #[test]
    fn a_create_takes_its_uuid_from_the_location_and_a_refusal_is_refused() {
        let who = principal();
        let perm = Perm::Require(Verb::Create, enjin_model::kinds::Resource::Kind(enjin_model::Kind::Tier));
        let now = Utc::now();
        let id = Uuid::new_v4();
        let mut req = request(Method::POST, "/v1/tiers?x=1");
        req.headers_mut().insert("x-request-id", "abc def".parse().expect("header"));
        let pending = Pending::begin(&req, &who, perm, now).expect("a create is recorded");
        let mut resp = response(201, Some(&format!("/v1/tiers/{id}")));
        let account = Uuid::new_v4();
        resp.extensions_mut().insert(AuditAccount(account));
        let rec = pending.finish(&resp);
        assert_eq!((rec.time, rec.principal.as_str(), rec.token), (now, "alice", who.token));
        assert_eq!((rec.method.as_str(), rec.verb, rec.path.as_str()), ("POST", Verb::Create, "/v1/tiers"));
        assert_eq!(rec.object, AuditObject { kind: "tier".into(), uuid: Some(id) });
        assert_eq!((rec.status, rec.result), (201, AuditResult::Ok));
        assert_eq!(rec.account, Some(account), "a handler names the account through the response");
        assert_eq!(rec.source, Some(SocketAddr::from(([127, 0, 0, 1], 4242))));
        assert_eq!(rec.request_id.as_deref(), Some("abcdef"));

        let pending =
            Pending::begin(&request(Method::DELETE, "/v1/tiers/x"), &who, perm, now).expect("recorded");
        let rec = pending.finish(&response(403, None));
        assert_eq!((rec.status, rec.result, rec.object.uuid), (403, AuditResult::Refused, None));
        let pending =
            Pending::begin(&request(Method::PUT, "/v1/tiers/x"), &who, perm, now).expect("recorded");
        assert_eq!(pending.finish(&response(500, None)).result, AuditResult::Failed);
    }

    async fn open_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = enjin_store::SqliteStoreConfig::new(dir.path().join("state.db"));
        let store = enjin_store::SqliteStore::open(config).expect("open the store");
        (dir, Arc::new(store))
    }

    fn rec(time: DateTime<Utc>, principal: &str) -> AuditRecord {
        AuditRecord {
            time,
            principal: principal.into(),
            token: Uuid::new_v4(),
            account: None,
            method: "POST".into(),
            verb: Verb::Create,
            route: "/v1/tiers".into(),
            path: "/v1/tiers".into(),
            object: AuditObject { kind: "tier".into(), uuid: None },
            status: 201,
            result: AuditResult::Ok,
            source: None,
            request_id: None,
        }
    }

    fn ago(now: DateTime<Utc>, hours: i64) -> DateTime<Utc> {
        now - chrono::TimeDelta::hours(hours)
    }

    #[tokio::test]
    async fn pruning_removes_old_records_and_keeps_new_ones() {
        let (_dir, store) = open_store().await;
        let now = Utc::now();
        // A year, a fortnight, 91 days, a day and a minute ago, and just after the cutoff.
        let cutoff = ago(now, 90 * 24);
        let old = [ago(now, 365 * 24), ago(now, 91 * 24), cutoff - chrono::TimeDelta::nanoseconds(1)];
        let new = [cutoff, ago(now, 14 * 24), ago(now, 24), now - chrono::TimeDelta::minutes(1)];
        for t in old.iter().chain(&new) {
            write(store.as_ref(), &rec(*t, "alice")).await.expect("write");
        }
        assert_eq!(prune(store.as_ref(), cutoff).await.expect("prune"), old.len());
        let all = Filter { limit: 100, ..Filter::default() };
        let kept: Vec<_> =
            read(store.as_ref(), &all, now).await.expect("read").into_iter().map(|r| r.time).collect();
        let mut want = new.to_vec();
        want.reverse();
        assert_eq!(kept, want, "the newer ones are kept, newest first");
        assert_eq!(prune(store.as_ref(), cutoff).await.expect("prune again"), 0);
    }

    #[tokio::test]
    async fn pruning_goes_in_batches() {
        let (_dir, store) = open_store().await;
        let now = Utc::now();
        for i in 0..(PRUNE_BATCH as i64 * 2 + 7) {
            write(store.as_ref(), &rec(ago(now, 100 * 24) + chrono::TimeDelta::seconds(i), "a"))
                .await
                .expect("write");
        }
        let before = store.current_revision().await.expect("revision");
        assert_eq!(prune(store.as_ref(), ago(now, 90 * 24)).await.expect("prune"), PRUNE_BATCH * 2 + 7);
        assert_eq!(store.current_revision().await.expect("revision"), before + 3, "three transactions");
        assert!(store.range(AUDIT_PREFIX).await.expect("range").kvs.is_empty());
    }

    #[tokio::test]
    async fn reads_filter_by_time_and_principal_and_stop_at_the_limit() {
        let (_dir, store) = open_store().await;
        let now = Utc::now();
        for (hours, who) in [(24 * 30, "alice"), (24 * 8, "bob"), (30, "alice"), (2, "bob"), (1, "alice")] {
            write(store.as_ref(), &rec(ago(now, hours), who)).await.expect("write");
        }
        let get = |filter: Filter| {
            let store = store.clone();
            async move {
                let got = read(store.as_ref(), &filter, now).await.expect("read");
                got.into_iter().map(|r| (r.time, r.principal)).collect::<Vec<_>>()
            }
        };
        let all = get(Filter { limit: 10, ..Filter::default() }).await;
        let hours: Vec<i64> = all.iter().map(|(t, _)| (now - *t).num_hours()).collect();
        assert_eq!(hours, vec![1, 2, 30, 24 * 8, 24 * 30], "newest first, across the fine and coarse ranges");
        let since = get(Filter { since: Some(ago(now, 3)), limit: 10, ..Filter::default() }).await;
        assert_eq!(since.len(), 2);
        let bob = get(Filter { principal: Some("bob".into()), limit: 10, ..Filter::default() }).await;
        assert_eq!(bob.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(), ["bob", "bob"]);
        let two = get(Filter { limit: 2, ..Filter::default() }).await;
        assert_eq!(two, all[..2].to_vec());
        let old_alice =
            get(Filter { since: Some(ago(now, 24 * 31)), principal: Some("alice".into()), limit: 3 }).await;
        assert_eq!(old_alice.len(), 3);
    }

    #[test]
    fn path_uuids_come_from_parameters() {
        let id = Uuid::new_v4();
        assert_eq!(uuid_in_path("/v1/nodes/{uuid}", &format!("/v1/nodes/{id}")), Some(id));
        assert_eq!(uuid_in_path("/v1/apps/{app}/deploys", "/v1/apps/web/deploys"), None);
        assert_eq!(uuid_in_path("/v1/nodes", "/v1/nodes"), None);
    }
}
