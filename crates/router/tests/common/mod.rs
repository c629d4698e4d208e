//! Helpers for the router's tests: backends on 127.0.0.1 port 0, a router serving a table, and
//! a client that says which host it wants.

#![allow(dead_code, reason = "each test binary uses a different part of these helpers")]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use enjin_model::api::{RouteBackend, RouteEntry, RouteTable};
use enjin_router::{Router, RouterConfig};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long any one wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on a fresh loopback port with `handler`, until the test's runtime ends.
pub async fn serve_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
    let addr = listener.local_addr().expect("the backend's address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A backend that answers every request with its name (and `x-backend: name`), and keeps what
/// it saw.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let addr = serve_http(move |req: Request<Incoming>| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                log.lock().expect("the log").push(Seen {
                    method: parts.method,
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                });
                let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                response.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                response.headers_mut().insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
                response
            }
        })
        .await;
        Backend { name, addr, seen }
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().expect("the log").len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().expect("the log").last().cloned().expect("a request")
    }
}

/// A loopback port nothing listens on: connecting to it is refused.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to free");
    listener.local_addr().expect("its address")
}

pub fn route(app: &str, hosts: &[&str], prefix: &str, backends: &[SocketAddr]) -> RouteEntry {
    RouteEntry {
        app: app.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.into(),
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, addr)| RouteBackend {
                instance: uuid::Uuid::new_v4(),
                label: format!("{app}-{i}"),
                addr: *addr,
            })
            .collect(),
    }
}

pub fn table(version: i64, routes: Vec<RouteEntry>) -> RouteTable {
    RouteTable { version, routes }
}

/// A router serving on a fresh loopback port.
#[derive(Debug)]
pub struct Running {
    pub router: Router,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn start(config: RouterConfig, table: RouteTable) -> Running {
        let router = Router::new(config);
        assert!(router.apply(table), "a fresh router applies its first table");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the router");
        let addr = listener.local_addr().expect("the router's address");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = router.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Running { router, addr, stop: Some(stop), task }
    }

    /// Asks for shutdown without waiting for it.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `serve` to return.
    pub async fn stopped(self) -> std::io::Result<()> {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("serve returned in time")
            .expect("serve did not panic")
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// A kept-alive client, like a browser's.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}")).header("host", host);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from_static(body.as_bytes()))).expect("a request");
    let response = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("a response in time")
        .expect("a response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect()).await.expect("a body in time").expect("a body");
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    }
}

pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Reply {
    send(client, addr, Method::GET, host, path, &[], "").await
}

/// Waits until `done` holds, checking every few milliseconds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
