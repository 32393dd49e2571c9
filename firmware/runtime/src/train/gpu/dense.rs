//! The dense block on the GPU: every token of every image through the tuned block, forward
//! and backward, as the CPU's [`crate::block::dense_forward`] and
//! [`crate::block::dense_backward`] compute it (same layouts: `R = B·N` token rows, fused
//! `qkv` `[R, 3D]`, probabilities `[B, H, N, N]`).
//!
//! [`DensePlan`] records the dispatches for one batch size over flat parameter and gradient
//! buffers in the backend's [`ParamLayout`]; [`GpuDense`] owns such buffers and reads the
//! results back, for tests and for callers without a training backend.

use std::sync::Arc;

use anytime_shaders::kernels::dense_attention_bwd::DenseAttentionBwdArgs;
use anytime_shaders::kernels::dense_attention_fwd::{
    DenseAttentionFwdArgs, DenseAttentionShape, QkvOperand,
};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError, Kernels};

use super::layers::{
    dense, score_scale, u32_of, BlockLayers, ColSumSpec, Dest, MlpActivations, MlpGradients,
    NormRows, Recorder,
};
use super::layout::ParamLayout;
use crate::block::{BlockDims, BlockParams};
use crate::train::TrainError;

/// Every buffer of a dense plan, named as in the block's math (`d…` are gradients); all
/// hold `R = B·N` rows.
#[derive(Debug)]
pub(crate) struct DenseBuffers {
    /// Input tokens `[R, D]`, written before each call.
    pub tokens: wgpu::Buffer,
    /// Block output `[R, D]`.
    pub out: wgpu::Buffer,
    /// Gradient of the block output `[R, D]`, written before a backward.
    pub d_out: wgpu::Buffer,
    /// Gradient of the input tokens `[R, D]`.
    pub d_tokens: wgpu::Buffer,
    h1: wgpu::Buffer,
    stats1: wgpu::Buffer,
    qkv: wgpu::Buffer,
    probs: wgpu::Buffer,
    attn: wgpu::Buffer,
    x2: wgpu::Buffer,
    stats2: wgpu::Buffer,
    h2: wgpu::Buffer,
    fc: wgpu::Buffer,
    act: wgpu::Buffer,
    dact: wgpu::Buffer,
    dfc: wgpu::Buffer,
    dh2: wgpu::Buffer,
    dx2: wgpu::Buffer,
    dattn: wgpu::Buffer,
    dscores: wgpu::Buffer,
    dqkv: wgpu::Buffer,
    dh1: wgpu::Buffer,
}

impl DenseBuffers {
    /// Zeroed buffers for `batch` images.
    fn new(ctx: &GpuContext, dims: &BlockDims, batch: usize) -> Self {
        let (rows, width, mlp) = (batch * dims.tokens, dims.width, dims.mlp);
        let probs = batch * dims.heads * dims.tokens * dims.tokens;
        let zeroed = |label: &str, len: usize| ctx.storage_zeroed(label, len);
        DenseBuffers {
            tokens: zeroed("dense tokens", rows * width),
            out: zeroed("dense out", rows * width),
            d_out: zeroed("dense d out", rows * width),
            d_tokens: zeroed("dense d tokens", rows * width),
            h1: zeroed("dense h1", rows * width),
            stats1: zeroed("dense ln1 stats", 2 * rows),
            qkv: zeroed("dense qkv", rows * 3 * width),
            probs: zeroed("dense probs", probs),
            attn: zeroed("dense attn", rows * width),
            x2: zeroed("dense x2", rows * width),
            stats2: zeroed("dense ln2 stats", 2 * rows),
            h2: zeroed("dense h2", rows * width),
            fc: zeroed("dense fc", rows * mlp),
            act: zeroed("dense act", rows * mlp),
            dact: zeroed("dense d act", rows * mlp),
            dfc: zeroed("dense d fc", rows * mlp),
            dh2: zeroed("dense d h2", rows * width),
            dx2: zeroed("dense d x2", rows * width),
            dattn: zeroed("dense d attn", rows * width),
            dscores: zeroed("dense d scores", probs),
            dqkv: zeroed("dense d qkv", rows * 3 * width),
            dh1: zeroed("dense d h1", rows * width),
        }
    }

    /// Bytes of all the buffers.
    fn bytes(&self) -> u64 {
        [
            &self.tokens,
            &self.out,
            &self.d_out,
            &self.d_tokens,
            &self.h1,
            &self.stats1,
            &self.qkv,
            &self.probs,
            &self.attn,
            &self.x2,
            &self.stats2,
            &self.h2,
            &self.fc,
            &self.act,
            &self.dact,
            &self.dfc,
            &self.dh2,
            &self.dx2,
            &self.dattn,
            &self.dscores,
            &self.dqkv,
            &self.dh1,
        ]
        .into_iter()
        .map(wgpu::Buffer::size)
        .sum()
    }

