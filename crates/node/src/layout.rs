//! The files of a data directory that others read: the CLI finds the API, its token and its CA
//! here (`enjin login`, `enjin --data-dir D ...`).

/// The admin token, made at the first start (0600).
pub const TOKEN_FILE: &str = "admin.token";
/// The API's URL, written at every start.
pub const ENDPOINT_FILE: &str = "endpoint";
/// The CA the API server's certificate comes from (the ring 0 CA), for clients to trust.
pub const CA_FILE: &str = "ca.crt";
/// The SQLite store, beside its `-wal` and `-shm` files; all three 0600.
pub const STATE_FILE: &str = "state.db";
/// `<data>/bus/hub.addr`: where the ring 1 hub listened last.
pub(crate) const HUB_ADDR_FILE: &str = "hub.addr";
