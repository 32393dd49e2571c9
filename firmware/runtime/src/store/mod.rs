//! The token store: the `no_std` ring buffer of `anytime-core` over a memory-mapped file,
//! and the SPEC §5 token codec wired to the original block's attention.
//!
//! ```no_run
//! use anytime_runtime::store::{Store, StoreConfig};
//! # fn main() -> Result<(), anytime_runtime::store::StoreError> {
//! let mut store = Store::open_or_create("tokens.store", StoreConfig::new(50 << 20, 8192))?;
//! let cat = store.label_id("cat")?;
//! let seq = store.append(cat, b"codec record bytes")?;
//! let batch = store.sample_balanced(31, 7, Some(seq))?;
//! store.set_state(b"ocw state")?;
//! # let _ = batch; Ok(()) }
//! ```

mod error;
mod file;
mod lock;
mod mmap;
mod tokens;

pub use anytime_core::codec::CodecParams;
pub use error::StoreError;
pub use file::{
    damage_summary, read_locked, read_locked_by, LabelInfo, RepairReport, Sample, Store,
    StoreConfig,
};
pub use lock::{lock_path, ReadLock};
pub use mmap::{MmapFlash, FILE_ERASE_SIZE};
pub use tokens::{decode_tokens, encode_tokens, token_weights};

#[cfg(test)]
mod tests;