    /// LN1 normalises the input tokens, `rows` of them.
    fn ln1_rows(&self, rows: usize) -> NormRows<'_> {
        NormRows {
            rows,
            input: &self.tokens,
            stats: &self.stats1,
        }
    }

    /// The MLP branch from `x2` to the block output.
    fn mlp_activations(&self) -> MlpActivations<'_> {
        MlpActivations {
            x: &self.x2,
            stats: &self.stats2,
            h: &self.h2,
            fc: &self.fc,
            act: &self.act,
            y: &self.out,
        }
    }

    /// The MLP branch's backward from `d out` to `d x2`.
    fn mlp_gradients(&self) -> MlpGradients<'_> {
        MlpGradients {
            dy: &self.d_out,
            dact: &self.dact,
            dfc: &self.dfc,
            dh: &self.dh2,
            dx: &self.dx2,
        }
    }
}

/// The dense block's dispatches for one batch size, bound once.
#[derive(Debug)]
pub(crate) struct DensePlan {
    pub batch: usize,
    pub buffers: DenseBuffers,
    /// From `tokens` to `out`, saving the activations.
    pub forward: Vec<Dispatch>,
    /// From `d_out` (after `forward`) to every block tensor's gradient in the gradient
    /// buffer (overwritten) and `d_tokens`.
    pub backward: Vec<Dispatch>,
    /// Bytes of the plan's buffers.
    pub bytes: u64,
}

impl DensePlan {
    /// Allocates the activations of `batch` images and binds every dispatch over the
    /// block tensors of `block`'s parameter and gradient buffers.
    pub(crate) fn new(block: &BlockBuffers<'_>, batch: usize) -> Result<Self, GpuError> {
        let (ctx, dims) = (block.ctx, block.dims);
        let buffers = DenseBuffers::new(ctx, dims, batch);
        let mut rec = Recorder {
            ctx,
            kernels: block.kernels,
            params: block.params,
            grads: block.grads,
            width: dims.width,
            rows: batch * dims.tokens,
            dispatches: Vec::new(),
        };
        let layers = DenseBlock {
            dims: *dims,
            layers: BlockLayers::new(dims, block.layout, block.params),
            batch,
        };
        layers.forward(&mut rec, &buffers)?;
        let forward = rec.take();
        layers.backward(&mut rec, &buffers)?;
        let backward = rec.take();
        let bytes = buffers.bytes();
        Ok(DensePlan {
            batch,
            buffers,
            forward,
            backward,
            bytes,
        })
    }
}

/// A tuned block on the GPU: the context and kernels, and the flat parameter and gradient
/// buffers (block tensors in `layout`) that plans bind. [`GpuDense`] lends its own; the
/// training backend lends those its optimiser updates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockBuffers<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    pub dims: &'a BlockDims,
    pub layout: &'a ParamLayout,
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
}

/// Refuses an empty batch and batches whose buffers would not fit the kernels' u32
/// indices.
pub(crate) fn check_batch_size(dims: &BlockDims, batch: usize) -> Result<(), TrainError> {
    if batch == 0 {
        return Err(TrainError::Shape {
            what: "batch size",
            expected: 1,
            found: 0,
        });
    }
    let d = dims;
    let per_image = (d.tokens * 3 * d.width.max(d.mlp)).max(d.heads * d.tokens * d.tokens);
    let most = u32::MAX as usize / per_image;
    if batch > most {
        return Err(TrainError::Shape {
            what: "batch size (at most)",
            expected: most,
            found: batch,
        });
    }
    Ok(())
}

/// The tuned block's layers applied to every token row.
#[derive(Debug)]
struct DenseBlock<'a> {
    dims: BlockDims,
    layers: BlockLayers<'a>,
    batch: usize,
}

