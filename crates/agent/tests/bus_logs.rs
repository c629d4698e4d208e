//! An agent on a real ring 1 bus (the control plane's key service and hub, on loopback)
//! answers its parent's log requests and refuses instances it does not run; hosts' use reports
//! are kept only from the key bound to the host they are about.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_agent::logs::collected_path;
use enjin_model::api::{HostStats, InstanceStats, LogsRequest, logs_topic, stats_topic};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

mod ring1;

use ring1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_reads_a_host_s_logs_over_the_bus() {
    let ring = Ring1::start().await;
    let (host, config) = ring.host("h1").await;
    let logs = enjin_agent::logs_dir(&config);
    std::fs::create_dir_all(&logs).expect("logs dir");
    // An instance that ran on this host: its output already collected.
    let instance = Uuid::new_v4();
    let mut raw = String::new();
    for seq in 0..3u64 {
        let line = serde_json::json!({
            "at": Utc::now(), "instance": instance, "stream": "stdout", "seq": seq, "line": format!("hello {seq}"), "offset": 0
        });
        raw.push_str(&format!("{line}\n"));
    }
    std::fs::write(collected_path(&logs, instance, 0), raw).expect("collected log");

    let (stop_agent, stopped) = watch::channel(false);
    let (_obs_tx, obs_rx) = mpsc::channel(8);
    let agent = tokio::spawn(enjin_agent::run(config, Arc::new(NoChildren), obs_rx, until(stopped)));

    // Wait until the agent answers at all, then ask properly.
    let probe = serde_json::to_vec(&LogsRequest::default()).expect("json");
    let mut answered = false;
    for _ in 0..40 {
        if ring.authority.request(&logs_topic(host), probe.clone(), Duration::from_millis(500)).await.is_ok()
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "the agent answers log requests");
    let req = LogsRequest {
        instances: vec![instance],
        after: [(instance, 0)].into_iter().collect(),
        ..LogsRequest::default()
    };
    let reply = ring.authority.logs(host, &req).await.expect("logs");
    let lines: Vec<(u64, &str)> = reply.lines.iter().map(|l| (l.seq, l.line.as_str())).collect();
    assert_eq!(lines, vec![(1, "hello 1"), (2, "hello 2")]);

    let stranger = Uuid::new_v4();
    let err = ring
        .authority
        .logs(host, &LogsRequest { instances: vec![stranger], ..LogsRequest::default() })
        .await
        .expect_err("refused");
    assert!(err.to_string().contains(&format!("instance {stranger} does not run on this host")), "{err}");

    stop_agent.send(true).expect("stop");
    tokio::time::timeout(WAIT, agent).await.expect("agent stops").expect("agent task").expect("agent ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_reports_are_kept_only_from_the_host_s_own_key() {
    let ring = Ring1::start().await;
    let (h2, c2) = ring.host("h2").await;
    let (h3, c3) = ring.host("h3").await;
    let (node2, client2) = ring.as_host(&c2).await;
    let (node3, _client3) = ring.as_host(&c3).await;
    let report = |node: Uuid, instance: Uuid, cpu: u64| {
        let stats = HostStats {
            node,
            at: Utc::now(),
            instances: vec![InstanceStats { instance, cpu_usage_ns: cpu, memory_bytes: 4096 }],
        };
        serde_json::to_vec(&stats).expect("json")
    };
    let (genuine, forged, later) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    node3.publish(&stats_topic(h3), report(h3, genuine, 1_500_000_000)).expect("publish");
    eventually("h3's report is kept", || ring.authority.instance_stats().contains_key(&genuine)).await;
    // h2 claims to speak for h3, then reports on itself.
    node2.publish(&stats_topic(h3), report(h3, forged, 1)).expect("publish");
    client2.flush(WAIT).await.expect("flush");
    node2.publish(&stats_topic(h2), report(h2, later, 2)).expect("publish");
    eventually("h2's own report is kept", || ring.authority.instance_stats().contains_key(&later)).await;
    let stats = ring.authority.instance_stats();
    assert!(!stats.contains_key(&forged), "a report about another host is refused");
    assert_eq!(stats[&genuine].0.cpu_usage_ns, 1_500_000_000);

    let metrics = ring.authority.render_metrics();
    assert!(
        metrics.contains(&format!("enjin_instance_cpu_seconds_total{{instance=\"{genuine}\"}} 1.5\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("enjin_instance_memory_bytes{{instance=\"{later}\"}} 4096\n")),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# TYPE enjin_instance_memory_bytes gauge").count(), 1);
}
