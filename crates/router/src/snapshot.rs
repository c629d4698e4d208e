//! The last applied route table on disk, so that a restarted router serves it without the
//! control plane. Written atomically ([`enjin_sys::fs::write_private`]), so a crash leaves either
//! the old table or the new one, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use enjin_model::api::RouteTable;

#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    #[error("failed to encode route table {version}: {source}")]
    Encode { version: i64, source: serde_json::Error },
    #[error("failed to write route snapshot {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("failed to read route snapshot {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("route snapshot {path} is not a route table: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

/// Writes `table` to `path` atomically, readable and writable by the owner only (0600): the
/// table names every app's instances.
pub fn save(path: &Path, table: &RouteTable) -> Result<(), SaveSnapshotError> {
    let json = serde_json::to_vec(table)
        .map_err(|source| SaveSnapshotError::Encode { version: table.version, source })?;
    enjin_sys::fs::write_private(path, &json)
        .map_err(|source| SaveSnapshotError::Write { path: path.to_path_buf(), source })?;
    Ok(())
}

/// The table saved at `path`, or `None` if there is none.
pub fn load(path: &Path) -> Result<Option<RouteTable>, LoadSnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadSnapshotError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LoadSnapshotError::Decode { path: path.to_path_buf(), source })
}
