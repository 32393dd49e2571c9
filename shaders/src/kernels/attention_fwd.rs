//! Folded single-query attention forward: scores against the LayerNorm'd tokens, softmax,
//! probability-weighted token sum (`attention_fwd.wgsl`).

use crate::kernel::{check_len, ensure, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "attention_fwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("attention_fwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// `[batch, heads, width]` folded queries `q̃ = s·W_k,hᵀ q_h`.
    pub const QT: u32 = 1;
    /// `[batch·n_k, width]` LayerNorm'd tokens.
    pub const H1: u32 = 2;
    /// `[batch, heads, n_k]` softmax probabilities (saved for backward).
    pub const PROBS: u32 = 3;
    /// `[batch, heads, width]` `a = Σ_j p_j h1_j`.
    pub const AV: u32 = 4;
}

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub heads: u32,
    pub n_k: u32,
    pub width: u32,
}

/// Shapes of one attention (forward and backward use the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: u32,
    pub heads: u32,
    /// Keys (tokens) per batch item.
    pub n_k: u32,
    /// Token width `D`.
    pub width: u32,
}

impl AttentionShape {
    pub(crate) fn validate(&self, kernel: &'static str) -> Result<(), GpuError> {
        ensure(
            kernel,
            self.n_k > 0 && self.width > 0 && self.heads > 0,
            || "no keys, heads or zero width".into(),
        )
    }

    /// Elements of `qt` / `av` (and their gradients).
    pub(crate) fn q_len(&self) -> u64 {
        self.batch as u64 * self.heads as u64 * self.width as u64
    }

    /// Elements of `h1` (and its gradient).
    pub(crate) fn h_len(&self) -> u64 {
        self.batch as u64 * self.n_k as u64 * self.width as u64
    }

    /// Elements of the probabilities (and score gradients).
    pub(crate) fn probs_len(&self) -> u64 {
        self.batch as u64 * self.heads as u64 * self.n_k as u64
    }

    /// One workgroup per (batch item, head).
    pub(crate) fn row_groups(&self) -> [u32; 3] {
        grid_1d(self.batch as u64 * self.heads as u64, 1)
    }
}

/// The attention forward kernel.
#[derive(Debug)]
pub struct AttentionFwd {
    pipeline: KernelPipeline,
}

impl AttentionFwd {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(AttentionFwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one attention forward.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        shape: &AttentionShape,
        qt: &wgpu::Buffer,
        h1: &wgpu::Buffer,
        probs: &wgpu::Buffer,
        av: &wgpu::Buffer,
    ) -> Result<Dispatch, GpuError> {
        shape.validate(NAME)?;
        check_len(NAME, "qt", qt, shape.q_len())?;
        check_len(NAME, "h1", h1, shape.h_len())?;
        check_len(NAME, "probs", probs, shape.probs_len())?;
        check_len(NAME, "av", av, shape.q_len())?;
        let params = Params {
            batch: shape.batch,
            heads: shape.heads,
            n_k: shape.n_k,
            width: shape.width,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, qt, h1, probs, av]);
        Ok(self.pipeline.dispatch(0, group, shape.row_groups()))
    }
}
