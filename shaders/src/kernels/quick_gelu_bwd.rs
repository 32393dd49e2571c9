//! QuickGELU backward, `dx = dy·(σ + 1.702·x·σ·(1−σ))` (`quick_gelu_bwd.wgsl`).

use crate::kernel::{check_len, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "quick_gelu_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("quick_gelu_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// Forward input.
    pub const X: u32 = 1;
    pub const DY: u32 = 2;
    pub const DX: u32 = 3;
}

const WG: u32 = 256;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub len: u32,
    pub _pad: [u32; 3],
}

/// The kernel.
#[derive(Debug)]
pub struct QuickGeluBwd {
    pipeline: KernelPipeline,
}

impl QuickGeluBwd {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];
        Ok(QuickGeluBwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one elementwise pass over `len` values.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        len: u32,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        check_len(NAME, "x", x, len as u64)?;
        check_len(NAME, "dy", dy, len as u64)?;
        check_len(NAME, "dx", dx, len as u64)?;
        let uniform = ctx.uniform(NAME, &Params { len, _pad: [0; 3] });
        let group = self.pipeline.bind_group(ctx, &[&uniform, x, dy, dx]);
        Ok(self.pipeline.dispatch(0, group, grid_1d(len as u64, WG)))
    }
}
