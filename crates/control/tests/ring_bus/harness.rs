//! A ring 1 on loopback: store, control plane with its key service, the hub, and children
//! joined through the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::counters::Counters;
use enjin_bus::envelope::Envelope;
use enjin_bus::hub::{Hub, HubConfig, HubStats, HubStatsSnapshot};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, NodeSubscription, bundle_from_birth};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::trust::{Publisher, TrustBundle, VerifierConfig};
use enjin_control::ControlPlane;
use enjin_control::bus::{BusAuthority, BusConfig};
use enjin_model::Ring;
use enjin_model::api::{CreateRequest, JoinResponse};
use enjin_model::kinds::NodeSpec;
use enjin_store::{SqliteStore, SqliteStoreConfig, Store};
use serde_json::json;
use tokio::sync::watch;

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Poll `cond` until it holds, for at most 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same envelope with its signature taken off.
pub fn unsigned(sealed: &[u8]) -> Vec<u8> {
    let mut body = sealed[..sealed.len() - 65].to_vec();
    body.push(0);
    assert!(Envelope::decode(&body).is_ok_and(|e| e.signature().is_none()));
    body
}

fn client_config() -> ClientConfig {
    ClientConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

pub struct Ring1 {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    pub authority: Arc<BusAuthority>,
    hub_addr: SocketAddr,
    hub_stats: Arc<HubStats>,
    url: String,
    token: String,
    machine: uuid::Uuid,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub struct Child {
    pub node: BusNode,
    sub: NodeSubscription,
    key_file: PathBuf,
    pub tls: TlsMaterial,
}

impl Child {
    /// The next verified envelope on `test.>`.
    pub async fn next(&mut self) -> Envelope {
        tokio::time::timeout(Duration::from_secs(10), self.sub.next())
            .await
            .expect("a message in time")
            .expect("subscription open")
    }

    /// Another signer with this child's key: what a thief of the key (or a replayer) has.
    pub fn publisher_copy(&self, ring: u8) -> Publisher {
        Publisher::starting_now(self.identity_copy(), ring, Arc::new(Counters::new()))
    }

    pub fn identity_copy(&self) -> Identity {
        Identity::load(&self.key_file).expect("key file")
    }
}

impl Ring1 {
    pub async fn start() -> Ring1 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("store"));
        let cp = ControlPlane::new(store.clone());
        cp.bootstrap().await.expect("bootstrap");
        let token = cp.auth().issue_admin("tests", Utc::now()).await.expect("token").token;
        let req = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some("m0".into()),
            labels: Default::default(),
            spec: NodeSpec::default(),
        };
        let machine = cp.registry().create(req, Utc::now()).await.expect("machine").meta.uuid;
        let config = BusConfig {
            ring: Ring::INFRASTRUCTURE,
            keys_dir: dir.path().join("keys"),
            pki_dir: dir.path().join("pki"),
            label: "m0".into(),
            node: Some(machine),
            disconnected_after: Duration::from_secs(1),
            lost_after: Duration::from_secs(3),
            certificate_validity: enjin_control::bus::CERT_VALIDITY,
            member_key_overlap: enjin_control::bus::DEFAULT_OVERLAP,
        };
        let authority = BusAuthority::open(enjin_control::Registry::new(store.clone()), config)
            .await
            .expect("key service");
        let hub_tls = authority.local_tls("hub", &["localhost".into(), "127.0.0.1".into()]).expect("hub tls");
        let hub = Hub::bind("127.0.0.1:0".parse().expect("addr"), &hub_tls, HubConfig::default())
            .await
            .expect("hub")
            .with_filter(authority.hub_filter())
            .with_admission(authority.hub_admission());
        let (hub_addr, hub_stats) = (hub.local_addr(), hub.stats());
        authority.set_hub(hub_addr, hub_stats.clone());
        let (stop, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(hub.run(stopped(stop_rx.clone())));
        let own = authority.local_tls("control-plane", &[]).expect("tls");
        let client = BusClient::connect(hub_addr, "localhost", &own, client_config()).expect("client");
        client.wait_connected(Duration::from_secs(10)).await.expect("control plane on its bus");
        authority.attach(Arc::new(client)).await.expect("attach");
        let cp = cp.with_bus(authority.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let served = tokio::spawn(cp.serve(listener, stopped(stop_rx)));
        Ring1 {
            dir,
            store,
            authority,
            hub_addr,
            hub_stats,
            url,
            token,
            machine,
            // The API is plain HTTP here; the client still gets its TLS setup (ring, no roots)
            // handed to it, as reqwest has no crypto provider of its own in this build.
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(enjin_client::tls::no_roots().expect("tls configuration"))
                .build()
                .expect("http client"),
            stop,
            served,
        }
    }

    pub fn hub_stats(&self) -> HubStatsSnapshot {
        self.hub_stats.snapshot()
    }

    async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("send");
        resp.text().await.expect("text")
    }

    /// A child that joins ring 1 under m0 with a join token, keeping its keys to itself.
    pub async fn join(&self, label: &str) -> Child {
        self.join_as(label, None).await
    }

    /// Create a ring 1 node under m0 through the API.
    pub async fn create_host(&self, label: &str) -> uuid::Uuid {
        let body = json!({"ring": 1, "label": label, "spec": {"parent": self.machine, "strategy": "netns"}});
        let obj = self.post("/v1/nodes", &self.token, body).await;
        obj["uuid"].as_str().expect("uuid").parse().expect("uuid")
    }

    pub async fn post_admin(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.post(path, &self.token, body).await
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp =
            self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.expect("send");
        resp.json().await.expect("json")
    }

    /// `POST path` with `token`: the status and the body, whatever they are.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    /// A join token for ring 1 under m0, bound to `node` if given: `(status, body)`.
    pub async fn join_token_for(&self, node: Option<uuid::Uuid>) -> (u16, serde_json::Value) {
        let mut body = json!({"ring": 1, "parent": self.machine});
        if let Some(n) = node {
            body["node"] = json!(n);
        }
        self.post_raw("/v1/join-tokens", &self.token, body).await
    }

    /// A join request for a fresh key and CSR, naming `node` if given.
    pub fn join_request(label: &str, node: Option<uuid::Uuid>) -> serde_json::Value {
        Self::joining(label, node).2
    }

    /// A fresh bus identity and TLS key, and the join request naming them (and `node`).
    fn joining(label: &str, node: Option<uuid::Uuid>) -> (Identity, rcgen::KeyPair, serde_json::Value) {
        let identity = Identity::generate().expect("identity");
        let tls_key = rcgen::KeyPair::generate().expect("tls key");
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&tls_key)
            .expect("csr")
            .pem()
            .expect("pem");
        let mut body = json!({"label": label, "public_key": identity.key_id().to_string(), "csr_pem": csr});
        if let Some(n) = node {
            body["node"] = json!(n);
        }
        (identity, tls_key, body)
    }

    /// A child that joins as the key of `node`.
    pub async fn join_as(&self, label: &str, node: Option<uuid::Uuid>) -> Child {
        let token =
            self.post("/v1/join-tokens", &self.token, json!({"ring": 1, "parent": self.machine})).await;
        let token = token["token"].as_str().expect("join token").to_string();
        let (identity, tls_key, body) = Self::joining(label, node);
        let key_file = self.dir.path().join(format!("{label}-{}.key", identity.key_id().short()));
        identity.save(&key_file).expect("save key");
        let joined: JoinResponse =
            serde_json::from_value(self.post("/v1/join", &token, body).await).expect("join response");
        // The token works once.
        let again = self
            .http
            .post(format!("{}/v1/join", self.url))
            .bearer_auth(&token)
            .json(&json!({"label": label, "public_key": identity.key_id().to_string(), "csr_pem": "x"}))
            .send()
            .await
            .expect("send");
        assert_eq!(again.status(), 401, "a used join token is refused");
        let tls = TlsMaterial {
            ca_pem: joined.ca_pem,
            cert_pem: joined.cert_pem,
            key_pem: tls_key.serialize_pem(),
        };
        let sealed: Vec<u8> = (0..joined.bundle.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&joined.bundle[i..i + 2], 16).expect("hex"))
            .collect();
        let bundle = bundle_from_birth(&sealed).expect("bundle at birth");
        assert!(bundle.key(&identity.key_id()).is_some(), "the bundle at birth lists the child");
        self.connect(identity, key_file, tls, bundle).await
    }

    async fn connect(
        &self,
        identity: Identity,
        key_file: PathBuf,
        tls: TlsMaterial,
        bundle: TrustBundle,
    ) -> Child {
        let client =
            Arc::new(BusClient::connect(self.hub_addr, "localhost", &tls, client_config()).expect("client"));
        client.wait_connected(Duration::from_secs(10)).await.expect("child on the bus");
        let node = BusNode::start(client.clone(), identity, bundle, VerifierConfig::default()).expect("node");
        let sub = node.subscribe("test.>").expect("subscribe");
        // The hub has the subscriptions before anyone publishes to them.
        client.flush(Duration::from_secs(10)).await.expect("subscriptions reach the hub");
        Child { node, sub, key_file, tls }
    }

    /// The same child back on the bus after being away, with the bundle it had.
    pub async fn rejoin(&self, identity: Identity, tls: &TlsMaterial, bundle: TrustBundle) -> Child {
        let key_file = self.dir.path().join(format!("back-{}.key", identity.key_id().short()));
        identity.save(&key_file).expect("save key");
        self.connect(identity, key_file, tls.clone(), bundle).await
    }

    /// A client with a valid certificate of this ring but no trusted bus key.
    pub async fn raw_client(&self, name: &str) -> BusClient {
        let tls = self.authority.local_tls(name, &[]).expect("tls");
        let client = BusClient::connect(self.hub_addr, "localhost", &tls, client_config()).expect("client");
        client.wait_connected(Duration::from_secs(10)).await.expect("raw client connects");
        client
    }

    pub fn client_with_foreign_certificate(&self) -> BusClient {
        let foreign = enjin_pki::RingCa::generate(1).expect("foreign ca");
        let issued = foreign.issue("intruder", &[], Duration::from_secs(3600)).expect("issue");
        // It trusts our CA (so it would accept the hub) but presents a foreign certificate.
        let tls = TlsMaterial {
            ca_pem: self.authority.ca_pem().into(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        BusClient::connect(self.hub_addr, "localhost", &tls, client_config()).expect("client")
    }

    /// `GET /v1/bus/tail` as a stream of decoded events.
    pub async fn tail(&self, topic: &str) -> Tail {
        let resp = self
            .http
            .get(format!("{}/v1/bus/tail", self.url))
            .query(&[("topic", topic)])
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("tail");
        assert_eq!(resp.status(), 200);
        Tail { resp, buf: String::new() }
    }

    pub async fn revoke(&self, key: &str) {
        self.post(&format!("/v1/keys/{key}/revoke"), &self.token, json!(null)).await;
    }

    pub async fn rotate_parent(&self, overlap_seconds: u64) {
        let key = self.parent_publisher().identity().key_id().to_string();
        self.post(
            &format!("/v1/keys/{key}/rotate"),
            &self.token,
            json!({"overlap_seconds": overlap_seconds}),
        )
        .await;
    }

    /// A signer with the machine's current parent key, read from its key file.
    pub fn parent_publisher(&self) -> Publisher {
        let identity = Identity::load(&self.dir.path().join("keys/ring-1-parent.key")).expect("parent key");
        Publisher::starting_now(identity, 1, Arc::new(Counters::new()))
    }

    pub async fn bundle(&self) -> TrustBundle {
        self.authority.bundle().await.expect("bundle")
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
        self.store.close().await.expect("close");
    }
}

pub struct Tail {
    resp: reqwest::Response,
    buf: String,
}

impl Tail {
    /// The next `message` event's data.
    pub async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    return serde_json::from_str(data.trim()).expect("json event");
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("tail event in time")
                .expect("tail body")
                .expect("tail open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
