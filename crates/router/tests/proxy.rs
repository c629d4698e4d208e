//! Requests through a real router to real backends on loopback: routing, balancing, retries,
//! error pages, header rules, upgrades and metrics.

mod common;

use std::time::Duration;

use common::*;
use enjin_router::RouterConfig;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn routes_by_host_without_port_or_case() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let t = table(
        1,
        vec![route("a", &["a.test"], "/", &[a.addr]), route("b", &["b.test", "www.b.test"], "/", &[b.addr])],
    );
    let r = Running::start(RouterConfig::default(), t).await;
    let c = client();
    assert_eq!(get(&c, r.addr, "a.test", "/").await.body, "a");
    assert_eq!(get(&c, r.addr, "B.Test:8080", "/x").await.body, "b");
    assert_eq!(get(&c, r.addr, "www.b.test", "/").await.body, "b");
    let miss = get(&c, r.addr, "c.test", "/").await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND);
    assert_eq!(miss.headers["x-enjin-fault"], "client");
    assert!(miss.body.contains("no app is routed at c.test"), "{}", miss.body);
    assert!(miss.headers["content-type"].to_str().expect("text").starts_with("text/html"));
    // The path the backend sees is the one asked for, query included.
    get(&c, r.addr, "a.test", "/deep/path?q=1&r=2").await;
    assert_eq!(a.last().uri, "/deep/path?q=1&r=2");
}

#[tokio::test]
async fn longest_path_prefix_wins_on_segment_boundaries() {
    let (root, api, v2) =
        (Backend::start("root").await, Backend::start("api").await, Backend::start("v2").await);
    let t = table(
        1,
        vec![
            route("root", &["h.test"], "/", &[root.addr]),
            route("api", &["h.test"], "/api", &[api.addr]),
            route("v2", &["h.test"], "/api/v2/", &[v2.addr]),
            route("only-docs", &["docs.test"], "/docs", &[root.addr]),
        ],
    );
    let r = Running::start(RouterConfig::default(), t).await;
    let c = client();
    for (path, want) in [
        ("/", "root"),
        ("/apix", "root"),
        ("/api", "api"),
        ("/api/v1", "api"),
        ("/api/v2", "v2"),
        ("/api/v2/x?y", "v2"),
    ] {
        assert_eq!(get(&c, r.addr, "h.test", path).await.body, want, "{path}");
    }
    assert_eq!(get(&c, r.addr, "docs.test", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&c, r.addr, "docs.test", "/docs/intro").await.status, StatusCode::OK);
}

#[tokio::test]
async fn spreads_requests_over_backends() {
    let backends = [Backend::start("x").await, Backend::start("y").await, Backend::start("z").await];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let r =
        Running::start(RouterConfig::default(), table(1, vec![route("s", &["s.test"], "/", &addrs)])).await;
    let c = client();
    for _ in 0..300 {
        assert_eq!(get(&c, r.addr, "s.test", "/").await.status, StatusCode::OK);
    }
    for b in &backends {
        assert!(b.hits() >= 40, "{} got {} of 300", b.name, b.hits());
    }
}

#[tokio::test]
async fn a_dead_backend_among_live_ones_costs_no_errors() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let t = table(1, vec![route("d", &["d.test"], "/", &[a.addr, dead_addr(), b.addr])]);
    let r = Running::start(RouterConfig::default(), t).await;
    let c = client();
    for i in 0..150 {
        let reply = get(&c, r.addr, "d.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
        // Idempotent requests with a small body are retried too, body and all.
        let put = send(&c, r.addr, Method::PUT, "d.test", "/thing", &[], "payload").await;
        assert_eq!(put.status, StatusCode::OK, "put {i}: {}", put.body);
    }
    assert!(
        a.seen
            .lock()
            .expect("log")
            .iter()
            .chain(b.seen.lock().expect("log").iter())
            .filter(|s| s.method == Method::PUT)
            .all(|s| s.body == "payload")
    );
    let stats = r.router.stats("d").expect("stats of app d");
    // One failure ejects the dead backend; requests after that pass it over.
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(stats.retries, 1, "{stats:?}");
    assert_eq!(stats.by_class.server_error, 0);
    assert_eq!(stats.by_class.success, 300);
    assert_eq!(stats.backends, 3);
}

