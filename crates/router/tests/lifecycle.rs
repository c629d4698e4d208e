//! The router's life around its requests: tables replacing each other, the snapshot on disk,
//! and graceful shutdown.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use enjin_router::{Router, RouterConfig, snapshot};
use http::{Response, StatusCode};
use http_body_util::Full;
use tokio::sync::Notify;

#[tokio::test]
async fn only_newer_tables_replace_the_served_one() {
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let r =
        Running::start(RouterConfig::default(), table(5, vec![route("a", &["a.test"], "/", &[old.addr])]))
            .await;
    let c = client();
    assert_eq!(r.router.version(), Some(5));
    assert!(!r.router.apply(table(4, vec![route("a", &["a.test"], "/", &[new.addr])])), "older");
    assert!(!r.router.apply(table(5, vec![route("a", &["a.test"], "/", &[new.addr])])), "equal");
    assert_eq!(get(&c, r.addr, "a.test", "/").await.body, "old");
    assert!(r.router.apply(table(6, vec![route("a", &["a.test"], "/", &[new.addr])])));
    assert_eq!(r.router.version(), Some(6));
    assert_eq!(get(&c, r.addr, "a.test", "/").await.body, "new");
    // A newer table that drops the app: its host is no longer routed.
    assert!(r.router.apply(table(7, vec![])));
    assert_eq!(get(&c, r.addr, "a.test", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(r.router.stats("a").expect("kept counters").backends, 0);
}

#[test]
fn a_fresh_router_takes_any_first_table() {
    let router = Router::new(RouterConfig::default());
    assert_eq!(router.version(), None);
    assert!(router.apply(table(-3, vec![])));
    assert_eq!(router.version(), Some(-3));
    assert!(router.metrics_text().contains("enjin_router_table_version -3\n"));
}

#[test]
fn snapshots_round_trip_privately() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("routes.json");
    assert!(snapshot::load(&path).expect("no snapshot is not an error").is_none());
    let first =
        table(9, vec![route("a", &["a.test"], "/", &[dead_addr()]), route("b", &["b.test"], "/api", &[])]);
    snapshot::save(&path, &first).expect("save");
    assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
    assert_eq!(snapshot::load(&path).expect("load"), Some(first));
    // Saving again replaces it whole and leaves no temporary file.
    let second = table(10, vec![]);
    snapshot::save(&path, &second).expect("save again");
    assert_eq!(snapshot::load(&path).expect("load"), Some(second));
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["routes.json"]);
    std::fs::write(&path, b"{\"version\": \"nine\"}").expect("write garbage");
    let err = snapshot::load(&path).expect_err("garbage is an error");
    assert!(err.to_string().contains("routes.json"), "{err}");
    let err = snapshot::save(&dir.path().join("missing/routes.json"), &table(1, vec![])).expect_err("no dir");
    assert!(err.to_string().contains("failed to write route snapshot"), "{err}");
}

/// A backend whose responses wait until the test releases them; counts the requests that
/// reached it.
async fn held_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<Notify>) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let addr = serve_http(move |_req| {
        let (arrived, release) = (a.clone(), r.clone());
        async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Response::new(Full::new(Bytes::from_static(b"slow done")))
        }
    })
    .await;
    (addr, arrived, release)
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let (slow, arrived, release) = held_backend().await;
    let mut r =
        Running::start(RouterConfig::default(), table(1, vec![route("slow", &["slow.test"], "/", &[slow])]))
            .await;
    let addr = r.addr;
    let request = tokio::spawn(async move { get(&client(), addr, "slow.test", "/").await });
    eventually("the request to reach the backend", || arrived.load(Ordering::SeqCst) == 1).await;

    r.shutdown();
    // Stopped accepting: new connections are refused once the listener is closed.
    let deadline = std::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the router still accepts");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!request.is_finished());

    release.notify_one();
    let reply = tokio::time::timeout(PATIENCE, request).await.expect("in time").expect("no panic");
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "slow done"));
    r.stopped().await.expect("serve returns cleanly");
}

#[tokio::test]
async fn shutdown_gives_up_after_the_drain_timeout() {
    let (slow, arrived, _release) = held_backend().await;
    let config = RouterConfig { drain_timeout: Duration::from_millis(200), ..RouterConfig::default() };
    let mut r = Running::start(config, table(1, vec![route("slow", &["slow.test"], "/", &[slow])])).await;
    let addr = r.addr;
    let request = tokio::spawn(async move {
        let req = http::Request::builder()
            .uri(format!("http://{addr}/"))
            .header("host", "slow.test")
            .body(Full::new(Bytes::new()))
            .expect("request");
        client().request(req).await.map(|r| r.status())
    });
    eventually("the request to reach the backend", || arrived.load(Ordering::SeqCst) == 1).await;
    let started = std::time::Instant::now();
    r.shutdown();
    r.stopped().await.expect("serve returns");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let outcome = tokio::time::timeout(PATIENCE, request).await.expect("in time").expect("no panic");
    assert!(outcome.is_err(), "the cut-off request fails: {outcome:?}");
}
