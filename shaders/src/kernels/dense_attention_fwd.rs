//! Dense multi-head attention forward: per image and head, every query over the image's
//! keys, softmax of the scaled scores, probability-weighted values
//! (`dense_attention_fwd.wgsl`).

use super::matmul::Operand;
use crate::kernel::{check_len, ensure, grid_1d, span, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "dense_attention_fwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("dense_attention_fwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// Queries, keys and values of every token row ([`super::QkvOperand`]).
    pub const QKV: u32 = 1;
    /// `[batch, heads, tokens, tokens]` softmax probabilities (saved for backward).
    pub const PROBS: u32 = 2;
    /// `[batch·tokens, heads·head_dim]` output rows, heads concatenated.
    pub const OUT: u32 = 3;
}

const WG_ROWS: u32 = 64;
const WG_OUT: u32 = 256;

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
    pub o_off: u32,
    pub ld_o: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// Shapes of one dense attention (forward and backward use the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseAttentionShape {
    pub batch: u32,
    pub heads: u32,
    /// Tokens per image `N` (queries and keys).
    pub tokens: u32,
    /// Channels per head `dh`.
    pub head_dim: u32,
}

impl DenseAttentionShape {
    /// Fails unless heads, tokens and head width are non-zero and every element count
    /// and index fits a u32.
    pub(crate) fn validate(&self, kernel: &'static str) -> Result<(), GpuError> {
        ensure(
            kernel,
            self.heads > 0 && self.tokens > 0 && self.head_dim > 0,
            || "no heads, no tokens or zero head width".into(),
        )?;
        let largest = self.probs_len().max(3 * self.rows() * self.width() as u64);
        ensure(kernel, largest <= u32::MAX as u64, || {
            format!("{largest} elements do not fit u32 indices")
        })
    }

    /// Token rows `batch·tokens`.
    pub fn rows(&self) -> u64 {
        self.batch as u64 * self.tokens as u64
    }

    /// Row width `heads·head_dim`.
    pub fn width(&self) -> u32 {
        self.heads.saturating_mul(self.head_dim)
    }

    /// Elements of the probabilities (and of the score gradients).
    pub fn probs_len(&self) -> u64 {
        self.batch as u64 * self.heads as u64 * self.tokens as u64 * self.tokens as u64
    }

    /// Query rows over every head, `batch·heads·tokens` (one thread each).
    pub(crate) fn query_rows(&self) -> u64 {
        self.rows() * self.heads as u64
    }
}

/// Queries, keys and values of every token row in one buffer: row `r`, head `h`,
/// channel `c` of the queries at `q + r·stride + h·head_dim + c`, keys at `k`, values
/// at `v` likewise. [`QkvOperand::fused`] is the `[rows, 3·width]` layout of a fused
/// `in_proj`.
#[derive(Clone, Copy, Debug)]
pub struct QkvOperand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub q: u32,
    pub k: u32,
    pub v: u32,
    pub stride: u32,
}

impl<'a> QkvOperand<'a> {
    /// Rows of `3·width` values from the buffer's start: queries, keys, values.
    pub fn fused(buffer: &'a wgpu::Buffer, width: u32) -> Self {
        QkvOperand {
            buffer,
            q: 0,
            k: width,
            v: 2 * width,
            stride: 3 * width,
        }
    }

    /// Checks the row stride and that all three blocks lie inside the buffer; with
    /// `disjoint`, also that the three blocks never share an element (they are written).
    pub(crate) fn check(
        &self,
        kernel: &'static str,
        binding: &'static str,
        shape: &DenseAttentionShape,
        disjoint: bool,
    ) -> Result<(), GpuError> {
        let (rows, width) = (shape.rows(), shape.width());
        ensure(kernel, width <= self.stride || rows <= 1, || {
            format!(
                "{binding}: row stride {} below the width {width}",
                self.stride
            )
        })?;
        let rows = u32::try_from(rows).unwrap_or(u32::MAX);
        for off in [self.q, self.k, self.v] {
            check_len(
                kernel,
                binding,
                self.buffer,
                span(off, rows, width, self.stride),
            )?;
        }
        if disjoint && rows > 0 {
            // Element `off + r·stride + c` (c < width) is `off + c` modulo the stride: the
            // blocks are apart when their column ranges modulo the stride are (one row:
            // when the ranges themselves are).
            let stride = if rows > 1 {
                self.stride as u64
            } else {
                1 << 40
            };
            let width = width as u64;
            let apart = |a: u32, b: u32| {
                let d = (b as u64 + stride - a as u64 % stride) % stride;
                d >= width && stride - d >= width
            };
            let [q, k, v] = [self.q, self.k, self.v];
            ensure(kernel, apart(q, k) && apart(q, v) && apart(k, v), || {
                format!("{binding}: the q, k and v blocks overlap")
            })?;
        }
        Ok(())
    }
}

