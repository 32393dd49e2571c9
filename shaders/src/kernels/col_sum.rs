//! Column sums of a strided block, for bias gradients (`col_sum.wgsl`).

use crate::kernel::{check_len, ensure, span, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "col_sum";
/// The WGSL source.
pub const SOURCE: &str = include_str!("col_sum.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    pub const SRC: u32 = 1;
    pub const DST: u32 = 2;
}

const WG: u32 = 64;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub s_off: u32,
    pub lds: u32,
    pub d_off: u32,
    pub flags: u32,
    pub _pad: [u32; 2],
}

/// `dst[d_off + c] (+)= Σ_r src[s_off + r·lds + c]` for `c < cols`.
#[derive(Clone, Copy, Debug)]
pub struct ColSumArgs<'a> {
    pub rows: u32,
    pub cols: u32,
    pub src: &'a wgpu::Buffer,
    pub s_off: u32,
    pub lds: u32,
    pub dst: &'a wgpu::Buffer,
    pub d_off: u32,
    pub accumulate: bool,
}

/// The column-sum kernel.
#[derive(Debug)]
pub struct ColSum {
    pipeline: KernelPipeline,
}

impl ColSum {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [Slot::Uniform, Slot::Read, Slot::ReadWrite];
        Ok(ColSum {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one reduction.
    pub fn bind(&self, ctx: &GpuContext, a: &ColSumArgs<'_>) -> Result<Dispatch, GpuError> {
        ensure(NAME, a.cols <= a.lds || a.rows <= 1, || {
            "row stride below the column count".into()
        })?;
        check_len(NAME, "src", a.src, span(a.s_off, a.rows, a.cols, a.lds))?;
        check_len(NAME, "dst", a.dst, a.d_off as u64 + a.cols as u64)?;
        let params = Params {
            rows: a.rows,
            cols: a.cols,
            s_off: a.s_off,
            lds: a.lds,
            d_off: a.d_off,
            flags: u32::from(a.accumulate),
            _pad: [0; 2],
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self.pipeline.bind_group(ctx, &[&uniform, a.src, a.dst]);
        Ok(self
            .pipeline
            .dispatch(0, group, [a.cols.div_ceil(WG), 1, 1]))
    }
}
