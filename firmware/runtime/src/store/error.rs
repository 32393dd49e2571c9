//! Errors of the store.

use std::path::PathBuf;

/// What can go wrong with a store file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Creating, opening, sizing, mapping or syncing the file failed.
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store logic refused: not a store, newer format, truncated, corrupt header, no
    /// space, unknown label, record too large... (`source` says which; match on it).
    #[error("store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: anytime_core::Error,
    },
    /// The file is larger than the 4 GiB a store can address.
    #[error("store {path}: {len} bytes exceed the 4 GiB limit")]
    TooLarge { path: PathBuf, len: u64 },
    /// The path is not a regular file (a folder, a FIFO, a device).
    #[error("store {path}: not a regular file")]
    NotAFile { path: PathBuf },
    /// Another process writes this store.
    #[error("store {path} is in use by {holder}; one process at a time may write it")]
    Locked { path: PathBuf, holder: String },
    /// Opening found records that cannot be read; nothing was written.
    #[error("store {path} is damaged ({summary}); nothing was written to it. `anytime-host inspect-store --repair {path}` writes a store with every intact record and keeps the damaged file beside it")]
    Damaged { path: PathBuf, summary: String },
}

impl StoreError {
    /// The core error, when the store logic refused.
    pub fn core(&self) -> Option<anytime_core::Error> {
        match self {
            StoreError::Store { source, .. } => Some(*source),
            _ => None,
        }
    }
}
