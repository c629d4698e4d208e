//! The ACL table on NATS in operator mode: nats-server trusts the cloud's operator and knows
//! the ring's account, and nothing about users; every user here is minted after it started.
//! A host's user reads its own desired state but not another host's and writes no `state.*`;
//! users of another operator's account, expired users and users whose seed is not their JWT's
//! are refused at connect.

mod transport_common;

use std::time::{Duration, SystemTime};

use enjin_bus::acl::{Member, Role};
use enjin_bus::nats::auth::{NatsAccount, NatsCredentials, NatsOperator, server_config};
use enjin_bus::nats::{NatsAuth, NatsConfig, NatsConnectError, NatsTransport};
use enjin_bus::transport::{Subscription, Transport};
use enjin_testkit::NatsServer;
use transport_common::*;

const HOST_A: &str = "0f6c1a52-3f0e-4d37-9a51-6b2d8c1e7a01";
const HOST_B: &str = "7d1e9b44-8c2a-4f5e-b6a3-0e9f4c2d1b02";
const RING: &str = "ring-a";

/// Long enough for a delivery that was allowed to arrive (they take milliseconds here).
const REFUSED_WINDOW: Duration = Duration::from_secs(1);
/// How long minted users are valid in these tests.
const VALID: Duration = Duration::from_secs(600);

fn config(server: &NatsServer, member: &Member, credentials: NatsCredentials) -> NatsConfig {
    NatsConfig {
        member_id: Some(member.id().to_owned()),
        auth: Some(NatsAuth::Credentials(credentials)),
        connect_timeout: Duration::from_secs(3),
        ..NatsConfig::new(server.url())
    }
}

async fn connect(server: &NatsServer, account: &NatsAccount, member: &Member) -> NatsTransport {
    let credentials = account.mint_user(member, VALID).expect("mint a user");
    NatsTransport::connect(config(server, member, credentials)).await.expect("connect as a minted user")
}

/// Connecting with `credentials` fails, and not for want of a server.
async fn assert_refused(server: &NatsServer, member: &Member, credentials: NatsCredentials, why: &str) {
    match NatsTransport::connect(config(server, member, credentials)).await {
        Ok(_) => panic!("{why}: connected"),
        Err(NatsConnectError::Connect { source, .. }) => {
            let shown = source.to_string().to_lowercase();
            assert!(shown.contains("authorization violation"), "{why}: {shown}");
        }
        Err(other) => panic!("{why}: {other}"),
    }
}

/// Nothing arrives on `sub` (it may end: a refused subscription does).
async fn assert_nothing(sub: &mut Subscription) {
    if let Ok(Some(m)) = tokio::time::timeout(REFUSED_WINDOW, sub.next()).await {
        panic!("{} received {m:?}", sub.pattern());
    }
}

fn start() -> (NatsOperator, NatsAccount, NatsServer) {
    let operator = NatsOperator::generate().expect("operator");
    let account = operator.account(RING);
    let server = NatsServer::start_with(&server_config(&operator, &[&account]));
    (operator, account, server)
}

#[tokio::test]
async fn a_host_minted_after_the_server_started_reads_its_own_desired_state_only() {
    let (_operator, account, server) = start();
    let parent = Member::parent("control").expect("parent");
    let host = Member::node(Role::Host, HOST_A).expect("host");

    let control = connect(&server, &account, &parent).await;
    control.publish(&format!("state.desired.{HOST_A}"), None, b"mine".to_vec()).expect("publish");
    control.publish(&format!("state.desired.{HOST_B}"), None, b"theirs".to_vec()).expect("publish");
    let mut observed = control.subscribe("observe.>").expect("subscribe");
    let mut foreign = control.subscribe(&format!("state.desired.{HOST_B}")).expect("subscribe");
    assert_eq!(recv(&mut foreign).await.payload, b"theirs", "retained for the parent");

    // Minted now, long after the server read its configuration, which names no user.
    let agent = connect(&server, &account, &host).await;
    let mut mine = agent.subscribe(&format!("state.desired.{HOST_A}")).expect("subscribe");
    assert_eq!(recv(&mut mine).await.payload, b"mine");

    let mut theirs = agent.subscribe(&format!("state.desired.{HOST_B}")).expect("subscribe");
    let mut everything = agent.subscribe("state.>").expect("subscribe");
    control.publish(&format!("state.desired.{HOST_B}"), None, b"theirs, newer".to_vec()).expect("publish");
    assert_eq!(recv(&mut foreign).await.payload, b"theirs, newer");
    assert_nothing(&mut theirs).await;
    assert_nothing(&mut everything).await;

    // What it may publish arrives; no `state.*` may it write, its own row's included.
    agent.publish(&format!("state.desired.{HOST_B}"), None, b"forged".to_vec()).expect("queued");
    agent.publish(&format!("state.desired.{HOST_A}"), None, b"forged".to_vec()).expect("queued");
    agent.publish("state.trust", None, b"forged".to_vec()).expect("queued");
    agent.publish(&format!("observe.{HOST_A}"), None, b"report".to_vec()).expect("publish");
    assert_eq!(recv(&mut observed).await.payload, b"report");
    assert_nothing(&mut foreign).await;
    assert_nothing(&mut mine).await;
    let mut trust = control.subscribe("state.trust").expect("subscribe");
    assert_nothing(&mut trust).await;
    // Nor was anything retained in the stream behind the live subscribers' backs.
    let mut retained = control.subscribe(&format!("state.desired.{HOST_A}")).expect("subscribe");
    assert_eq!(recv(&mut retained).await.payload, b"mine");
}

