//! The ring bus: every message is an Ed25519-signed envelope; a node accepts only envelopes from
//! keys its parent ring vouched for; envelopes travel over mutual-TLS sockets through the ring's
//! hub. It must never write its own cryptography (ed25519-dalek, rustls and ring do that), never
//! accept a message it could not attribute, and never panic on bytes from the network.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod acl;
pub mod client;
pub mod counters;
pub mod envelope;
pub mod frame;
mod hex;
pub mod hub;
pub mod identity;
pub mod nats;
pub mod node;
mod private_file;
pub mod renewal;
pub mod retained;
pub mod tls;
pub mod topic;
pub mod transport;
pub mod trust;
