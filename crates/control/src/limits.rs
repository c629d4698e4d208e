//! Limits at the door of the API: how many connections, how long a client may take to finish a TLS
//! handshake, a request's headers or its body, how long an idle keep-alive connection stays open
//! (all enforced by `server.rs`), how many requests per second each principal may make (the
//! [`RateLimiter`], applied in `routes::authorize` right after authentication), and how many failed
//! authentications each source address may make (the [`FailedAuthLimiter`], applied in
//! `routes::authorize` before authentication).
//!
//! The rate limiter is a token bucket per key (a principal's name, a source address). A bucket
//! that has refilled is the same as no bucket, so buckets are dropped once full again; their
//! number is also capped, so memory stays bounded whatever the callers do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;

/// The largest body any route takes (a package upload). Each route also has its own limit
/// (`DefaultBodyLimit`: 1 MiB for JSON, this for packages), enforced as the body is read; a
/// request that announces more than this is answered 413 at the door, before routing,
/// authentication, or reading any of its body.
pub const MAX_REQUEST_BODY_BYTES: usize = crate::platform::MAX_PACKAGE_BYTES;

/// 413 for a request whose `Content-Length` is over [`MAX_REQUEST_BODY_BYTES`].
pub(crate) fn announced_too_large(headers: &HeaderMap) -> Option<Response> {
    let length = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    let max = u64::try_from(MAX_REQUEST_BODY_BYTES).unwrap_or(u64::MAX);
    (length > max).then(|| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the body is {length} bytes; no route takes more than {max}"),
        )
        .into_response()
    })
}

/// The limits of one API server (`[api]` in `enjin.toml`). The defaults are here and in
/// docs/configuration.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Requests per principal; `None` turns rate limiting off.
    pub rate: Option<Rate>,
    /// Failed authentications per source address; `None` turns their limit off.
    pub failed_auth: Option<Rate>,
    /// Open connections at most; connections beyond are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client has to send a request's headers: the first request's from the moment
    /// the connection is ready, later ones' from their first byte.
    pub header_timeout: Duration,
    /// How long a client has to send a request's body, from the end of its headers: a client
    /// that trickles its body holds a connection and a handler no longer than this.
    pub body_timeout: Duration,
    /// How long a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a keep-alive connection may wait, with no request in flight and none begun,
    /// before it is closed.
    pub idle_timeout: Duration,
}

impl ApiLimits {
    /// The default sustained request rate per principal.
    pub const RATE_PER_SECOND: u32 = 100;
    /// The default burst per principal: requests it may make at once before the rate applies.
    pub const BURST: u32 = 200;
    /// A person mistyping a token, or a script with a stale one, fails a few times; a source
    /// that fails this many times in a row is guessing or misconfigured, and each further try
    /// costs it a second.
    pub const FAILED_AUTH_PER_SECOND: u32 = 1;
    /// The default number of failed authentications a source may make in a row before each further
    /// try has to wait for [`ApiLimits::FAILED_AUTH_PER_SECOND`].
    pub const FAILED_AUTH_BURST: u32 = 20;
    /// The default cap on connections open at once.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// The default [`ApiLimits::header_timeout`].
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Long enough for the largest package (512 MiB) at about 2 MB/s; a JSON body (1 MiB at
    /// most) that takes this long is not being sent in earnest.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(300);
    /// The default [`ApiLimits::handshake_timeout`].
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default [`ApiLimits::idle_timeout`].
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The most connections a server can be configured to hold (a semaphore's permits are
    /// counted in `u32` when the server drains).
    pub const MAX_MAX_CONNECTIONS: usize = 1 << 20;
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            rate: Some(Rate { per_second: Self::RATE_PER_SECOND, burst: Self::BURST }),
            failed_auth: Some(Rate {
                per_second: Self::FAILED_AUTH_PER_SECOND,
                burst: Self::FAILED_AUTH_BURST,
            }),
            max_connections: Self::MAX_CONNECTIONS,
            header_timeout: Self::HEADER_TIMEOUT,
            body_timeout: Self::BODY_TIMEOUT,
            handshake_timeout: Self::HANDSHAKE_TIMEOUT,
            idle_timeout: Self::IDLE_TIMEOUT,
        }
    }
}

