//! A typed client of the enjin meta API: the only way the CLI (and, later, agents and
//! services) talk to the control plane. It must never touch the store, and every call it makes
//! is bounded by a timeout, except watches, which reconnect instead.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod apps;
mod audit;
mod sse;
pub mod tls;

use std::time::Duration;

use enjin_model::api::{
    CreateRequest, Health, JoinRequest, JoinResponse, JoinTokenCreateRequest, JoinTokenCreated, KeyInfo,
    KeyList, List, ListQuery, Problem, RotateRequest, TokenCreateRequest, TokenCreated, TokenList,
    UpdateRequest, VERSION, WatchBatch,
};
use enjin_model::{Kind, Object, Spec};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use apps::Progress;
pub use sse::{Tail, Watch};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a request refused with 429 is sent again, each time after the server's
/// `Retry-After` (at most [`MAX_RETRY_AFTER`]).
const RATE_LIMIT_RETRIES: u32 = 5;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The wait a 429 asks for (`Retry-After` in seconds), bounded; a second when it says nothing.
fn retry_after(resp: &reqwest::Response) -> Duration {
    let seconds = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds).min(MAX_RETRY_AFTER)
}

/// Why a call to the API failed, split by whether the server answered at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a status other than 2xx: its problem document, or, when the
    /// body is not one, a problem made from the status with the body as its detail.
    #[error("{}", problem_text(.0))]
    Api(Box<Problem>),
    /// The server could not be reached: connecting failed or took over 5 s, or the call took
    /// longer than its timeout (30 s; 10 min for an upload). Worth retrying ([`is_transient`]).
    #[error("cannot reach the enjin API at {url}: {source}")]
    Connect {
        /// The server's base address (not the path of the call).
        url: String,
        /// reqwest's reason.
        source: reqwest::Error,
    },
    /// The exchange broke off after the connection was made (reset, body cut short), or the
    /// HTTP client itself could not be built.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The full URL of the call (the base address when building the client failed).
        url: String,
        /// reqwest's reason.
        source: reqwest::Error,
    },
    /// The server said yes but its body is not the JSON this call expects: a server of
    /// another version, or not an enjin server.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The full URL of the call.
        url: String,
        /// serde_json's reason, with the line and column.
        detail: String,
    },
    /// The server address does not start with `http://` or `https://`; holds it as given,
    /// without trailing slashes.
    #[error("invalid server address {0:?}: it should look like https://127.0.0.1:7480")]
    BadUrl(String),
    /// An `https://` address was given with no CA certificate to check the server with; the
    /// client never falls back to the system's roots. Holds the address.
    #[error("no CA certificate to check {0} with: pass --ca FILE, or log in with `enjin login --ca FILE`")]
    NoCa(String),
    /// The CA certificate given could not be made into a TLS configuration.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
}

impl ClientError {
    /// The HTTP status, when the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(p) => Some(p.status),
            _ => None,
        }
    }
}

fn problem_text(p: &Problem) -> String {
    let detail = p.detail.as_deref().unwrap_or(&p.title);
    match &p.field {
        Some(f) => format!("{detail} (field {f}, HTTP {})", p.status),
        None => format!("{detail} (HTTP {})", p.status),
    }
}

