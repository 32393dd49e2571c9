//! SPEC §7's data-free private mode (after "Always Be Dreaming"), the CPU computations:
//! per-label aggregate token statistics ([`stats`]), the class-conditional generator of
//! token records ([`generator`]) and its losses against a frozen snapshot of the tuned
//! block ([`losses`]).

mod codec;
mod error;
pub mod generator;
pub mod losses;
pub mod stats;

pub use error::PrivateError;
pub use generator::{Generator, GeneratorDims, GeneratorParams, GeneratorSaved};
pub use losses::{Snapshot, SnapshotForward};
pub use stats::{StatsTable, TokenStats, MIN_SAMPLES, VAR_FLOOR};