/// A sustained rate with a burst: `burst` requests at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At least 1.
    pub per_second: u32,
    /// At least 1.
    pub burst: u32,
}

impl Rate {
    /// How long an untouched bucket takes to fill up from empty; after that it is forgotten.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst.max(1)) / f64::from(self.per_second.max(1)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<String, Bucket>,
    last_sweep: Instant,
}

/// Token buckets, one per principal name.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_buckets: usize,
    // Held only for a few arithmetic operations, never across an `.await`.
    buckets: Mutex<Buckets>,
}

/// The answer to a caller over its rate: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until the bucket holds a token again; the 429's `Retry-After` is this rounded
    /// up to whole seconds.
    pub retry_after: Duration,
}

impl RateLimiter {
    /// How many principals' buckets are kept at most.
    pub const MAX_BUCKETS: usize = 10_000;

    /// Buckets at `rate` (a zero `per_second` or `burst` is taken as 1), for at most
    /// [`RateLimiter::MAX_BUCKETS`] principals.
    pub fn new(rate: Rate) -> Self {
        RateLimiter::with_capacity(rate, Self::MAX_BUCKETS, Instant::now())
    }

    fn with_capacity(rate: Rate, max_buckets: usize, now: Instant) -> Self {
        let rate = Rate { per_second: rate.per_second.max(1), burst: rate.burst.max(1) };
        let buckets = Buckets { map: HashMap::new(), last_sweep: now };
        RateLimiter { rate, max_buckets: max_buckets.max(1), buckets: Mutex::new(buckets) }
    }

    /// Take one request from `key`'s bucket at `now`, or say how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), RateLimited> {
        // A poisoned lock only means another request panicked mid-update; the counts are
        // still numbers, so keep limiting with them.
        let mut b = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sweep(&mut b, now);
        if let Some(bucket) = b.map.get_mut(key) {
            return self.take(bucket, now);
        }
        self.make_room(&mut b, now);
        let bucket =
            b.map.entry(key.to_string()).or_insert(Bucket { tokens: f64::from(self.rate.burst), at: now });
        self.take(bucket, now)
    }

    /// Whether `key`'s bucket holds a token at `now`, without taking it (nor making a bucket
    /// for a key that has none: that one holds a full burst).
    pub fn peek(&self, key: &str, now: Instant) -> Result<(), RateLimited> {
        let mut b = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match b.map.get_mut(key) {
            Some(bucket) => self.refill(bucket, now),
            None => Ok(()),
        }
    }

    /// Refill `bucket` for the time since it was last touched, then take one token from it.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), RateLimited> {
        self.refill(bucket, now)?;
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Refill `bucket` for the time since it was last touched; `Err` when it holds less than
    /// one token, saying how long until it does.
    fn refill(&self, bucket: &mut Bucket, now: Instant) -> Result<(), RateLimited> {
        let (burst, per_second) = (f64::from(self.rate.burst), f64::from(self.rate.per_second));
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / per_second;
        Err(RateLimited { retry_after: Duration::from_secs_f64(wait) })
    }

    /// How many buckets are kept (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.map.len())
    }

    /// Now and then, forget every bucket that has refilled: it is the same as a new one.
    fn sweep(&self, b: &mut Buckets, now: Instant) {
        let full_after = self.rate.refill_time();
        if now.saturating_duration_since(b.last_sweep) < full_after.max(Duration::from_secs(1)) {
            return;
        }
        b.map.retain(|_, bucket| now.saturating_duration_since(bucket.at) < full_after);
        b.last_sweep = now;
    }

    /// Before adding a bucket at capacity: drop the refilled ones, and if that is not enough,
    /// the one untouched longest (it gets a full bucket again next time, which errs on the side
    /// of serving, never of refusing).
    fn make_room(&self, b: &mut Buckets, now: Instant) {
        if b.map.len() < self.max_buckets {
            return;
        }
        let full_after = self.rate.refill_time();
        b.map.retain(|_, bucket| now.saturating_duration_since(bucket.at) < full_after);
        b.last_sweep = now;
        while b.map.len() >= self.max_buckets {
            let Some(oldest) = b.map.iter().min_by_key(|(_, bucket)| bucket.at).map(|(k, _)| k.clone())
            else {
                break;
            };
            b.map.remove(&oldest);
        }
    }
}

