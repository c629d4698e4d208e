//! A control plane served on loopback port 0 over TLS (a certificate from a ring 0 CA made for
//! the test) over a SQLite store in a temporary directory, and a small HTTP client that trusts
//! that CA and speaks to the server with the admin token.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use enjin_control::{ControlConfig, ControlPlane};
use enjin_store::{SqliteStore, SqliteStoreConfig, Store};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen within milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A running control plane. Stop it with [`TestServer::stop`] to check that it shuts down
/// cleanly; dropping it only asks it to stop.
#[derive(Debug)]
pub struct TestServer {
    /// `https://127.0.0.1:<port>`, without a trailing slash.
    pub base: String,
    /// The address the server listens on.
    pub addr: std::net::SocketAddr,
    /// The CA certificate (PEM) the server's certificate comes from.
    pub ca_pem: String,
    /// A token of the bootstrapped admin principal.
    pub token: String,
    /// The server's authenticator, to look at what a token resolves to.
    pub auth: enjin_control::Auth,
    /// For ordinary requests: every request times out.
    pub http: reqwest::Client,
    /// For watches, which are endless: only connecting times out; reads are bounded by the
    /// test with [`PATIENCE`].
    pub streaming: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<std::io::Result<()>>>,
    store: Arc<SqliteStore>,
    // Last, so that the store and the server are gone before the directory is removed.
    _dir: TempDir,
}

impl TestServer {
    /// A server with the default configuration but no rate limits: these tests drive the API
    /// far faster than one principal is let to, and fail to authenticate far more often than
    /// one address is let to (the door's own tests turn them on).
    pub async fn start() -> TestServer {
        let mut config = ControlConfig::default();
        config.api.rate = None;
        config.api.failed_auth = None;
        TestServer::start_with(&config).await
    }

    /// A server configured with `config` (as `enjin.toml` would).
    pub async fn start_with(config: &ControlConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let store =
            SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db"))).expect("open the store");
        let store = Arc::new(store);
        let plane = ControlPlane::with_config(Arc::clone(&store) as Arc<dyn Store>, config);
        let platform = enjin_control::platform::Platform::open(
            plane.registry().clone(),
            enjin_control::platform::PlatformConfig::new(dir.path().join("packages")),
        )
        .expect("open the package store");
        let plane = plane.with_platform(platform);
        plane.bootstrap().await.expect("bootstrap");
        let token = plane.auth().issue_admin("integration tests", Utc::now()).await.expect("issue").token;
        let auth = plane.auth().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback port 0");
        let addr = listener.local_addr().expect("local address");
        let ca = enjin_pki::RingCa::generate(0).expect("a ring 0 CA");
        let tls = enjin_control::tls::server_config(&ca, &enjin_control::tls::api_names(addr, &[]))
            .expect("the API's TLS configuration");
        let plane = plane.with_tls(tls);
        let ca_pem = ca.cert_pem().to_string();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(plane.serve(listener, async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
        let http = https_client(&ca_pem).timeout(PATIENCE).build().expect("http client");
        let streaming = https_client(&ca_pem).connect_timeout(PATIENCE).build().expect("streaming client");
        TestServer {
            base: format!("https://{addr}"),
            addr,
            ca_pem,
            token,
            auth,
            http,
            streaming,
            shutdown: Some(shutdown),
            serving: Some(serving),
            store,
            _dir: dir,
        }
    }

    /// Stop the server, wait for it to finish serving, and close the store.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(serving) = self.serving.take() {
            let result =
                tokio::time::timeout(PATIENCE, serving).await.expect("server stops within the patience");
            result.expect("server task did not panic").expect("server ended without an error");
        }
        self.store.close().await.expect("close the store");
    }