impl DenseBlock<'_> {
    fn attention_shape(&self) -> DenseAttentionShape {
        DenseAttentionShape {
            batch: u32_of(self.batch),
            heads: u32_of(self.dims.heads),
            tokens: u32_of(self.dims.tokens),
            head_dim: u32_of(self.dims.head_dim()),
        }
    }

    /// Records the forward from `tokens` to `out`.
    fn forward(&self, rec: &mut Recorder<'_>, b: &DenseBuffers) -> Result<(), GpuError> {
        let width = self.dims.width;
        // h1 = LN1(tokens); qkv = h1·W_inᵀ + b_in.
        self.layers.ln1.forward(rec, &b.ln1_rows(rec.rows), &b.h1)?;
        let (h1, qkv) = (dense(&b.h1, width), dense(&b.qkv, 3 * width));
        self.layers.in_proj.forward(rec, h1, Dest::write(qkv))?;
        // attn = softmax(s·Q Kᵀ) V per image and head.
        let attention = rec.kernels.dense_attention_fwd.bind(
            rec.ctx,
            &self.attention_shape(),
            &DenseAttentionFwdArgs {
                qkv: QkvOperand::fused(&b.qkv, u32_of(width)),
                scale: score_scale(&self.dims),
                probs: &b.probs,
                out: dense(&b.attn, width),
            },
        )?;
        rec.record(attention);
        // x2 = tokens + attn·W_oᵀ + b_o; out = x2 + MLP(LN2(x2)).
        let (attn, x2) = (dense(&b.attn, width), dense(&b.x2, width));
        rec.copy_rows(dense(&b.tokens, width), Dest::write(x2))?;
        self.layers.out_proj.forward(rec, attn, Dest::add(x2))?;
        self.layers.mlp.forward(rec, &b.mlp_activations())
    }

    /// Records the backward from `d_out` to the gradient buffer and `d_tokens`.
    fn backward(&self, rec: &mut Recorder<'_>, b: &DenseBuffers) -> Result<(), GpuError> {
        let width = self.dims.width;
        // d x2 = d out (residual) + the MLP branch's backward.
        self.layers
            .mlp
            .backward(rec, &b.mlp_activations(), &b.mlp_gradients())?;
        let (attn, dattn, dx2) = (
            dense(&b.attn, width),
            dense(&b.dattn, width),
            dense(&b.dx2, width),
        );
        self.layers
            .out_proj
            .backward(rec, attn, dx2, Dest::write(dattn))?;
        // d qkv from d attn through the attention.
        let attention = rec.kernels.dense_attention_bwd.bind(
            rec.ctx,
            &self.attention_shape(),
            &DenseAttentionBwdArgs {
                qkv: QkvOperand::fused(&b.qkv, u32_of(width)),
                scale: score_scale(&self.dims),
                probs: &b.probs,
                d_out: dattn,
                dscores: &b.dscores,
                dqkv: QkvOperand::fused(&b.dqkv, u32_of(width)),
            },
        )?;
        rec.record(attention);
        // in_proj, then d tokens = LN1 backward + d x2 (residual).
        let (h1, dh1) = (dense(&b.h1, width), dense(&b.dh1, width));
        let dqkv = dense(&b.dqkv, 3 * width);
        self.layers
            .in_proj
            .backward(rec, h1, dqkv, Dest::write(dh1))?;
        // The key bias cancels in each query's softmax: its gradient is exactly zero, as
        // on the CPU (a sum over zero rows writes zeros over the column sums' round-off).
        rec.colsum(ColSumSpec {
            rows: 0,
            cols: width,
            src: &b.dqkv,
            grad_offset: self.layers.in_proj.slice(width, width).bias,
        })?;
        self.layers
            .ln1
            .backward(rec, &b.ln1_rows(rec.rows), &b.dh1, Dest::write(&b.d_tokens))?;
        rec.copy_rows(dx2, Dest::add(dense(&b.d_tokens, width)))
    }
}

/// The dense block on a GPU adapter, with its own parameter and gradient buffers: the
/// output tokens of a batch, and the gradients of `Σ d_out·out`.
#[derive(Debug)]
pub struct GpuDense {
    pub(super) dims: BlockDims,
    pub(super) ctx: Arc<GpuContext>,
    pub(super) kernels: Kernels,
    pub(super) layout: ParamLayout,
    /// Flat block tensors (and an unused `b`), in `layout`.
    pub(super) params: wgpu::Buffer,
    /// Their gradients, same layout.
    pub(super) grads: wgpu::Buffer,
    plan: Option<DensePlan>,
}

impl GpuDense {
    /// On a new [`GpuContext`] (any adapter, software ones included);
    /// [`TrainError::NoAdapter`] when there is none.
    pub fn new(dims: BlockDims) -> Result<Self, TrainError> {
        Self::with_context(Arc::new(GpuContext::new()?), dims)
    }

    /// On an existing context; [`TrainError::StateDims`] for unusable dims.
    pub fn with_context(ctx: Arc<GpuContext>, dims: BlockDims) -> Result<Self, TrainError> {
        if !dims.is_valid() {
            return Err(TrainError::StateDims(dims));
        }
        let layout = ParamLayout::new(&dims).ok_or(TrainError::StateDims(dims))?;
        let kernels = Kernels::new(&ctx)?;
        Ok(GpuDense {
            params: ctx.storage_zeroed("dense params", layout.len()),
            grads: ctx.storage_zeroed("dense grads", layout.len()),
            plan: None,
            dims,
            ctx,
            kernels,
            layout,
        })
    }