impl RateLimited {
    /// Whole seconds, rounded up, and at least 1: what `Retry-After` can say.
    pub fn retry_after_seconds(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// 429 with `Retry-After`, the detail naming what was over its limit (`what`).
    fn answer(self, what: &str) -> Response {
        let seconds = self.retry_after_seconds();
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("too many {what}; retry in {seconds} s"),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        resp
    }
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        self.answer("requests from this principal")
    }
}

/// Failed authentications (a missing, malformed, unknown, revoked or expired token) per source
/// address. A source whose failures have emptied its bucket is answered 429 before its token
/// is looked at, so that guessing tokens, or replaying dead ones, costs the guesser time and
/// the server next to nothing. Successful requests take nothing from the bucket: a source that
/// authenticates is never slowed by this.
///
/// Sources are IPv4 addresses and IPv6 /64 networks (one host commonly holds a whole /64, so
/// single IPv6 addresses would cost an attacker nothing to change). Behind a proxy every
/// client shares the proxy's bucket.
#[derive(Debug)]
pub struct FailedAuthLimiter {
    buckets: RateLimiter,
}

/// The answer to a source over its failed authentications: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimited(pub RateLimited);

impl FailedAuthLimiter {
    /// A limiter allowing each source `rate` failed authentications, for at most
    /// [`RateLimiter::MAX_BUCKETS`] sources.
    pub fn new(rate: Rate) -> Self {
        FailedAuthLimiter { buckets: RateLimiter::new(rate) }
    }

    /// Whether `source` may try to authenticate at `now`. Takes nothing from its bucket.
    pub fn admit(&self, source: IpAddr, now: Instant) -> Result<(), SourceLimited> {
        self.buckets.peek(&source_key(source), now).map_err(SourceLimited)
    }

    /// Count one failed authentication from `source` at `now`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        // An empty bucket stays empty: the failure is already being answered.
        let _ = self.buckets.check(&source_key(source), now);
    }

    /// How many sources are tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.buckets.tracked()
    }
}

impl IntoResponse for SourceLimited {
    fn into_response(self) -> Response {
        self.0.answer("failed authentications from this address")
    }
}

