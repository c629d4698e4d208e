//! Stores on the workspace's throwaway etcd ([`enjin_testkit::EtcdServer`]).

use std::time::Duration;

use enjin_store::{EtcdStore, EtcdStoreConfig};
use enjin_testkit::EtcdServer;

use crate::PATIENCE;

/// A store connected to `server` with `config`; waits until the server answers (it elects
/// itself leader first).
pub(crate) async fn connect_with(server: &EtcdServer, config: EtcdStoreConfig) -> EtcdStore {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match EtcdStore::connect(config.clone()).await {
            Ok(store) => return store,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "etcd at {} does not answer: {e}; its log is in {}",
                    server.endpoint(),
                    server.dir().display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A store connected to `server` over plain HTTP.
pub(crate) async fn connect(server: &EtcdServer) -> EtcdStore {
    connect_with(server, EtcdStoreConfig::new([server.endpoint()])).await
}