/// Checks an `[rows, width]` block at an offset and row stride.
pub(crate) fn check_rows(
    kernel: &'static str,
    binding: &'static str,
    shape: &DenseAttentionShape,
    rows: &Operand<'_>,
) -> Result<(), GpuError> {
    let (n, width) = (shape.rows(), shape.width());
    ensure(kernel, width <= rows.stride || n <= 1, || {
        format!(
            "{binding}: row stride {} below the width {width}",
            rows.stride
        )
    })?;
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    check_len(
        kernel,
        binding,
        rows.buffer,
        span(rows.offset, n, width, rows.stride),
    )
}

/// Fails unless the buffers are pairwise distinct (a written buffer bound twice).
pub(crate) fn check_distinct(
    kernel: &'static str,
    buffers: &[(&'static str, &wgpu::Buffer)],
) -> Result<(), GpuError> {
    for (i, (a, x)) in buffers.iter().enumerate() {
        for (b, y) in &buffers[i + 1..] {
            ensure(kernel, x != y, || {
                format!("{a} and {b} are the same buffer")
            })?;
        }
    }
    Ok(())
}

/// Buffers of one dense attention forward.
#[derive(Clone, Copy, Debug)]
pub struct DenseAttentionFwdArgs<'a> {
    pub qkv: QkvOperand<'a>,
    /// Factor of the scores before the softmax (`1/sqrt(head_dim)` in the block).
    pub scale: f32,
    /// `[batch, heads, tokens, tokens]`, written.
    pub probs: &'a wgpu::Buffer,
    /// `[batch·tokens, heads·head_dim]` output rows at an offset and row stride, written.
    pub out: Operand<'a>,
}

/// The dense attention forward kernel.
#[derive(Debug)]
pub struct DenseAttentionFwd {
    pipeline: KernelPipeline,
}

impl DenseAttentionFwd {
    /// Builds the pipelines (entry points `scores_main`, `out_main`).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [Slot::Uniform, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];
        Ok(DenseAttentionFwd {
            pipeline: KernelPipeline::build(
                ctx,
                NAME,
                SOURCE,
                &slots,
                &["scores_main", "out_main"],
            )?,
        })
    }

    /// Checks sizes and binds the two dispatches (record them in this order).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        shape: &DenseAttentionShape,
        a: &DenseAttentionFwdArgs<'_>,
    ) -> Result<[Dispatch; 2], GpuError> {
        shape.validate(NAME)?;
        ensure(NAME, a.scale.is_finite(), || {
            format!("score scale {} is not finite", a.scale)
        })?;
        a.qkv.check(NAME, "qkv", shape, false)?;
        check_len(NAME, "probs", a.probs, shape.probs_len())?;
        check_rows(NAME, "out", shape, &a.out)?;
        check_distinct(
            NAME,
            &[
                ("qkv", a.qkv.buffer),
                ("probs", a.probs),
                ("out", a.out.buffer),
            ],
        )?;
        let params = Params {
            batch: shape.batch,
            heads: shape.heads,
            n: shape.tokens,
            dh: shape.head_dim,
            q_off: a.qkv.q,
            k_off: a.qkv.k,
            v_off: a.qkv.v,
            ld: a.qkv.stride,
            o_off: a.out.offset,
            ld_o: a.out.stride,
            scale: a.scale,
            _pad: 0,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, a.qkv.buffer, a.probs, a.out.buffer]);
        let out_len = shape.rows() * shape.width() as u64;
        Ok([
            self.pipeline
                .dispatch(0, group.clone(), grid_1d(shape.query_rows(), WG_ROWS)),
            self.pipeline.dispatch(1, group, grid_1d(out_len, WG_OUT)),
        ])
    }
}