    /// The store under the server, for what the API does not offer (compaction).
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The store, shared, to build a second control plane over it.
    pub fn shared_store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        send(self.request(Method::PUT, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        send(self.request(Method::DELETE, path)).await
    }

    /// Create an object, asserting 201, and return it.
    pub async fn create(&self, plural: &str, body: Value) -> Value {
        let reply = self.post(&format!("/v1/{plural}"), &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "create {plural} {body}: {}", reply.body);
        reply.body
    }

    /// The uuid of a newly created object.
    pub async fn create_id(&self, plural: &str, body: Value) -> String {
        uuid_of(&self.create(plural, body).await)
    }

    /// Replace an object's label, labels and spec at its current revision, asserting 200.
    pub async fn update(&self, plural: &str, object: &Value, spec: Value) -> Value {
        let uuid = uuid_of(object);
        let mut body = json!({"revision": object["revision"], "spec": spec});
        if let Some(label) = object.get("label") {
            body["label"] = label.clone();
        }
        if let Some(labels) = object.get("labels") {
            body["labels"] = labels.clone();
        }
        let reply = self.put(&format!("/v1/{plural}/{uuid}"), &body).await;
        assert_eq!(reply.status, StatusCode::OK, "update {plural}/{uuid} with {body}: {}", reply.body);
        reply.body
    }

    pub async fn fetch(&self, plural: &str, uuid: &str) -> Value {
        let reply = self.get(&format!("/v1/{plural}/{uuid}")).await;
        assert_eq!(reply.status, StatusCode::OK, "get {plural}/{uuid}: {}", reply.body);
        reply.body
    }

    /// A list, asserting 200: the items and the revision it was read at.
    pub async fn list(&self, plural: &str, query: &[(&str, &str)]) -> (Vec<Value>, i64) {
        let reply = send(self.request(Method::GET, &format!("/v1/{plural}")).query(query)).await;
        assert_eq!(reply.status, StatusCode::OK, "list {plural} {query:?}: {}", reply.body);
        let items = reply.body["items"].as_array().cloned().expect("items is an array");
        let revision = reply.body["revision"].as_i64().expect("revision is a number");
        (items, revision)
    }

    /// The uuids a filtered list returns, sorted.
    pub async fn list_ids(&self, plural: &str, query: &[(&str, &str)]) -> Vec<String> {
        let mut ids: Vec<String> = self.list(plural, query).await.0.iter().map(uuid_of).collect();
        ids.sort();
        ids
    }

    /// Wait until the audit records of every request answered so far are in the store: they are
    /// written after their answers, and a read of the log waits for them.
    pub async fn settle_audit(&self) {
        let reply = self.get("/v1/audit?limit=1").await;
        assert_eq!(reply.status, StatusCode::OK, "read the audit log: {}", reply.body);
    }

    /// The store's current revision, as a list reads it, once the audit log has settled.
    pub async fn revision(&self) -> i64 {
        self.settle_audit().await;
        self.list("accounts", &[]).await.1
    }

    /// The store revision less the audit log's writes: what the model's own writes have moved
    /// it by. Every audited request adds one transaction (one put) of its own, and nothing in a
    /// test prunes the log, so this is the revision minus the records kept.
    pub async fn model_revision(&self) -> i64 {
        self.settle_audit().await;
        let records = self.store.range("/audit/").await.expect("read the audit log").kvs.len();
        self.revision().await - i64::try_from(records).expect("a count")
    }

    /// Issue a token for `principal` through the API.
    pub async fn issue(&self, principal: &str) -> Value {
        let reply = self.post("/v1/tokens", &json!({"principal": principal, "description": "test"})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "issue a token for {principal}: {}", reply.body);
        reply.body
    }
}

/// A client builder that trusts only the CA in `ca_pem`.
pub fn https_client(ca_pem: &str) -> reqwest::ClientBuilder {
    let tls = enjin_client::tls::client_config(ca_pem).expect("a TLS configuration trusting the CA");
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}

/// Everything stored, as the API lists it: the store revision (less the audit log's writes) and
/// each kind's objects with their revisions. Equal snapshots mean nothing was written in
/// between but audit records.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub objects: Vec<(&'static str, Vec<(String, i64)>)>,
}

impl Snapshot {
    pub async fn take(s: &TestServer) -> Snapshot {
        let revision = s.model_revision().await;
        let mut objects = Vec::new();
        for (_, plural) in crate::fixtures::KINDS {
            let (items, _) = s.list(plural, &[]).await;
            let mut ids: Vec<(String, i64)> = items.iter().map(|o| (uuid_of(o), revision_of(o))).collect();
            ids.sort();
            objects.push((plural, ids));
        }
        Snapshot { revision, objects }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request with `token` instead of the admin's.
pub async fn call(s: &TestServer, token: &str, method: Method, path: &str, body: Option<&Value>) -> Reply {
    let rb = s.http.request(method, s.url(path)).bearer_auth(token);
    let rb = match body {
        Some(b) => rb.json(b),
        None => rb,
    };
    send(rb).await
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON, or as a JSON string when it is not JSON, or null when empty.
    pub body: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> &str {
        self.body.as_str().unwrap_or("")
    }
}

pub async fn send(rb: RequestBuilder) -> Reply {
    let resp = rb.send().await.expect("request reaches the server");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("read the response body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply { status, headers, body }
}

pub fn uuid_of(object: &Value) -> String {
    object["uuid"].as_str().unwrap_or_else(|| panic!("object without a uuid: {object}")).to_string()
}

pub fn revision_of(object: &Value) -> i64 {
    object["revision"].as_i64().unwrap_or_else(|| panic!("object without a revision: {object}"))
}

/// Asserts that `reply` is an `application/problem+json` document with `status` naming `field`.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: u16, field: Option<&str>) {
    assert_problem_status(reply, status);
    let p = &reply.body;
    assert_eq!(p.get("field").and_then(Value::as_str), field, "problem field in {p}");
}

/// Asserts that `reply` is an `application/problem+json` document with `status`.
#[track_caller]
pub fn assert_problem_status(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "status of {}", reply.body);
    assert!(
        reply.content_type().starts_with(PROBLEM_JSON),
        "content type {:?} of a {status} ({})",
        reply.content_type(),
        reply.body
    );
    let p = &reply.body;
    assert_eq!(p["status"].as_u64(), Some(u64::from(status)), "problem status in {p}");
    assert!(p["type"].as_str().is_some_and(|t| !t.is_empty()), "problem type in {p}");
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "problem title in {p}");
    assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()), "problem detail in {p}");
}