#[tokio::test]
async fn error_pages_say_what_and_whose_fault() {
    // 503: the app is known, nothing serves it.
    // 502: nothing connects; or the instance answers something that is not HTTP.
    // 504: the instance never answers.
    let garbage = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let garbage_addr = garbage.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"SSH-2.0-definitely not http\r\n\r\n").await;
        }
    });
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let t = table(
        1,
        vec![
            route("empty", &["empty.test"], "/", &[]),
            route("dead", &["dead.test"], "/", &[dead_addr(), dead_addr()]),
            route("garbage", &["garbage.test"], "/", &[garbage_addr]),
            route("silent", &["silent.test"], "/", &[silent_addr]),
        ],
    );
    let config = RouterConfig { response_timeout: Duration::from_millis(300), ..RouterConfig::default() };
    let r = Running::start(config, t).await;
    let c = client();
    for (host, status, text) in [
        ("empty.test", StatusCode::SERVICE_UNAVAILABLE, "app empty has no instance"),
        ("dead.test", StatusCode::BAD_GATEWAY, "no instance of app dead could be reached"),
        ("garbage.test", StatusCode::BAD_GATEWAY, "did not answer with HTTP"),
        ("silent.test", StatusCode::GATEWAY_TIMEOUT, "sent no response within 300 ms"),
    ] {
        let reply = get(&c, r.addr, host, "/").await;
        assert_eq!(reply.status, status, "{host}: {}", reply.body);
        assert_eq!(reply.headers["x-enjin-fault"], "upstream", "{host}");
        assert!(reply.body.contains(text), "{host}: {}", reply.body);
    }
    let dead = r.router.stats("dead").expect("stats");
    assert_eq!(dead.connect_failures, 2, "both dead backends were tried: {dead:?}");
    assert_eq!(r.router.stats("silent").expect("stats").by_class.server_error, 1);
    // A request without a host at all (HTTP/1.0 allows it).
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply}");
    assert!(reply.contains("x-enjin-fault: client"), "{reply}");
}

#[tokio::test]
async fn forwards_headers_a_proxy_should_and_drops_hop_by_hop() {
    let a = Backend::start("a").await;
    let r = Running::start(RouterConfig::default(), table(1, vec![route("a", &["a.test"], "/", &[a.addr])]))
        .await;
    let c = client();
    let extra = [
        ("connection", "x-private"),
        ("x-private", "secret"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-kept", "1"),
    ];
    let reply = send(&c, r.addr, Method::POST, "a.test:81", "/submit", &extra, "streamed body").await;
    assert_eq!(reply.status, StatusCode::OK);
    // Hop-by-hop headers of the backend's response do not reach the client either.
    assert!(!reply.headers.contains_key("keep-alive"), "{:?}", reply.headers);
    assert_eq!(reply.headers["x-backend"], "a");
    let seen = a.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.body, "streamed body");
    assert_eq!(seen.headers["host"], "a.test:81");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "a.test:81");
    assert_eq!(seen.headers["x-kept"], "1");
    assert!(!seen.headers.contains_key("x-private"), "{:?}", seen.headers);
}

#[tokio::test]
async fn upgrades_tunnel_bytes_both_ways() {
    // A backend that switches to an echo protocol, as a WebSocket server would.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
                    )
                    .await;
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    let r =
        Running::start(RouterConfig::default(), table(1, vec![route("ws", &["ws.test"], "/", &[echo_addr])]))
            .await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect to the router");
    s.write_all(b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(PATIENCE, s.read_exact(&mut byte))
            .await
            .expect("in time")
            .expect("the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
    for message in [&b"hello"[..], b"\x00\xffbinary too", b"and again"] {
        s.write_all(message).await.expect("write through the tunnel");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back)).await.expect("in time").expect("echo");
        assert_eq!(back, message);
    }
    let stats = r.router.stats("ws").expect("stats");
    assert_eq!((stats.by_class.informational, stats.in_flight), (1, 1), "{stats:?}");
    drop(s);
    eventually("the tunnel to close", || r.router.stats("ws").is_some_and(|s| s.in_flight == 0)).await;
}

