//! SPEC §7's data-free private mode (after "Always Be Dreaming"), the CPU computations:
//! per-label aggregate token statistics ([`stats`]).

mod codec;
mod error;
pub mod stats;

pub use error::PrivateError;
pub use stats::{StatsTable, TokenStats, MIN_SAMPLES, VAR_FLOOR};
