//! Integration tests of the control plane's HTTP API, served on loopback over a SQLite store
//! in a temporary directory and driven over TLS.

mod audit;
mod auth;
mod biscuits;
mod concurrency;
mod crud;
mod door;
mod firewall;
mod fixtures;
mod harness;
mod invariants;
mod ipam;
mod limits;
mod platform;
mod sandbox_policy;
mod sse;
mod system;
mod tenancy;
mod uids;
mod watch;