#[tokio::test]
async fn metrics_move() {
    let a = Backend::start("a").await;
    let r = Running::start(
        RouterConfig::default(),
        table(42, vec![route("shop", &["shop.test"], "/", &[a.addr, dead_addr()])]),
    )
    .await;
    let c = client();
    for _ in 0..20 {
        assert_eq!(get(&c, r.addr, "shop.test", "/").await.status, StatusCode::OK);
    }
    get(&c, r.addr, "nowhere.test", "/").await;
    let text = r.router.metrics_text();
    for line in [
        "enjin_router_table_version 42",
        "enjin_router_backends{app=\"shop\"} 2",
        "enjin_router_requests_total{app=\"shop\",code=\"2xx\"} 20",
        "enjin_router_requests_total{app=\"shop\",code=\"5xx\"} 0",
        "enjin_router_request_duration_seconds_count{app=\"shop\"} 20",
        "enjin_router_request_duration_seconds_bucket{app=\"shop\",le=\"+Inf\"} 20",
        "enjin_router_connect_failures_total{app=\"shop\"} 1",
        "enjin_router_retries_total{app=\"shop\"} 1",
        "enjin_router_requests_in_flight{app=\"shop\"} 0",
        "enjin_router_unrouted_requests_total 1",
        "enjin_router_connections_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    let stats = r.router.stats("shop").expect("stats");
    assert_eq!(stats.requests, 20);
    let (p50, p99) = (stats.p50.expect("a p50"), stats.p99.expect("a p99"));
    assert!(p50 <= p99 && p99 <= Duration::from_secs(10), "{p50:?} {p99:?}");
    assert!(r.router.stats("nowhere").is_none());
}

#[tokio::test]
async fn serves_on_the_callers_runtime_with_no_threads() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let config = RouterConfig { threads: 0, ..RouterConfig::default() };
    let t = table(1, vec![route("two", &["two.test"], "/", &[a.addr, dead_addr(), b.addr])]);
    let mut r = Running::start(config, t).await;
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, r.addr, "two.test", "/").await.status, StatusCode::OK);
    }
    assert!(a.hits() > 0 && b.hits() > 0, "{} {}", a.hits(), b.hits());
    r.shutdown();
    r.stopped().await.expect("serve returns");
}

#[tokio::test]
async fn a_connection_the_instance_closed_is_replaced_and_posts_survive_dead_backends() {
    // Answers one request per connection and closes it without saying so, as an instance with
    // a short keep-alive timeout does between two requests.
    let curt = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let curt_addr = curt.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = curt.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    let live = Backend::start("live").await;
    let t = table(
        1,
        vec![
            route("curt", &["curt.test"], "/", &[curt_addr]),
            route("post", &["post.test"], "/", &[dead_addr(), live.addr]),
        ],
    );
    let r = Running::start(RouterConfig::default(), t).await;
    let c = client();
    for i in 0..30 {
        let reply = get(&c, r.addr, "curt.test", "/").await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"), "request {i}");
    }
    assert_eq!(r.router.stats("curt").expect("stats").by_class.server_error, 0);
    // Nothing is sent before a connection stands, so even a POST goes on to the next backend.
    for i in 0..20 {
        let reply = send(&c, r.addr, Method::POST, "post.test", "/", &[], "form=1").await;
        assert_eq!(reply.status, StatusCode::OK, "post {i}: {}", reply.body);
    }
    assert!(live.seen.lock().expect("log").iter().all(|s| s.body == "form=1"));
    assert_eq!(live.hits(), 20);
}

#[tokio::test]
async fn an_instance_that_dies_mid_request_costs_idempotent_requests_nothing() {
    // It takes every request and closes without an answer, as a process SIGKILLed while it
    // handled one.
    let dying = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dying_addr = dying.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dying.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let a = Backend::start("a").await;
    let t = table(1, vec![route("d", &["d.test"], "/", &[dying_addr, a.addr])]);
    let r = Running::start(RouterConfig::default(), t).await;
    let c = client();
    for i in 0..50 {
        let reply = get(&c, r.addr, "d.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "get {i}: {}", reply.body);
    }
    let stats = r.router.stats("d").expect("stats");
    assert_eq!(stats.by_class.server_error, 0, "{stats:?}");
    // A request that is not idempotent is never sent twice: it fails, whoever answers next.
    let t = table(2, vec![route("p", &["p.test"], "/", &[dying_addr])]);
    r.router.apply(t);
    let post = send(&c, r.addr, Method::POST, "p.test", "/order", &[], "once").await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY, "{}", post.body);
}
