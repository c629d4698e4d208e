//! The zone on disk, so that a restarted DNS server answers from its last zone before (or
//! without) hearing from the control plane. A save replaces the file atomically: a reader, or a
//! crash at any point, sees the old zone or the new one, never a mix.

use std::fs;
use std::path::{Path, PathBuf};

use enjin_model::api::DnsZone;

/// Why [`save`] failed. The server keeps answering from the zone in memory; only a restart
/// before the next successful save would start from an older snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    /// The zone could not be serialized to JSON; a zone always can, so this is a bug.
    #[error("failed to encode dns zone version {version}: {source}")]
    Encode {
        /// The version of the zone that failed to encode.
        version: i64,
        /// serde_json's reason.
        #[source]
        source: serde_json::Error,
    },
    /// The file could not be written (disk full, missing directory, permissions); it still holds
    /// either the old zone or the new one, never part of one.
    #[error("failed to write dns zone snapshot {path}: {source}")]
    Write {
        /// The snapshot file that was being replaced.
        path: PathBuf,
        /// The I/O error from writing, syncing or renaming it.
        #[source]
        source: std::io::Error,
    },
}

/// Why [`load`] failed. A missing file is not an error (it is `Ok(None)`); these mean a file is
/// there but cannot be used: the server must start with no zone (SERVFAIL to every query) until
/// the control plane sends one.
#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    /// The file exists but could not be read (permissions, I/O error).
    #[error("failed to read dns zone snapshot {path}: {source}")]
    Read {
        /// The snapshot file.
        path: PathBuf,
        /// The I/O error from reading it.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but does not hold a zone as JSON: written by another version, or by
    /// something else; deleting it is safe.
    #[error("failed to decode dns zone snapshot {path}: {source}")]
    Decode {
        /// The snapshot file.
        path: PathBuf,
        /// serde_json's reason, with the line and column.
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
