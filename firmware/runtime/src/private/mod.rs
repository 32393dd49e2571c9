//! SPEC §7's data-free private mode (after "Always Be Dreaming"), the CPU computations:
//! per-label aggregate token statistics ([`stats`]), the class-conditional generator of
//! token records ([`generator`]), its losses against a frozen snapshot of the tuned block
//! ([`losses`]) and its training loop ([`dream`]), and the restyled replay ([`restyle`]).

mod codec;
pub mod dream;
mod error;
pub mod generator;
pub mod losses;
pub mod restyle;
pub mod stats;
mod stats_file;

pub use dream::{
    generator_losses, train_generator, DreamConfig, DreamLabels, DreamReport, LossParts,
};
pub use error::PrivateError;
pub use generator::{Generator, GeneratorDims, GeneratorParams, GeneratorSaved};
pub use losses::{Snapshot, SnapshotForward};
pub use restyle::{draw_cls, restyle};
pub use stats::{StatsTable, TokenStats, MIN_SAMPLES, VAR_FLOOR};
pub use stats_file::{slot_len, StatsFile, StatsFileError, STATS_HEADER_LEN};