/// A client for one server and one token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For watches: no overall timeout, since they last.
    streaming: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of a plain-HTTP server (one started with `--insecure-http`). An `https://`
    /// server needs [`Client::with_ca`].
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        Client::with_ca(base, token, None)
    }

    /// A client that trusts only the CA certificates in `ca_pem` (PEM), never the system's
    /// roots. `https://` needs one; `http://` ignores it.
    pub fn with_ca(base: &str, token: Option<String>, ca_pem: Option<&str>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let https = base.starts_with("https://");
        if !(https || base.starts_with("http://")) {
            return Err(ClientError::BadUrl(base));
        }
        let tls = match ca_pem {
            Some(pem) => tls::client_config(pem)?,
            None if https => return Err(ClientError::NoCa(base)),
            None => tls::no_roots()?,
        };
        let build = |timeout: Option<Duration>| {
            let b = reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .https_only(https)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("enjin/", env!("CARGO_PKG_VERSION")));
            let b = match timeout {
                Some(t) => b.timeout(t),
                None => b,
            };
            b.build().map_err(|e| ClientError::Http { url: base.clone(), source: e })
        };
        Ok(Client { http: build(Some(REQUEST_TIMEOUT))?, streaming: build(None)?, base, token })
    }

    /// The server's address as given, without trailing slashes: every call's URL starts with it.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send<T: DeserializeOwned>(&self, rb: RequestBuilder, path: &str) -> Result<T, ClientError> {
        let resp = self.execute(rb, path).await?;
        let url = self.url(path);
        let bytes = resp.bytes().await.map_err(|e| ClientError::Http { url: url.clone(), source: e })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol { url, detail: e.to_string() })
    }

    async fn execute(&self, rb: RequestBuilder, path: &str) -> Result<reqwest::Response, ClientError> {
        let url = self.url(path);
        let (mut rb, mut attempt) = (rb, 0);
        loop {
            // A 429 is answered before the request does anything, so any request may be sent
            // again; one with a streamed body cannot be, and gets the 429.
            let again = (attempt < RATE_LIMIT_RETRIES).then(|| rb.try_clone()).flatten();
            let resp = rb.send().await.map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    ClientError::Connect { url: self.base.clone(), source: e }
                } else {
                    ClientError::Http { url: url.clone(), source: e }
                }
            })?;
            if resp.status().is_success() {
                return Ok(resp);
            }
            match again {
                Some(next) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(&resp);
                    tracing::debug!(%url, ?wait, "rate limited; waiting as the server asks");
                    tokio::time::sleep(wait).await;
                    rb = next;
                    attempt += 1;
                }
                _ => return Err(error_from(resp, &url).await),
            }
        }
    }

    /// The server's liveness and version (`GET /healthz`); the one call that needs no token.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.send(self.request(Method::GET, "/healthz"), "/healthz").await
    }

    /// Whether the server accepts this client's token: an authenticated call that any
    /// principal may make or be refused (403 still means the token is valid; 401 does not).
    pub async fn check_token(&self) -> Result<(), ClientError> {
        match self.openapi().await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::FORBIDDEN.as_u16()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // Untyped calls, for callers that know the kind only at run time (the CLI).

    /// Creates an object of `kind` from a JSON `CreateRequest` (`POST /v1/<kind>s`) and returns it
    /// as stored, with its uuid and revision.
    pub async fn create_json(
        &self,
        kind: Kind,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let path = collection(kind);
        self.send(self.request(Method::POST, &path).json(body), &path).await
    }

    /// The object of `kind` with `uuid` (`GET /v1/<kind>s/{uuid}`), as JSON.
    pub async fn get_json(&self, kind: Kind, uuid: Uuid) -> Result<serde_json::Value, ClientError> {
        let path = item(kind, uuid);
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// The objects of `kind` matching every filter in `q`, as JSON, with the store revision they
    /// were read at (a watch resumes from it).
    pub async fn list_json(&self, kind: Kind, q: &ListQuery) -> Result<List<serde_json::Value>, ClientError> {
        let path = collection(kind);
        self.send(self.request(Method::GET, &path).query(q), &path).await
    }

    /// Replaces an object's label, labels and spec from a JSON `UpdateRequest`
    /// (`PUT /v1/<kind>s/{uuid}`); refused with 409 if the object changed since its `revision`.
    pub async fn update_json(
        &self,
        kind: Kind,
        uuid: Uuid,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let path = item(kind, uuid);
        self.send(self.request(Method::PUT, &path).json(body), &path).await
    }

    /// Deletes an object (`DELETE /v1/<kind>s/{uuid}`); with `revision`, only if the object is
    /// still at that revision (409 otherwise), without it whatever its revision.
    pub async fn delete(&self, kind: Kind, uuid: Uuid, revision: Option<i64>) -> Result<(), ClientError> {
        let path = item(kind, uuid);
        let mut rb = self.request(Method::DELETE, &path);
        if let Some(r) = revision {
            rb = rb.query(&[("revision", r)]);
        }
        self.execute(rb, &path).await.map(drop)
    }

    // Typed calls.

    /// Creates an object of `S`'s kind (`POST /v1/<kind>s`) and returns it as stored, with its
    /// uuid and revision.
    pub async fn create<S: Spec>(&self, req: &CreateRequest<S>) -> Result<Object<S>, ClientError> {
        let path = collection(S::KIND);
        self.send(self.request(Method::POST, &path).json(req), &path).await
    }

    /// The object of `S`'s kind with `uuid` (`GET /v1/<kind>s/{uuid}`).
    pub async fn get<S: Spec>(&self, uuid: Uuid) -> Result<Object<S>, ClientError> {
        let path = item(S::KIND, uuid);
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// The objects of `S`'s kind matching every filter in `q`, with the store revision they were
    /// read at (a watch resumes from it).
    pub async fn list<S: Spec>(&self, q: &ListQuery) -> Result<List<S>, ClientError> {
        let path = collection(S::KIND);
        self.send(self.request(Method::GET, &path).query(q), &path).await
    }

    /// Replaces the label, labels and spec of the object `uuid` (`PUT /v1/<kind>s/{uuid}`);
    /// refused with 409 if it changed since `req.revision`. The ring cannot change.
    pub async fn update<S: Spec>(
        &self,
        uuid: Uuid,
        req: &UpdateRequest<S>,
    ) -> Result<Object<S>, ClientError> {
        let path = item(S::KIND, uuid);
        self.send(self.request(Method::PUT, &path).json(req), &path).await
    }

    /// The access rules an instance's firewall applies (`GET /v1/nodes/{uuid}/effective-rules`).
    pub async fn effective_rules(&self, node: Uuid) -> Result<enjin_model::api::EffectiveRules, ClientError> {
        let path = format!("{}/effective-rules", item(Kind::Node, node));
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// Issue a token; it never holds more than the caller does.
    pub async fn token_create(&self, req: &TokenCreateRequest) -> Result<TokenCreated, ClientError> {
        let path = format!("/{VERSION}/tokens");
        self.send(self.request(Method::POST, &path).json(req), &path).await
    }

    /// Each account the caller may read, with its quota and use.
    pub async fn account_status(&self) -> Result<enjin_model::api::AccountStatusList, ClientError> {
        let path = format!("/{VERSION}/account-status");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// The API tokens of the accounts where the caller may list tokens (`GET /v1/tokens`),
    /// never their secrets.
    pub async fn token_list(&self) -> Result<TokenList, ClientError> {
        let path = format!("/{VERSION}/tokens");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// Revokes the API token whose id (as [`Client::token_list`] shows it, not its secret) is
    /// `id`.
    pub async fn token_revoke(&self, id: Uuid) -> Result<(), ClientError> {
        let path = format!("/{VERSION}/tokens/{id}");
        self.execute(self.request(Method::DELETE, &path), &path).await.map(drop)
    }

    /// Revoke a biscuit and everything derived from it.
    pub async fn token_revoke_derived(&self, biscuit: &str) -> Result<(), ClientError> {
        let path = format!("/{VERSION}/tokens/revoke-derived");
        let body = enjin_model::api::RevokeDerivedRequest { biscuit: biscuit.to_string() };
        self.execute(self.request(Method::POST, &path).json(&body), &path).await.map(drop)
    }

    /// The bus identities the control plane knows (`GET /v1/keys`): public keys, roles and
    /// states, never a private half.
    pub async fn key_list(&self) -> Result<KeyList, ClientError> {
        let path = format!("/{VERSION}/keys");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// Replaces the bus key `id` (its public key, hex), which must be held by the server's
    /// machine; the old key stays accepted for `overlap_seconds` (the server's default: 300).
    pub async fn key_rotate(&self, id: &str, overlap_seconds: Option<u64>) -> Result<KeyInfo, ClientError> {
        let path = format!("/{VERSION}/keys/{id}/rotate");
        let body = RotateRequest { overlap_seconds };
        self.send(self.request(Method::POST, &path).json(&body), &path).await
    }

    /// Revokes the bus key `id` (its public key, hex): every node of its ring stops accepting it.
    /// Returns the key as it now stands.
    pub async fn key_revoke(&self, id: &str) -> Result<KeyInfo, ClientError> {
        let path = format!("/{VERSION}/keys/{id}/revoke");
        self.send(self.request(Method::POST, &path), &path).await
    }

    /// Issues a single-use, expiring token for a child to join `req.ring` under the node
    /// `req.parent`; its secret is in this answer only.
    pub async fn join_token_create(
        &self,
        req: &JoinTokenCreateRequest,
    ) -> Result<JoinTokenCreated, ClientError> {
        let path = format!("/{VERSION}/join-tokens");
        self.send(self.request(Method::POST, &path).json(req), &path).await
    }

    /// Join a ring; this client's token must be a join token.
    pub async fn join(&self, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
        let path = format!("/{VERSION}/join");
        self.send(self.request(Method::POST, &path).json(req), &path).await
    }

    /// Follow a bus topic through the control plane (`GET /v1/bus/tail`).
    pub async fn bus_tail(&self, ring: u8, topic: &str) -> Result<Tail, ClientError> {
        let path = format!("/{VERSION}/bus/tail");
        let mut rb = self
            .streaming
            .get(self.url(&path))
            .query(&[("ring", ring.to_string()), ("topic", topic.to_string())]);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        self.execute(rb.header("Accept", "text/event-stream"), &path).await.map(Tail::new)
    }

    /// The server's metrics, in Prometheus text format (`/metrics`, the system account's).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let resp = self.execute(self.request(Method::GET, "/metrics"), "/metrics").await?;
        resp.text().await.map_err(|e| ClientError::Http { url: self.url("/metrics"), source: e })
    }

    /// The server's OpenAPI document (`GET /v1/openapi.json`), which describes every route.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        let path = format!("/{VERSION}/openapi.json");
        self.send(self.request(Method::GET, &path), &path).await
    }

    /// Follow changes of `kind` (all kinds if `None`) from revision `from` (changes after now
    /// if `None`). The watch reconnects by itself after a broken connection, resuming after the
    /// last revision it delivered.
    pub fn watch(&self, kind: Option<Kind>, from: Option<i64>) -> Watch {
        Watch::new(self.clone(), kind, from)
    }

    pub(crate) async fn open_watch(
        &self,
        kind: Option<Kind>,
        from: Option<i64>,
        last_seen: Option<i64>,
    ) -> Result<reqwest::Response, ClientError> {
        #[derive(Serialize)]
        struct Q {
            #[serde(skip_serializing_if = "Option::is_none")]
            kind: Option<Kind>,
            #[serde(skip_serializing_if = "Option::is_none")]
            from: Option<i64>,
        }
        let path = format!("/{VERSION}/watch");
        let mut rb = self.streaming.get(self.url(&path)).query(&Q { kind, from });
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(id) = last_seen {
            rb = rb.header("Last-Event-ID", id.to_string());
        }
        rb = rb.header("Accept", "text/event-stream");
        self.execute(rb, &path).await
    }
}

fn collection(kind: Kind) -> String {
    format!("/{VERSION}/{}", kind.plural())
}

fn item(kind: Kind, uuid: Uuid) -> String {
    format!("/{VERSION}/{}/{uuid}", kind.plural())
}

async fn error_from(resp: reqwest::Response, url: &str) -> ClientError {
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(p) => ClientError::Api(Box::new(p)),
        Err(_) => ClientError::Api(Box::new(Problem {
            problem_type: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("error").into(),
            status: status.as_u16(),
            detail: Some(format!("{} from {url}: {}", status, String::from_utf8_lossy(&bytes).trim())),
            instance: None,
            field: None,
        })),
    }
}

/// True for errors worth retrying: the server was unreachable or unavailable.
pub fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::Http { .. } => true,
        ClientError::Api(p) => p.status == StatusCode::SERVICE_UNAVAILABLE.as_u16(),
        _ => false,
    }
}

/// A decoded batch, re-exported for watchers.
pub type Batch = WatchBatch;
