//! The zone saved to disk and loaded again, as a restarted server does before the control
//! plane is reachable.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use enjin_dns::{DnsConfig, DnsServer, snapshot};
use enjin_model::api::{DnsRecord, DnsZone};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::{TcpListener, UdpSocket};

fn zone(version: i64, addr: [u8; 4]) -> DnsZone {
    DnsZone {
        version,
        origin: "enjin.internal".into(),
        records: vec![
            DnsRecord::A { name: "db.enjin.internal".into(), addr: Ipv4Addr::from(addr) },
            DnsRecord::Srv {
                name: "_pg._tcp.db.enjin.internal".into(),
                priority: 0,
                weight: 0,
                port: 5432,
                target: "db.enjin.internal".into(),
            },
        ],
    }
}

#[test]
fn round_trip_with_mode_0600() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("zone.json");
    assert_eq!(snapshot::load(&path)?, None, "no snapshot yet");

    snapshot::save(&path, &zone(4, [10, 0, 0, 4]))?;
    assert_eq!(snapshot::load(&path)?, Some(zone(4, [10, 0, 0, 4])));
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Replacing keeps the mode and leaves no temporary file behind.
    snapshot::save(&path, &zone(5, [10, 0, 0, 5]))?;
    assert_eq!(snapshot::load(&path)?, Some(zone(5, [10, 0, 0, 5])));
    assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> =
        std::fs::read_dir(dir.path())?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    assert_eq!(names, ["zone.json"]);
    Ok(())
}

#[test]
fn a_corrupt_snapshot_is_an_error_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("zone.json");
    std::fs::write(&path, b"{not json")?;
    let err = snapshot::load(&path).expect_err("corrupt");
    assert!(err.to_string().contains("zone.json"), "{err}");
    Ok(())
}

#[test]
fn saving_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing").join("zone.json");
    let err = snapshot::save(&path, &zone(1, [10, 0, 0, 1])).expect_err("no directory");
    assert!(err.to_string().contains("zone.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_answers_from_its_snapshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("zone.json");
    {
        let first = DnsServer::new(DnsConfig::default());
        let z = zone(9, [10, 0, 0, 9]);
        assert!(first.apply(z.clone()));
        snapshot::save(&path, &z)?;
    }

    let restarted = DnsServer::new(DnsConfig::default());
    let saved = snapshot::load(&path)?.context("snapshot saved")?;
    assert!(restarted.apply(saved));
    assert_eq!(restarted.version(), Some(9));

    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let tcp = TcpListener::bind("127.0.0.1:0").await?;
    let addr = udp.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let server = restarted.clone();
        async move {
            server
                .serve(udp, tcp, async {
                    let _ = stopped.await;
                })
                .await
        }
    });

    let mut q = Message::new();
    q.set_id(7)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_ascii("db.enjin.internal.")?, RecordType::A));
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&q.to_vec()?, addr).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await??;
    let r = Message::from_vec(&buf[..n])?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert_eq!(r.answers().len(), 1);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    Ok(())
}
