//! Apps: reading their manifests (`enjin.toml`, `Procfile`), packing a directory into a
//! deterministic tar + zstd package and unpacking one safely, and the content-addressed store
//! that keeps packages by digest. It reads and writes only the paths it is given; it must
//! never trust a manifest or package (they come from users), never panic on one, and never
//! write outside the directory it unpacks into.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod manifest;
pub mod package;
pub mod store;
