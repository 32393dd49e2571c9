//! Backward of the dense multi-head attention (`dense_attention_bwd.wgsl`): the score
//! gradients per query row, then the query, key and value gradients.

use super::dense_attention_fwd::{check_distinct, check_rows, DenseAttentionShape, QkvOperand};
use super::matmul::Operand;
use crate::kernel::{check_len, ensure, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "dense_attention_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("dense_attention_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// The forward's queries, keys and values.
    pub const QKV: u32 = 1;
    /// The forward's probabilities.
    pub const PROBS: u32 = 2;
    /// Gradient of the forward's output rows.
    pub const D_OUT: u32 = 3;
    /// `[batch, heads, tokens, tokens]` score gradients (scratch, written by the first
    /// dispatch).
    pub const DSCORES: u32 = 4;
    /// Query, key and value gradients (written).
    pub const DQKV: u32 = 5;
}

const WG_ROWS: u32 = 64;
const WG_GRADS: u32 = 256;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub n: u32,
    pub dh: u32,
    pub q_off: u32,
    pub k_off: u32,
    pub v_off: u32,
    pub ld: u32,
    pub do_off: u32,
    pub ld_do: u32,
    pub dq_off: u32,
    pub dk_off: u32,
    pub dv_off: u32,
    pub ld_d: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// Buffers of one dense attention backward.
#[derive(Clone, Copy, Debug)]
pub struct DenseAttentionBwdArgs<'a> {
    /// The forward's queries, keys and values, and its score scale.
    pub qkv: QkvOperand<'a>,
    pub scale: f32,
    /// The forward's probabilities.
    pub probs: &'a wgpu::Buffer,
    /// Gradient of the forward's output rows.
    pub d_out: Operand<'a>,
    /// `[batch, heads, tokens, tokens]` scratch.
    pub dscores: &'a wgpu::Buffer,
    /// Query, key and value gradients, overwritten (blocks that must not overlap).
    pub dqkv: QkvOperand<'a>,
}

/// The dense attention backward kernel.
#[derive(Debug)]
pub struct DenseAttentionBwd {
    pipeline: KernelPipeline,
}

impl DenseAttentionBwd {
    /// Builds the pipelines (entry points `ds_main`, `dqkv_main`).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(DenseAttentionBwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["ds_main", "dqkv_main"])?,
        })
    }

    /// Checks sizes and binds the two dispatches (record them in this order).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        shape: &DenseAttentionShape,
        a: &DenseAttentionBwdArgs<'_>,
    ) -> Result<[Dispatch; 2], GpuError> {
        shape.validate(NAME)?;
        ensure(NAME, a.scale.is_finite(), || {
            format!("score scale {} is not finite", a.scale)
        })?;
        a.qkv.check(NAME, "qkv", shape, false)?;
        check_len(NAME, "probs", a.probs, shape.probs_len())?;
        check_rows(NAME, "d_out", shape, &a.d_out)?;
        check_len(NAME, "dscores", a.dscores, shape.probs_len())?;
        a.dqkv.check(NAME, "dqkv", shape, true)?;
        // Written buffers apart from every other; read-only ones may be shared.
        for (name, written) in [("dscores", a.dscores), ("dqkv", a.dqkv.buffer)] {
            check_distinct(
                NAME,
                &[
                    (name, written),
                    ("qkv", a.qkv.buffer),
                    ("probs", a.probs),
                    ("d_out", a.d_out.buffer),
                ],
            )?;
        }
        check_distinct(NAME, &[("dscores", a.dscores), ("dqkv", a.dqkv.buffer)])?;
        let params = Params {
            batch: shape.batch,
            heads: shape.heads,
            n: shape.tokens,
            dh: shape.head_dim,
            q_off: a.qkv.q,
            k_off: a.qkv.k,
            v_off: a.qkv.v,
            ld: a.qkv.stride,
            do_off: a.d_out.offset,
            ld_do: a.d_out.stride,
            dq_off: a.dqkv.q,
            dk_off: a.dqkv.k,
            dv_off: a.dqkv.v,
            ld_d: a.dqkv.stride,
            scale: a.scale,
            _pad: 0,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self.pipeline.bind_group(
            ctx,
            &[
                &uniform,
                a.qkv.buffer,
                a.probs,
                a.d_out.buffer,
                a.dscores,
                a.dqkv.buffer,
            ],
        );
        let grads = 3 * shape.rows() * shape.width() as u64;
        Ok([
            self.pipeline
                .dispatch(0, group.clone(), grid_1d(shape.query_rows(), WG_ROWS)),
            self.pipeline.dispatch(1, group, grid_1d(grads, WG_GRADS)),
        ])
    }
}
