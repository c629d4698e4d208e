//! The HTTP router: forwards each request to one healthy instance of the app routed at its
//! `Host` and path, from the last route table it was given. It must never panic on what a client
//! or an instance sends, never block a request on the control plane (it serves its last table,
//! or the snapshot of it, while no newer one comes), and never hold a lock on the request path
//! longer than it takes to clone an `Arc`.
//!
//! # Using it
//!
//! ```no_run
//! # async fn run(table: enjin_model::api::RouteTable) -> std::io::Result<()> {
//! use enjin_router::{Router, RouterConfig, snapshot};
//!
//! let router = Router::new(RouterConfig::default());
//! // A restarted router serves its last table until the control plane sends a newer one.
//! if let Ok(Some(last)) = snapshot::load("routes.json".as_ref()) {
//!     router.apply(last);
//! }
//! if router.apply(table.clone()) {
//!     snapshot::save("routes.json".as_ref(), &table).ok();
//! }
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! router.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```
//!
//! - [`Router::apply`] swaps in a [`RouteTable`](enjin_model::api::RouteTable) only if its
//!   version is newer than the one served.
//! - [`Router::serve`] answers HTTP/1.1 on a listener until `shutdown` resolves, then stops
//!   accepting and lets requests in flight finish for up to
//!   [`RouterConfig::drain_timeout`].
//! - [`Router::metrics_text`] renders the Prometheus text format; [`Router::stats`] gives one
//!   app's numbers for a status command.
//! - [`snapshot::save`] / [`snapshot::load`] keep the last table on disk (0600, atomic rename).
//!
//! # What a request goes through
//!
//! 1. The host (from the request target if it is absolute, else `Host`), without its port and
//!    lowercased, must equal one of a route's `hosts`; of the routes for that host the one with
//!    the longest `path_prefix` matching on a segment boundary wins (`/api` matches `/api` and
//!    `/api/x`, not `/apix`; `/` matches everything). No match: 404.
//! 2. A backend is picked by the power of two choices: two at random, the one with fewer
//!    requests outstanding. Backends that failed to connect within
//!    [`RouterConfig::eject_for`] are skipped while another is left. No backends: 503.
//! 3. The request goes out on a kept-alive HTTP/1.1 connection (TCP_NODELAY) from the
//!    backend's idle list for the worker thread serving the client, with hop-by-hop headers
//!    removed and `X-Forwarded-For`, `-Proto` and `-Host` set. A connection is made before
//!    anything is sent, so a connect failure (or timeout, [`RouterConfig::connect_timeout`])
//!    leaves the request untouched: it is retried whole, whatever its method and body, on
//!    another backend when there is one, up to [`RouterConfig::max_attempts`] in all, and the
//!    backend is ejected. An idle connection the instance had closed is replaced by a new one
//!    without counting as an attempt. A request that was sent goes again only if it is
//!    idempotent (RFC 9110) and has no body, when its instance failed it before answering;
//!    any other request that was sent is never sent again.
//! 4. Connect failures that use up the attempts, and answers that are not HTTP: 502. No response
//!    headers within [`RouterConfig::response_timeout`]: 504.
//! 5. A request with `Connection: upgrade` (WebSocket and the like) that the backend answers
//!    with 101 becomes a tunnel: bytes are copied both ways until either side closes.
//!
//! Error pages the router makes itself are small HTML with an `x-enjin-fault` header saying whose
//! fault it was: `client` (400, 404) or `upstream` (502, 503, 504).
//!
//! # Threads
//!
//! By default [`Router::serve`] runs [`RouterConfig::threads`] worker threads (one per CPU),
//! each with a single-threaded tokio runtime that accepts from the shared listening socket and
//! drives its connections, both to clients and to instances, itself. A request and the
//! upstream connection it uses are then always on one thread, as in nginx's workers; that
//! removes the cross-thread wake-ups that cost the most in a proxy. `threads: 0` serves on the
//! caller's runtime instead.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balance;
mod body;
mod config;
mod headers;
mod metrics;
mod page;
mod pool;
mod proxy;
mod router;
mod server;
pub mod snapshot;
mod table;

pub use config::RouterConfig;
pub use metrics::{AppStats, StatusClasses};
pub use router::Router;
pub use snapshot::{LoadSnapshotError, SaveSnapshotError};
