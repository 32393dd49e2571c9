//! Strided block copy or accumulate (`copy_rows.wgsl`).

use crate::kernel::{check_len, ensure, grid_1d, span, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "copy_rows";
/// The WGSL source.
pub const SOURCE: &str = include_str!("copy_rows.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    pub const SRC: u32 = 1;
    pub const DST: u32 = 2;
}

const WG: u32 = 256;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub s_off: u32,
    pub lds: u32,
    pub d_off: u32,
    pub ldd: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// One strided block copy `dst (+)= src`, `rows × cols`.
#[derive(Clone, Copy, Debug)]
pub struct CopyArgs<'a> {
    pub rows: u32,
    pub cols: u32,
    pub src: &'a wgpu::Buffer,
    pub s_off: u32,
    pub lds: u32,
    pub dst: &'a wgpu::Buffer,
    pub d_off: u32,
    pub ldd: u32,
    pub accumulate: bool,
}

/// The copy kernel.
#[derive(Debug)]
pub struct CopyRows {
    pipeline: KernelPipeline,
}

impl CopyRows {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [Slot::Uniform, Slot::Read, Slot::ReadWrite];
        Ok(CopyRows {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one copy.
    pub fn bind(&self, ctx: &GpuContext, a: &CopyArgs<'_>) -> Result<Dispatch, GpuError> {
        ensure(
            NAME,
            (a.cols <= a.lds && a.cols <= a.ldd) || a.rows <= 1,
            || "a row stride is below the column count".into(),
        )?;
        check_len(NAME, "src", a.src, span(a.s_off, a.rows, a.cols, a.lds))?;
        check_len(NAME, "dst", a.dst, span(a.d_off, a.rows, a.cols, a.ldd))?;
        let params = Params {
            rows: a.rows,
            cols: a.cols,
            s_off: a.s_off,
            lds: a.lds,
            d_off: a.d_off,
            ldd: a.ldd,
            flags: u32::from(a.accumulate),
            _pad: 0,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self.pipeline.bind_group(ctx, &[&uniform, a.src, a.dst]);
        Ok(self
            .pipeline
            .dispatch(0, group, grid_1d(a.rows as u64 * a.cols as u64, WG)))
    }
}
