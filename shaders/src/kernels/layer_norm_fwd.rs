//! LayerNorm forward with saved statistics (`layer_norm_fwd.wgsl`).

use crate::kernel::{check_len, ensure, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "layer_norm_fwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("layer_norm_fwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// `[rows, width]` input.
    pub const X: u32 = 1;
    /// Buffer holding the scale (at `w_off`) and shift (at `b_off`).
    pub const WB: u32 = 2;
    /// `[rows, width]` output.
    pub const Y: u32 = 3;
    /// `[rows, 2]`: mean, rstd.
    pub const STATS: u32 = 4;
}

const WG: u32 = 64;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub width: u32,
    pub w_off: u32,
    pub b_off: u32,
    pub eps: f32,
    pub _pad: [u32; 3],
}

/// Buffers of one LayerNorm forward.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormFwdArgs<'a> {
    pub rows: u32,
    pub width: u32,
    pub eps: f32,
    pub x: &'a wgpu::Buffer,
    pub wb: &'a wgpu::Buffer,
    pub w_off: u32,
    pub b_off: u32,
    pub y: &'a wgpu::Buffer,
    pub stats: &'a wgpu::Buffer,
}

/// The LayerNorm forward kernel.
#[derive(Debug)]
pub struct LayerNormFwd {
    pipeline: KernelPipeline,
}

impl LayerNormFwd {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(LayerNormFwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one LayerNorm.
    pub fn bind(&self, ctx: &GpuContext, a: &LayerNormFwdArgs<'_>) -> Result<Dispatch, GpuError> {
        ensure(NAME, a.width > 0, || "zero width".into())?;
        let len = a.rows as u64 * a.width as u64;
        check_len(NAME, "x", a.x, len)?;
        check_len(NAME, "y", a.y, len)?;
        check_len(NAME, "stats", a.stats, 2 * a.rows as u64)?;
        check_len(NAME, "w", a.wb, a.w_off as u64 + a.width as u64)?;
        check_len(NAME, "b", a.wb, a.b_off as u64 + a.width as u64)?;
        let params = Params {
            rows: a.rows,
            width: a.width,
            w_off: a.w_off,
            b_off: a.b_off,
            eps: a.eps,
            _pad: [0; 3],
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, a.x, a.wb, a.y, a.stats]);
        Ok(self.pipeline.dispatch(0, group, grid_1d(a.rows as u64, WG)))
    }
}
