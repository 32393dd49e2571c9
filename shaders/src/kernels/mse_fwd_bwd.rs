//! Squared error and its gradient, per row (`mse_fwd_bwd.wgsl`): the reconstruction loss
//! of SPEC §8's masked-token modelling.

use crate::kernel::{check_len, ensure, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "mse_fwd_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("mse_fwd_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// `[rows, cols]` predictions.
    pub const PRED: u32 = 1;
    /// `[rows, cols]` targets.
    pub const TARGET: u32 = 2;
    /// `[rows, cols]` `scale·(pred − target)`, written.
    pub const GRAD: u32 = 3;
    /// `[rows]` `Σ (pred − target)²` per row, written.
    pub const ROW_SQ: u32 = 4;
}

const WG: u32 = 64;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// Buffers of one squared-error evaluation.
#[derive(Clone, Copy, Debug)]
pub struct MseArgs<'a> {
    pub rows: u32,
    pub cols: u32,
    /// Factor of the gradient (`2/(rows·cols)` for the mean's).
    pub scale: f32,
    pub pred: &'a wgpu::Buffer,
    pub target: &'a wgpu::Buffer,
    pub grad: &'a wgpu::Buffer,
    pub row_sq: &'a wgpu::Buffer,
}

/// The squared-error kernel.
#[derive(Debug)]
pub struct MseFwdBwd {
    pipeline: KernelPipeline,
}

impl MseFwdBwd {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(MseFwdBwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one evaluation.
    pub fn bind(&self, ctx: &GpuContext, a: &MseArgs<'_>) -> Result<Dispatch, GpuError> {
        let len = a.rows as u64 * a.cols as u64;
        ensure(NAME, len <= u32::MAX as u64, || {
            format!("{} × {} values do not fit u32 indices", a.rows, a.cols)
        })?;
        ensure(NAME, a.scale.is_finite(), || {
            format!("gradient scale {} is not finite", a.scale)
        })?;
        ensure(NAME, a.grad != a.row_sq, || {
            "grad and row_sq are the same buffer".into()
        })?;
        for written in [a.grad, a.row_sq] {
            ensure(NAME, written != a.pred && written != a.target, || {
                "a written buffer is bound as pred or target too".into()
            })?;
        }
        check_len(NAME, "pred", a.pred, len)?;
        check_len(NAME, "target", a.target, len)?;
        check_len(NAME, "grad", a.grad, len)?;
        check_len(NAME, "row_sq", a.row_sq, a.rows as u64)?;
        let params = Params {
            rows: a.rows,
            cols: a.cols,
            scale: a.scale,
            _pad: 0,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, a.pred, a.target, a.grad, a.row_sq]);
        Ok(self.pipeline.dispatch(0, group, grid_1d(a.rows as u64, WG)))
    }
}
