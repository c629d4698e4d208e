//! The API's door, attacked: TLS that trusts only the server's CA, a slowloris client dribbling
//! its headers, more connections than the cap, idle keep-alive connections, a principal over
//! its rate, a source guessing tokens, a client trickling its body, and bodies over every
//! route's limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enjin_control::{ApiLimits, ControlConfig, Rate};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::fixtures::membership;
use crate::harness::{
    PATIENCE, TestServer, assert_problem, assert_problem_status, https_client, send, uuid_of,
};

fn with_limits(f: impl FnOnce(&mut ApiLimits)) -> ControlConfig {
    let mut config = ControlConfig::default();
    f(&mut config.api);
    config
}

/// A TLS connection to the server, trusting its CA, with nothing sent yet.
async fn tls_stream(s: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = enjin_client::tls::client_config(&s.ca_pem).expect("a client configuration");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a server name");
    connector.connect(name, tcp).await.expect("a TLS handshake with the server")
}

/// Read until the peer closes (or fails) the connection; how long that took, and what was read.
async fn until_closed(mut r: impl AsyncRead + Unpin, limit: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), r.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_servers_ca_is_trusted() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK, "a client with the CA gets in");

    let other = enjin_pki::RingCa::generate(0).expect("another CA");
    let stranger = https_client(other.cert_pem()).timeout(PATIENCE).build().expect("client");
    let err = stranger.get(s.url("/healthz")).send().await.expect_err("another CA's client is refused");
    assert!(err.is_connect(), "{err:?}");
    let trustless = reqwest::Client::builder()
        .tls_backend_preconfigured(enjin_client::tls::no_roots().expect("config"))
        .timeout(PATIENCE)
        .build()
        .expect("client");
    assert!(trustless.get(s.url("/healthz")).send().await.is_err(), "a client trusting no CA is refused");
    let plain = trustless.get(format!("http://{}/healthz", s.addr)).send().await;
    assert!(plain.is_err(), "plain HTTP to the TLS port gets nothing: {plain:?}");

    // The typed client: with the CA it works; without one it will not even try https; with the
    // wrong one it fails.
    let ok = enjin_client::Client::with_ca(&s.base, Some(s.token.clone()), Some(&s.ca_pem)).expect("client");
    assert_eq!(ok.health().await.expect("health").status, "ok");
    ok.check_token().await.expect("the admin token is accepted");
    let no_ca = enjin_client::Client::new(&s.base, Some(s.token.clone())).expect_err("https needs a CA");
    assert!(no_ca.to_string().contains("--ca"), "{no_ca}");
    let wrong = enjin_client::Client::with_ca(&s.base, None, Some(other.cert_pem())).expect("client");
    assert!(wrong.health().await.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let header = Duration::from_secs(1);
    let s = TestServer::start_with(&with_limits(|l| {
        l.header_timeout = header;
        l.idle_timeout = Duration::from_secs(30);
    }))
    .await;
    let (read, mut write) = tokio::io::split(tls_stream(&s).await);
    let handshaken = Instant::now();
    let closed = tokio::spawn(until_closed(read, Duration::from_secs(10)));
    // Headers one byte at a time, never finished.
    let dribble = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(200) {
            if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Meanwhile an ordinary client is served, over and over.
    let mut served = 0;
    while !closed.is_finished() && handshaken.elapsed() < Duration::from_secs(5) {
        assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (after, got) = closed.await.expect("reader");
    dribble.abort();
    let since_handshake = handshaken.elapsed();
    assert!(got.is_empty(), "the slow client got no answer: {}", String::from_utf8_lossy(&got));
    assert!(
        after >= header.saturating_sub(Duration::from_millis(100)),
        "cut only after the header timeout: {after:?}"
    );
    assert!(since_handshake < header + Duration::from_secs(2), "cut soon after it: {since_handshake:?}");
    assert!(served >= 5, "others were served meanwhile ({served})");
    let metrics = s.get("/metrics").await;
    assert!(metrics.text().contains("enjin_http_connections_closed_total{reason=\"header-timeout\"} 1"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trickling_its_body_is_answered_408_and_cut_off() {
    let body_timeout = Duration::from_secs(1);
    let s = TestServer::start_with(&with_limits(|l| l.body_timeout = body_timeout)).await;
    let (read, mut write) = tokio::io::split(tls_stream(&s).await);
    let head = format!(
        "POST /v1/nodes HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n",
        s.token
    );
    write.write_all(head.as_bytes()).await.expect("headers");
    write.flush().await.expect("flush");
    let sent = Instant::now();
    let closed = tokio::spawn(until_closed(read, Duration::from_secs(10)));
    // The body a byte every 200 ms: 200 bytes would take 40 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if write.write_all(b" ").await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (_, got) = closed.await.expect("reader");
    let took = sent.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(
        took >= body_timeout.saturating_sub(Duration::from_millis(100)),
        "cut only after the body timeout: {took:?}"
    );
    assert!(took < body_timeout + Duration::from_secs(4), "cut soon after it: {took:?}");
    let metrics = s.get("/metrics").await;
    assert!(metrics.text().contains("enjin_http_connections_closed_total{reason=\"body-timeout\"} 1"));
    assert_eq!(s.list("nodes", &[]).await.0.len(), 0, "nothing was made of the half body");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_closed_at_once_and_do_not_starve_the_server() {
    let cap = 8;
    let s = TestServer::start_with(&with_limits(|l| {
        l.max_connections = cap;
        l.handshake_timeout = Duration::from_secs(1);
    }))
    .await;
    // Hogs: connections that never start a handshake.
    let mut hogs = Vec::new();
    for _ in 0..cap {
        hogs.push(TcpStream::connect(s.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every connection beyond the cap is accepted and closed at once.
    for _ in 0..50 {
        let extra = TcpStream::connect(s.addr).await.expect("connect");
        let (took, _) = until_closed(extra, Duration::from_secs(2)).await;
        assert!(took < Duration::from_millis(500), "closed at once, not after {took:?}");
    }
    // The hogs are cut by the handshake timeout; then the server serves again.
    let started = Instant::now();
    loop {
        match s.http.get(s.url("/healthz")).send().await {
            Ok(r) if r.status() == StatusCode::OK => break,
            other => assert!(started.elapsed() < Duration::from_secs(5), "still starved: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for hog in hogs {
        let (took, _) = until_closed(hog, Duration::from_secs(3)).await;
        assert!(took < Duration::from_secs(3));
    }
    let metrics = s.get("/metrics").await;
    let text = metrics.text();
    assert!(text.contains("enjin_http_connections_closed_total{reason=\"over-capacity\"}"), "{text}");
    assert!(
        text.contains(&format!(
            "enjin_http_connections_closed_total{{reason=\"tls-handshake-timeout\"}} {cap}"
        ))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let idle = Duration::from_secs(1);
    let s = TestServer::start_with(&with_limits(|l| {
        l.idle_timeout = idle;
        l.header_timeout = Duration::from_secs(5);
    }))
    .await;
    let mut tls = tls_stream(&s).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await.expect("an answer").expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    let (after, rest) = until_closed(tls, Duration::from_secs(5)).await;
    assert!(rest.is_empty());
    assert!(after >= idle.saturating_sub(Duration::from_millis(100)), "kept open while young: {after:?}");
    assert!(after < idle + Duration::from_secs(2), "closed once idle: {after:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_rate_gets_429_and_others_do_not() {
    let s = TestServer::start_with(&with_limits(|l| l.rate = Some(Rate { per_second: 1, burst: 10 }))).await;
    let viewer = s.list("roles", &[("label", "viewer")]).await.0;
    let system = s.list("accounts", &[("label", "system")]).await.0;
    s.create("memberships", membership("bob", &uuid_of(&system[0]), &uuid_of(&viewer[0]))).await;
    let bob = s.issue("bob").await["token"].as_str().expect("a token").to_string();

    let mut limited = None;
    for _ in 0..20 {
        let reply = s.get("/v1/nodes").await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let reply = limited.expect("the admin ran out of its burst");
    assert_problem(&reply, 429, None);
    let retry: u64 = reply.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "retry after {retry}");

    // Bob has a bucket of his own; health checks need no principal at all.
    let as_bob = send(s.http.get(s.url("/v1/nodes")).bearer_auth(&bob)).await;
    assert_eq!(as_bob.status, StatusCode::OK, "{}", as_bob.body);
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
    // Unknown tokens are refused as such, not counted against anyone.
    let stranger = send(s.http.get(s.url("/v1/nodes")).bearer_auth("enjin_nope")).await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);

    // After the wait it says, the admin gets in again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(s.get("/v1/nodes").await.status, StatusCode::OK);
    // The typed client waits as the server asks and sends the request again, so a burst of
    // calls slows down instead of failing.
    let client =
        enjin_client::Client::with_ca(&s.base, Some(s.token.clone()), Some(&s.ca_pem)).expect("client");
    let started = Instant::now();
    for _ in 0..3 {
        client.list_json(enjin_model::Kind::Node, &Default::default()).await.expect("served, in time");
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "it did wait: {:?}", started.elapsed());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_keeps_failing_to_authenticate_gets_429_and_successes_cost_nothing() {
    let s = TestServer::start_with(&with_limits(|l| {
        l.rate = None;
        l.failed_auth = Some(Rate { per_second: 1, burst: 3 });
    }))
    .await;
    // Successful requests take nothing from the source's bucket, however many.
    for _ in 0..30 {
        assert_eq!(s.get("/v1/nodes").await.status, StatusCode::OK);
    }
    let guess = |token: &'static str| send(s.http.get(s.url("/v1/nodes")).bearer_auth(token));
    let missing = || send(s.http.get(s.url("/v1/nodes")));
    assert_problem(&guess("enjin_nope").await, 401, None);
    assert_problem(&missing().await, 401, None);
    assert_problem(&guess("enjinb_AAAA").await, 401, None);
    // The burst is spent: the next try is refused before its token is looked at, even a good one.
    let refused = guess("enjin_again").await;
    assert_problem(&refused, 429, None);
    assert_eq!(refused.body["type"], "urn:enjin:problem:rate-limited");
    assert!(
        refused.body["detail"].as_str().unwrap_or("").contains("failed authentications"),
        "{}",
        refused.body
    );
    let retry: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert_eq!(retry, 1, "one more try a second");
    assert_problem(&s.get("/v1/nodes").await, 429, None);
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK, "a public route needs no token");

    // After the wait it says, the source may try again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(s.get("/v1/nodes").await.status, StatusCode::OK);
    let metrics = s.get("/metrics").await;
    assert!(metrics.text().contains("enjin_http_failed_auth_limited_total 2"), "{}", metrics.text());
    s.stop().await;
}

/// Every `(method, path)` with a request body in the API document.
fn body_routes(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if op.get("requestBody").is_some() {
                let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a method");
                out.push((method, path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_that_takes_a_body_refuses_one_over_its_limit_with_413() {
    let s = TestServer::start().await;
    let doc = s.get("/v1/openapi.json").await.body;
    let oversize = format!("{{\"x\":\"{}\"}}", "a".repeat(enjin_model::api::MAX_BODY_BYTES));
    let mut checked = 0;
    // The package upload's limit is 512 MiB, not 1 MiB: the Content-Length test covers it.
    for (method, path) in body_routes(&doc).into_iter().filter(|(_, p)| p != "/v1/packages") {
        let url = s.url(
            &path
                .replace("{uuid}", &Uuid::new_v4().to_string())
                .replace("{id}", "some-key")
                .replace("{app}", "some-app"),
        );
        let reply = send(
            s.http
                .request(method.clone(), &url)
                .bearer_auth(&s.token)
                .header("content-type", "application/json")
                .body(oversize.clone()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}: {}", reply.body);
        assert_problem_status(&reply, 413);
        checked += 1;
    }
    assert!(checked >= 12 * 2 + 5, "walked {checked} routes with bodies");

    // Without a length up front (chunked), the limit holds as the body is read.
    let chunks = futures_util::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 * 1024]))),
    );
    let reply = send(
        s.http
            .post(s.url("/v1/nodes"))
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks)),
    )
    .await;
    assert_problem_status(&reply, 413);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_announced_over_every_limit_is_refused_before_it_is_read() {
    let s = TestServer::start().await;
    let mut tls = tls_stream(&s).await;
    let head = format!(
        "POST /v1/packages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        s.token,
        enjin_control::limits::MAX_REQUEST_BODY_BYTES + 1
    );
    tls.write_all(head.as_bytes()).await.expect("write the head");
    tls.write_all(&[0u8; 1024]).await.expect("a little of the body");
    let (_, got) = until_closed(tls, PATIENCE).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    s.stop().await;
}
