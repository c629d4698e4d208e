//! Probes against tiny listeners inside the test: thresholds flip a child between running and
//! unhealthy, the grace period holds off failures, and restart-on-unhealthy restarts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::*;
use enjin_model::kinds::ObservationState::*;
use enjin_model::kinds::ObservationStrategy;
use enjin_supervisor::{ChildSpec, ProbeSpec, Restart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server answering every request with the status in `status`.
async fn http_server(status: Arc<AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

fn quick(mut probe: ProbeSpec, ok: u32, fail: u32) -> ProbeSpec {
    probe.interval = Duration::from_millis(20);
    probe.timeout = Duration::from_millis(500);
    probe.success_threshold = ok;
    probe.failure_threshold = fail;
    probe.grace = Duration::ZERO;
    probe
}

fn sleeper(id: &str, probe: ProbeSpec) -> ChildSpec {
    let mut s = spec(id, Restart::Permanent, &["sleep", "300"]);
    s.probe = Some(probe);
    s
}

#[tokio::test]
async fn http_probe_flips_between_running_and_unhealthy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let status = Arc::new(AtomicU16::new(200));
    let addr = http_server(status.clone()).await;
    rig.sup
        .handle()
        .ensure(sleeper("web", quick(ProbeSpec::http(addr, "/healthz"), 2, 3)))
        .await
        .expect("ensure");

    let running = rig.wait("web", Running).await;
    assert_eq!(running.strategy, ObservationStrategy::Http);
    assert!(running.message.contains("answered 200"), "{}", running.message);
    let pid = running.pid.expect("pid");

    status.store(503, Ordering::SeqCst);
    let unhealthy = rig.wait("web", Unhealthy).await;
    assert!(unhealthy.message.contains("answered http status 503"), "{}", unhealthy.message);
    status.store(204, Ordering::SeqCst);
    let back = rig.wait("web", Running).await;
    assert_eq!(back.pid, Some(pid), "unhealthy children are reported, not restarted, by default");
    assert_eq!(rig.states("web"), vec![Pending, Starting, Running, Unhealthy, Running]);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tcp_probe_reports_a_closed_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    rig.sup.handle().ensure(sleeper("db", quick(ProbeSpec::tcp(addr), 1, 2))).await.expect("ensure");
    let running = rig.wait("db", Running).await;
    assert_eq!(running.strategy, ObservationStrategy::Tcp);
    accepting.abort();
    let unhealthy = rig.wait("db", Unhealthy).await;
    assert!(unhealthy.message.contains(&format!("failed to connect to {addr}")), "{}", unhealthy.message);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn failures_inside_the_grace_period_do_not_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let mut probe = quick(ProbeSpec::tcp(closed), 1, 2);
    probe.grace = Duration::from_millis(400);
    rig.sup.handle().ensure(sleeper("slow", probe)).await.expect("ensure");
    let starting = rig.wait("slow", Starting).await;
    let unhealthy = rig.wait("slow", Unhealthy).await;
    let waited = (unhealthy.at - starting.at).to_std().expect("positive");
    assert!(waited >= Duration::from_millis(400), "unhealthy after {waited:?}, inside the grace");
    assert_eq!(rig.states("slow"), vec![Pending, Starting, Unhealthy]);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn restart_on_unhealthy_restarts_under_the_policy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let status = Arc::new(AtomicU16::new(200));
    let addr = http_server(status.clone()).await;
    let mut probe = quick(ProbeSpec::http(addr, "/"), 1, 2);
    probe.restart_on_unhealthy = true;
    rig.sup.handle().ensure(sleeper("api", probe)).await.expect("ensure");
    let first = rig.wait("api", Running).await.pid.expect("pid");

    status.store(500, Ordering::SeqCst);
    rig.wait("api", Unhealthy).await;
    let exited = rig.wait("api", Exited).await;
    assert!(exited.message.contains("after SIGTERM (unhealthy); restart 1"), "{}", exited.message);
    assert!(!alive(first));
    status.store(200, Ordering::SeqCst);
    let second = rig.wait("api", Running).await;
    assert_ne!(second.pid, Some(first));
    let snap = rig.sup.handle().snapshot().await.expect("snapshot");
    assert_eq!(snap.children[0].restarts, 1);
    rig.sup.shutdown().await.expect("shutdown");
}
