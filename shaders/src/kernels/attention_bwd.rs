//! Backward of the folded attention (`attention_bwd.wgsl`): score gradients and the
//! folded-query gradient per (batch item, head), then the token gradient.

use super::attention_fwd::AttentionShape;
use crate::kernel::{check_len, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "attention_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("attention_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    pub const QT: u32 = 1;
    pub const H1: u32 = 2;
    pub const PROBS: u32 = 3;
    /// Gradient of `av`.
    pub const DAV: u32 = 4;
    /// `[batch, heads, n_k]` score gradients (scratch, written by the first dispatch).
    pub const DSCORES: u32 = 5;
    /// Gradient of `qt`.
    pub const DQT: u32 = 6;
    /// Gradient of `h1` (written or accumulated).
    pub const DH1: u32 = 7;
}

const WG_DH1: u32 = 256;
const FLAG_ACCUMULATE: u32 = 1;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub n_k: u32,
    pub width: u32,
    pub flags: u32,
    pub _pad: [u32; 3],
}

/// Buffers of one attention backward.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBwdArgs<'a> {
    pub qt: &'a wgpu::Buffer,
    pub h1: &'a wgpu::Buffer,
    pub probs: &'a wgpu::Buffer,
    pub dav: &'a wgpu::Buffer,
    pub dscores: &'a wgpu::Buffer,
    pub dqt: &'a wgpu::Buffer,
    pub dh1: &'a wgpu::Buffer,
    /// Add to `dh1` instead of overwriting it.
    pub accumulate: bool,
}

/// The attention backward kernel.
#[derive(Debug)]
pub struct AttentionBwd {
    pipeline: KernelPipeline,
}

impl AttentionBwd {
    /// Builds the pipelines (entry points `ds_main`, `dh1_main`).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(AttentionBwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["ds_main", "dh1_main"])?,
        })
    }

    /// Checks sizes and binds the two dispatches (record them in this order).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        shape: &AttentionShape,
        a: &AttentionBwdArgs<'_>,
    ) -> Result<[Dispatch; 2], GpuError> {
        shape.validate(NAME)?;
        check_len(NAME, "qt", a.qt, shape.q_len())?;
        check_len(NAME, "h1", a.h1, shape.h_len())?;
        check_len(NAME, "probs", a.probs, shape.probs_len())?;
        check_len(NAME, "dav", a.dav, shape.q_len())?;
        check_len(NAME, "dscores", a.dscores, shape.probs_len())?;
        check_len(NAME, "dqt", a.dqt, shape.q_len())?;
        check_len(NAME, "dh1", a.dh1, shape.h_len())?;
        let params = Params {
            batch: shape.batch,
            heads: shape.heads,
            n_k: shape.n_k,
            width: shape.width,
            flags: if a.accumulate { FLAG_ACCUMULATE } else { 0 },
            _pad: [0; 3],
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self.pipeline.bind_group(
            ctx,
            &[
                &uniform, a.qt, a.h1, a.probs, a.dav, a.dscores, a.dqt, a.dh1,
            ],
        );
        Ok([
            self.pipeline.dispatch(0, group.clone(), shape.row_groups()),
            self.pipeline
                .dispatch(1, group, grid_1d(shape.h_len(), WG_DH1)),
        ])
    }
}
