//! Rows gathered from a strided block by a u32 index per row (`gather_rows.wgsl`).

use super::matmul::Operand;
use crate::kernel::{check_len, ensure, grid_1d, span, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "gather_rows";
/// The WGSL source.
pub const SOURCE: &str = include_str!("gather_rows.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    pub const SRC: u32 = 1;
    /// `[rows]` u32: the source row of each destination row.
    pub const INDEX: u32 = 2;
    pub const DST: u32 = 3;
}

/// An index that gathers a row of zeros (any index `≥ src_rows` does).
pub const NONE: u32 = u32::MAX;

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
    pub src_rows: u32,
    pub flags: u32,
}

/// `dst row i (+)= src row index[i]` (zeros for an index `≥ src_rows`), `cols` values per
/// row, for `i < rows`.
#[derive(Clone, Copy, Debug)]
pub struct GatherArgs<'a> {
    pub rows: u32,
    pub cols: u32,
    /// `src_rows` rows at an offset and row stride.
    pub src: Operand<'a>,
    pub src_rows: u32,
    /// `[rows]` u32.
    pub index: &'a wgpu::Buffer,
    pub dst: Operand<'a>,
    pub accumulate: bool,
}

/// The gather kernel.
#[derive(Debug)]
pub struct GatherRows {
    pipeline: KernelPipeline,
}

impl GatherRows {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];
        Ok(GatherRows {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one gather.
    pub fn bind(&self, ctx: &GpuContext, a: &GatherArgs<'_>) -> Result<Dispatch, GpuError> {
        ensure(
            NAME,
            (a.cols <= a.src.stride || a.src_rows <= 1) && (a.cols <= a.dst.stride || a.rows <= 1),
            || "a row stride is below the column count".into(),
        )?;
        ensure(
            NAME,
            a.rows as u64 * a.cols as u64 <= u32::MAX as u64,
            || format!("{} × {} values do not fit u32 indices", a.rows, a.cols),
        )?;
        ensure(
            NAME,
            a.dst.buffer != a.src.buffer && a.dst.buffer != a.index,
            || "dst is bound as src or index too".into(),
        )?;
        let src_len = span(a.src.offset, a.src_rows, a.cols, a.src.stride);
        check_len(NAME, "src", a.src.buffer, src_len)?;
        check_len(NAME, "index", a.index, a.rows as u64)?;
        let dst_len = span(a.dst.offset, a.rows, a.cols, a.dst.stride);
        check_len(NAME, "dst", a.dst.buffer, dst_len)?;
        let params = Params {
            rows: a.rows,
            cols: a.cols,
            s_off: a.src.offset,
            lds: a.src.stride,
            d_off: a.dst.offset,
            ldd: a.dst.stride,
            src_rows: a.src_rows,
            flags: u32::from(a.accumulate),
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, a.src.buffer, a.index, a.dst.buffer]);
        Ok(self
            .pipeline
            .dispatch(0, group, grid_1d(a.rows as u64 * a.cols as u64, WG)))
    }
}
