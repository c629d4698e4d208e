//! `enjin store copy`: the data directory's SQLite store copied into an empty etcd cluster
//! with [`enjin_store::copy_all`], while the cloud is stopped.

use std::path::{Path, PathBuf};

use enjin_store::CopyReport;

use crate::cloud::{self, CloudError};
use crate::layout::STATE_FILE;
use crate::{EtcdBackend, NodeError, open_etcd, open_sqlite};

/// Copy `<dir>/state.db` into the etcd cluster `etcd`, which must be empty, and verify it.
/// Refused while the data directory's `enjin up` runs; any other process that has the store
/// open (`enjin server`) holds its lock, so opening it here fails. The lock is held until the
/// copy is verified, so nothing writes to the source meanwhile. The client certificate for
/// `https://` endpoints comes from the ring 0 CA in `<dir>/pki`, as the control plane's does.
pub async fn copy_store(dir: &Path, etcd: &EtcdBackend) -> Result<CopyReport, NodeError> {
    etcd.validate()?;
    let db = dir.join(STATE_FILE);
    if !db.exists() {
        return Err(NodeError::NoStore(db));
    }
    if let Some((pid, _)) = cloud::running_up(dir) {
        return Err(CloudError::AlreadyUp { dir: dir.to_path_buf(), pid }.into());
    }
    let source = open_sqlite(dir).await?;
    let target = match open_etcd(dir, etcd).await {
        Ok(target) => target,
        Err(e) => {
            let _ = source.close().await;
            return Err(e);
        }
    };
    let copied = enjin_store::copy_all(source.as_ref(), target.as_ref()).await;
    let closed = (source.close().await, target.close().await);
    let report = copied
        .map_err(|source| NodeError::StoreCopy { to: PathBuf::from(etcd.endpoints.join(",")), source })?;
    closed.0.map_err(NodeError::CloseStore)?;
    closed.1.map_err(NodeError::CloseStore)?;
    Ok(report)
}