/// The bucket a source address counts in: an IPv4 address (also when written as IPv4-mapped
/// IPv6), or the /64 network of an IPv6 address.
fn source_key(source: IpAddr) -> String {
    match source {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(10, 3), 100, t0);
        for _ in 0..3 {
            assert_eq!(rl.check("alice", t0), Ok(()));
        }
        let refused = rl.check("alice", t0).expect_err("over the burst");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_seconds(), 1, "Retry-After is at least a second");
        // A tenth of a second later there is one more.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(rl.check("alice", later), Ok(()));
        assert!(rl.check("alice", later).is_err());
    }

    #[test]
    fn principals_do_not_share_a_bucket() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(1, 2), 100, t0);
        assert!(rl.check("alice", t0).is_ok());
        assert!(rl.check("alice", t0).is_ok());
        assert!(rl.check("alice", t0).is_err());
        assert!(rl.check("bob", t0).is_ok(), "bob is not slowed by alice");
        assert!(rl.check("bob", t0).is_ok());
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(5, 2), 100, t0);
        let much_later = t0 + Duration::from_secs(3600);
        assert!(rl.check("a", much_later).is_ok());
        assert!(rl.check("a", much_later).is_ok());
        assert!(rl.check("a", much_later).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(1, 1), 100, t0);
        assert!(rl.check("a", t0).is_ok());
        let refused = rl.check("a", t0 + Duration::from_millis(10)).expect_err("empty");
        assert_eq!(refused.retry_after_seconds(), 1);
        let slow = RateLimiter::with_capacity(rate(1, 1), 100, t0);
        assert!(slow.check("a", t0).is_ok());
        let refused = slow.check("a", t0).expect_err("empty");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.retry_after_seconds(), 1);
    }

    #[test]
    fn memory_stays_bounded_by_evicting_idle_buckets() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(100, 100), 50, t0);
        for i in 0..1000 {
            assert!(rl.check(&format!("p{i}"), t0).is_ok(), "a new principal starts with a burst");
            assert!(rl.tracked() <= 50);
        }
        // Refilled buckets are forgotten by the next sweep.
        let later = t0 + Duration::from_secs(5);
        assert!(rl.check("someone", later).is_ok());
        assert_eq!(rl.tracked(), 1);
    }

    #[test]
    fn at_capacity_the_longest_untouched_bucket_goes_and_debts_stay() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(1, 1), 2, t0);
        assert!(rl.check("busy", t0).is_ok());
        assert!(rl.check("busy", t0).is_err());
        let t1 = t0 + Duration::from_millis(100);
        assert!(rl.check("x", t1).is_ok());
        assert!(rl.check("busy", t1 + Duration::from_millis(50)).is_err(), "still in debt");
        // A third principal at capacity: x was touched longest ago, so x goes, not busy.
        let t2 = t1 + Duration::from_millis(100);
        assert!(rl.check("y", t2).is_ok());
        assert_eq!(rl.tracked(), 2);
        assert!(rl.check("busy", t2).is_err(), "busy's debt survived the eviction");
    }

    #[test]
    fn peeking_takes_nothing_and_makes_no_bucket() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(rate(1, 2), 100, t0);
        for _ in 0..10 {
            assert_eq!(rl.peek("a", t0), Ok(()));
        }
        assert_eq!(rl.tracked(), 0);
        assert!(rl.check("a", t0).is_ok());
        assert!(rl.check("a", t0).is_ok());
        let refused = rl.peek("a", t0).expect_err("empty");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(rl.peek("a", t0 + Duration::from_secs(1)), Ok(()), "refilled");
    }

    #[test]
    fn failed_authentications_are_counted_per_source_and_success_costs_nothing() {
        let t0 = Instant::now();
        let limiter = FailedAuthLimiter { buckets: RateLimiter::with_capacity(rate(1, 3), 100, t0) };
        let guesser: IpAddr = "192.0.2.7".parse().expect("address");
        let honest: IpAddr = "192.0.2.8".parse().expect("address");
        // Admitting is free: an honest source is admitted however often it comes.
        for _ in 0..100 {
            assert!(limiter.admit(honest, t0).is_ok());
        }
        for _ in 0..3 {
            assert!(limiter.admit(guesser, t0).is_ok());
            limiter.failed(guesser, t0);
        }
        let refused = limiter.admit(guesser, t0).expect_err("out of tries");
        assert_eq!(refused.0.retry_after_seconds(), 1);
        assert!(limiter.admit(honest, t0).is_ok(), "others are not slowed");
        // As IPv4-mapped IPv6, the same source.
        assert!(limiter.admit("::ffff:192.0.2.7".parse().expect("address"), t0).is_err());
        assert!(limiter.admit(guesser, t0 + Duration::from_secs(1)).is_ok(), "one more a second later");
    }

    #[test]
    fn many_failing_sources_do_not_grow_the_table_without_bound() {
        let t0 = Instant::now();
        let limiter = FailedAuthLimiter { buckets: RateLimiter::with_capacity(rate(1, 3), 50, t0) };
        for i in 0..1000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limiter.failed(source, t0);
            assert!(limiter.tracked() <= 50);
        }
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let key = |a: &str| source_key(a.parse().expect("address"));
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), key("2001:db8:1:2:ffff::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(key("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn the_failed_auth_answer_is_a_problem_naming_the_address() {
        let resp = SourceLimited(RateLimited { retry_after: Duration::from_millis(200) }).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some(crate::problem::CONTENT_TYPE)
        );
    }

    #[test]
    fn bodies_announced_over_every_limit_are_refused_at_the_door() {
        let mut h = HeaderMap::new();
        assert!(announced_too_large(&h).is_none());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_REQUEST_BODY_BYTES as u64));
        assert!(announced_too_large(&h).is_none());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_REQUEST_BODY_BYTES as u64 + 1));
        let resp = announced_too_large(&h).expect("refused");
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn the_answer_is_a_problem_with_retry_after() {
        let resp = RateLimited { retry_after: Duration::from_millis(1500) }.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        assert_eq!(
            resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some(crate::problem::CONTENT_TYPE)
        );
    }
}
