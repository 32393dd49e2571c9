//! LayerNorm backward: input gradient and scale/shift gradients (`layer_norm_bwd.wgsl`).

use crate::kernel::{check_len, ensure, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "layer_norm_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("layer_norm_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// `[rows, width]` forward input.
    pub const X: u32 = 1;
    /// Buffer holding the scale at `w_off`.
    pub const WB: u32 = 2;
    /// `[rows, 2]` saved mean, rstd.
    pub const STATS: u32 = 3;
    /// `[rows, width]` output gradient.
    pub const DY: u32 = 4;
    /// `[rows, width]` input gradient (written or accumulated).
    pub const DX: u32 = 5;
    /// Gradient buffer receiving the scale gradient at `dw_off`, the shift's at `db_off`.
    pub const GRADS: u32 = 6;
}

const WG: u32 = 64;
const FLAG_ACCUMULATE: u32 = 1;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub width: u32,
    pub w_off: u32,
    pub dw_off: u32,
    pub db_off: u32,
    pub flags: u32,
    pub _pad: [u32; 2],
}

/// Where the scale and shift gradients go.
#[derive(Clone, Copy, Debug)]
pub struct ParamGrads<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub dw_off: u32,
    pub db_off: u32,
}

/// Buffers of one LayerNorm backward.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBwdArgs<'a> {
    pub rows: u32,
    pub width: u32,
    pub x: &'a wgpu::Buffer,
    pub wb: &'a wgpu::Buffer,
    pub w_off: u32,
    pub stats: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    /// Add to `dx` (a residual branch) instead of overwriting it.
    pub accumulate: bool,
    /// `None` for a frozen LayerNorm: only `dx` is computed.
    pub grads: Option<ParamGrads<'a>>,
}

/// The LayerNorm backward kernel.
#[derive(Debug)]
pub struct LayerNormBwd {
    pipeline: KernelPipeline,
}

impl LayerNormBwd {
    /// Builds the pipelines (entry points `dx_main`, `dparams_main`).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(LayerNormBwd {
            pipeline: KernelPipeline::build(
                ctx,
                NAME,
                SOURCE,
                &slots,
                &["dx_main", "dparams_main"],
            )?,
        })
    }

    /// Checks sizes and binds the input-gradient dispatch, then (when `grads` is given)
    /// the parameter-gradient dispatch.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        a: &LayerNormBwdArgs<'_>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        ensure(NAME, a.width > 0, || "zero width".into())?;
        let len = a.rows as u64 * a.width as u64;
        check_len(NAME, "x", a.x, len)?;
        check_len(NAME, "dy", a.dy, len)?;
        check_len(NAME, "dx", a.dx, len)?;
        check_len(NAME, "stats", a.stats, 2 * a.rows as u64)?;
        check_len(NAME, "w", a.wb, a.w_off as u64 + a.width as u64)?;
        let scratch;
        let (grads, dw_off, db_off) = match &a.grads {
            Some(g) => {
                check_len(NAME, "dw", g.buffer, g.dw_off as u64 + a.width as u64)?;
                check_len(NAME, "db", g.buffer, g.db_off as u64 + a.width as u64)?;
                (g.buffer, g.dw_off, g.db_off)
            }
            None => {
                scratch = ctx.storage_zeroed("layer_norm_bwd unused grads", 1);
                (&scratch, 0, 0)
            }
        };
        let params = Params {
            rows: a.rows,
            width: a.width,
            w_off: a.w_off,
            dw_off,
            db_off,
            flags: if a.accumulate { FLAG_ACCUMULATE } else { 0 },
            _pad: [0; 2],
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, a.x, a.wb, a.stats, a.dy, a.dx, grads]);
        let mut out = vec![self
            .pipeline
            .dispatch(0, group.clone(), grid_1d(a.rows as u64, WG))];
        if a.grads.is_some() {
            out.push(
                self.pipeline
                    .dispatch(1, group, [a.width.div_ceil(WG), 1, 1]),
            );
        }
        Ok(out)
    }
}