    /// The adapter in use, e.g. `llvmpipe (Vulkan, Cpu)`.
    pub fn adapter(&self) -> String {
        self.ctx.describe()
    }

    /// Bytes held in GPU buffers: parameters, gradients and the plan of the last batch
    /// size.
    pub fn memory_bytes(&self) -> u64 {
        self.params.size() + self.grads.size() + self.plan.as_ref().map_or(0, |p| p.bytes)
    }

    /// The block output `[B, N, D]` of `batch` token sets `tokens` (`[B, N, D]`) under
    /// `params`.
    pub fn forward(
        &mut self,
        params: &BlockParams,
        tokens: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>, TrainError> {
        self.prepare(params, tokens, batch)?;
        let plan = self.plan.as_ref().expect("prepared");
        self.ctx.run("dense forward", &plan.forward);
        Ok(self.ctx.read_f32(&plan.buffers.out, tokens.len())?)
    }

    /// The gradients of `Σ d_out·out` (`d_out`: `[B, N, D]`, the block output's gradient)
    /// by every block tensor and by the input tokens (`[B, N, D]`), forward included.
    pub fn backward(
        &mut self,
        params: &BlockParams,
        tokens: &[f32],
        batch: usize,
        d_out: &[f32],
    ) -> Result<(BlockParams, Vec<f32>), TrainError> {
        if d_out.len() != tokens.len() {
            return Err(TrainError::Shape {
                what: "d_out (B·N·D)",
                expected: tokens.len(),
                found: d_out.len(),
            });
        }
        self.prepare(params, tokens, batch)?;
        let plan = self.plan.as_ref().expect("prepared");
        self.ctx.write_f32(&plan.buffers.d_out, 0, d_out);
        self.ctx.run(
            "dense forward and backward",
            &[&plan.forward[..], &plan.backward[..]].concat(),
        );
        let grads = self.read_grads()?;
        let d_tokens = self.ctx.read_f32(&plan.buffers.d_tokens, tokens.len())?;
        Ok((grads, d_tokens))
    }

    /// Checks the inputs, builds the plan for `batch` (first use of a batch size) and
    /// uploads `params` and `tokens`.
    fn prepare(
        &mut self,
        params: &BlockParams,
        tokens: &[f32],
        batch: usize,
    ) -> Result<(), TrainError> {
        self.check_inputs(params, tokens, batch)?;
        if self.plan.as_ref().is_none_or(|p| p.batch != batch) {
            self.plan = None;
            self.plan = Some(self.new_plan(batch)?);
        }
        let plan = self.plan.as_ref().expect("plan was just built");
        self.upload_params(params);
        self.ctx.write_f32(&plan.buffers.tokens, 0, tokens);
        Ok(())
    }

    /// Refuses parameters of other dims, an empty batch, tokens that are not `[B, N, D]`
    /// and batches whose buffers would not fit the kernels' u32 indices.
    pub(super) fn check_inputs(
        &self,
        params: &BlockParams,
        tokens: &[f32],
        batch: usize,
    ) -> Result<(), TrainError> {
        if !params.matches(&self.dims) {
            return Err(TrainError::StateDims(self.dims));
        }
        check_batch_size(&self.dims, batch)?;
        let d = &self.dims;
        let expected = batch * d.tokens_len();
        if tokens.len() != expected {
            return Err(TrainError::Shape {
                what: "tokens (B·N·D)",
                expected,
                found: tokens.len(),
            });
        }
        Ok(())
    }

    /// This block's context, kernels and buffers.
    pub(super) fn block(&self) -> BlockBuffers<'_> {
        BlockBuffers {
            ctx: &self.ctx,
            kernels: &self.kernels,
            dims: &self.dims,
            layout: &self.layout,
            params: &self.params,
            grads: &self.grads,
        }
    }

    /// A new dense plan for `batch` images over this block's buffers.
    pub(super) fn new_plan(&self, batch: usize) -> Result<DensePlan, GpuError> {
        log::debug!("wgpu: dense plan for B = {batch}");
        DensePlan::new(&self.block(), batch)
    }

    /// Writes `params` into the parameter buffer (staged until the next submit).
    pub(super) fn upload_params(&self, params: &BlockParams) {
        self.ctx
            .write_f32(&self.params, 0, &self.layout.flatten(params, 0.0));
    }

    /// Reads the block tensors' gradients back.
    pub(super) fn read_grads(&self) -> Result<BlockParams, TrainError> {
        let flat = self.ctx.read_f32(&self.grads, self.layout.len())?;
        Ok(self.layout.unflatten(&self.dims, &flat).0)
    }
}
