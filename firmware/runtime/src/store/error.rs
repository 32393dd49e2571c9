//! Errors of the store.

use std::path::PathBuf;

/// What can go wrong with a store file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
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
