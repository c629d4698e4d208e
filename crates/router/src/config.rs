//! The router's settings, with the defaults written in code.

use std::time::Duration;

/// How the router talks to clients and instances. `Default` is meant for production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// How long a TCP connect to an instance may take before it counts as a connect failure
    /// (which is retried and ejects the instance). Default 2 s.
    pub connect_timeout: Duration,
    /// How long an instance may take to send response headers, connect included, before the
    /// client gets 504. Default 60 s.
    pub response_timeout: Duration,
    /// How long an idle kept-alive connection to an instance stays in the pool. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per instance and worker thread. Default 256.
    pub pool_max_idle_per_host: usize,
    /// Attempts per request, the first included, when connecting fails (at most 8). A request
    /// is tried again only if nothing of it was sent, so any method qualifies. Default 3; 0
    /// counts as 1.
    pub max_attempts: u32,
    /// How long an instance that failed to connect is passed over while another is left.
    /// Default 10 s.
    pub eject_for: Duration,
    /// How long requests in flight may take to finish after shutdown is asked for; open
    /// connections and tunnels still there after it are closed. Default 30 s.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers. Default 30 s.
    pub client_timeout: Duration,
    /// Client connections served at once; more wait in the listen backlog. Default 16384.
    pub max_connections: usize,
    /// Worker threads `serve` starts, each with a single-threaded runtime, its own share of the
    /// connections and its own pools to instances, so that a request never hops between
    /// threads. 0 serves on the caller's runtime instead. Default: the number of CPUs.
    pub threads: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_attempts: 3,
            eject_for: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            client_timeout: Duration::from_secs(30),
            max_connections: 16_384,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}
