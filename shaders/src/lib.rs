//! # anytime-shaders
//!
//! WGSL compute kernels, one kernel per `.wgsl` file, each with a same-named Rust
//! wrapper that embeds the source, names its binding slots, mirrors its uniform struct,
//! owns its bind-group and pipeline layouts and checks buffer sizes before it binds a
//! dispatch.
//!
//! - [`GpuContext`]: the one instance / adapter / device / queue ([`GpuError::NoAdapter`]
//!   when there is no adapter, [`GpuError::SoftwareOnly`] when a hardware one is asked for
//!   ([`AdapterFilter`]) and only a software one exists, so callers fall back to the CPU).
//! - [`Kernels`]: every pipeline, built once.
//! - A wrapper's `bind` checks sizes and returns a [`Dispatch`] (pipeline, bind group,
//!   grid) that is recorded into a compute pass as often as needed; nothing reads back.
//!
//! Matrices are row-major `f32` with element offsets and row strides, so blocks inside
//! larger buffers (CLS rows, the key/value columns of a fused projection, one tensor of a
//! flat parameter buffer) are used in place.

mod context;
mod error;
mod kernel;
mod kernel_set;
pub mod kernels;

pub use context::{AdapterFilter, GpuContext};
pub use error::GpuError;
pub use kernel::Dispatch;
pub use kernel_set::Kernels;
/// The wgpu version the kernels are built against (its types appear in this API).
pub use wgpu;
