//! # anytime-runtime
//!
//! The std side of the device: the frozen CLIP encoder (through tract), the last
//! transformer block (original and tuned), the training engine (CPU reference and
//! wgpu), the memory-mapped token store and the anytime learner.
//!
//! No tract type crosses this crate's public API.

pub mod assets;
pub mod block;
pub mod encoder;
pub mod learner;
pub mod predict;
pub mod private;
pub(crate) mod simd;
pub mod store;
pub mod train;
pub mod typicality;