#[tokio::test]
async fn users_the_operator_did_not_vouch_for_or_that_expired_are_refused_at_connect() {
    let (operator, account, server) = start();
    let host = Member::node(Role::Host, HOST_A).expect("host");

    // Another cloud's operator, even for an account of the same ring name.
    let stranger = NatsOperator::generate().expect("operator").account(RING);
    assert_ne!(stranger.public_key(), account.public_key());
    let foreign = stranger.mint_user(&host, VALID).expect("mint");
    assert_refused(&server, &host, foreign, "a user of another operator's account").await;

    // Expired an hour ago.
    let expired = account
        .mint_user_at(&host, SystemTime::now() - Duration::from_secs(7200), Duration::from_secs(3600))
        .expect("mint");
    assert_refused(&server, &host, expired, "an expired user").await;

    // A JWT presented with another user's seed: the nonce is not signed by the JWT's key.
    let real = account.mint_user(&host, VALID).expect("mint");
    let other = account.mint_user(&host, VALID).expect("mint");
    let mixed = NatsCredentials { jwt: real.jwt.clone(), seed: other.seed };
    assert_refused(&server, &host, mixed, "a JWT with another user's seed").await;

    // A JWT whose account is unknown to this server, though the operator signed it: accounts
    // are preloaded, so one minted for a ring the server was not given is refused.
    let unknown = operator.account("ring-z").mint_user(&host, VALID).expect("mint");
    assert_refused(&server, &host, unknown, "a user of an account the server was not given").await;

    // The same host, minted properly, connects and reads: the refusals were about the users.
    let parent = Member::parent("control").expect("parent");
    let control = connect(&server, &account, &parent).await;
    control.publish(&format!("state.desired.{HOST_A}"), None, b"mine".to_vec()).expect("publish");
    let agent = NatsTransport::connect(config(&server, &host, real)).await.expect("connect");
    let mut mine = agent.subscribe(&format!("state.desired.{HOST_A}")).expect("subscribe");
    assert_eq!(recv(&mut mine).await.payload, b"mine");
}

#[tokio::test]
async fn a_creds_file_is_read_by_a_stock_nats_client() {
    let (_operator, account, server) = start();
    let host = Member::node(Role::Host, HOST_A).expect("host");
    let credentials = account.mint_user(&host, VALID).expect("mint");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("host.creds");
    credentials.write_creds_file(&path).expect("write the creds file");

    let client = async_nats::ConnectOptions::with_credentials_file(&path)
        .await
        .expect("the client parses the creds file")
        .connect(server.url())
        .await
        .expect("connect with the creds file");
    // Within its row (its inbox) and outside it (another host's logs): only the first arrives.
    let mut inbox = client.subscribe(format!("_inbox.{HOST_A}.x")).await.expect("subscribe");
    let mut foreign = client.subscribe(format!("logs.{HOST_B}")).await.expect("subscribe");
    client.flush().await.expect("flush the subscriptions");
    let parent = Member::parent("control").expect("parent");
    let control = connect(&server, &account, &parent).await;
    control.publish(&format!("logs.{HOST_B}"), None, b"not yours".to_vec()).expect("publish");
    control.publish(&format!("_inbox.{HOST_A}.x"), None, b"yours".to_vec()).expect("publish");
    let got = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut inbox)).await.expect("in time");
    assert_eq!(got.expect("a message").payload.as_ref(), b"yours");
    let refused = tokio::time::timeout(REFUSED_WINDOW, futures_util::StreamExt::next(&mut foreign)).await;
    assert!(!matches!(refused, Ok(Some(_))), "another host's logs arrived: {refused:?}");
}
