//! The flash ring buffer: format, tables, recovery, eviction and compaction.

mod gc;
pub mod layout;
mod recover;
pub mod slots;
mod store;

pub use layout::{Geometry, Kind, FORMAT_VERSION, MAX_LABEL_NAME};
pub use slots::Slots;
pub use store::{LabelRef, OpenReport, RecordRef, Ring, Salvaged};
