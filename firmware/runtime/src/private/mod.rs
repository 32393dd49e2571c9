//! SPEC §7's data-free private mode (after "Always Be Dreaming"), the CPU computations:
//! per-label aggregate token statistics ([`stats`]) and the class-conditional generator of
//! token records ([`generator`]).

mod codec;
mod error;
pub mod generator;
pub mod stats;

pub use error::PrivateError;
pub use generator::{Generator, GeneratorDims, GeneratorParams, GeneratorSaved};
pub use stats::{StatsTable, TokenStats, MIN_SAMPLES, VAR_FLOOR};
