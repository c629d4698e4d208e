//! The zone on disk, so that a restarted DNS server answers from its last zone before (or
//! without) hearing from the control plane. A save replaces the file atomically: a reader, or a
//! crash at any point, sees the old zone or the new one, never a mix.

use std::fs;
use std::path::{Path, PathBuf};

use enjin_model::api::DnsZone;

#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    #[error("failed to encode dns zone version {version}: {source}")]
    Encode {
        version: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write dns zone snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("failed to read dns zone snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to decode dns zone snapshot {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `zone` to `path` (JSON, mode 0600) atomically and durably
/// ([`enjin_sys::fs::write_private`]).
pub fn save(path: &Path, zone: &DnsZone) -> Result<(), SaveSnapshotError> {
    let bytes = serde_json::to_vec(zone)
        .map_err(|source| SaveSnapshotError::Encode { version: zone.version, source })?;
    // The zone lists every address in the deployment; only its owner should read it.
    enjin_sys::fs::write_private(path, &bytes)
        .map_err(|source| SaveSnapshotError::Write { path: path.to_owned(), source })?;
    tracing::debug!(path = %path.display(), version = zone.version, "dns zone snapshot saved");
    Ok(())
}

/// Reads the zone saved at `path`; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<DnsZone>, LoadSnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadSnapshotError::Read { path: path.to_owned(), source }),
    };
    let zone = serde_json::from_slice(&bytes)
        .map_err(|source| LoadSnapshotError::Decode { path: path.to_owned(), source })?;
    Ok(Some(zone))
}
