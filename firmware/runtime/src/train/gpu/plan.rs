//! The recorded training step for one batch shape: activation buffers sized for `B`
//! samples and `|Y|` labels, and every dispatch of forward, loss, backward and AdamW bound
//! once. A step re-records these dispatches into one command encoder; nothing reads back
//! in between (but in SPEC §7's private step, which reads the embeddings back and skips the
//! loss kernel: the host writes `d emb` and `b`'s gradient in its place).
//!
//! Like the CPU path (see `block::attention`), only the CLS rows reach the embedding, so
//! the query, attention output, MLP and head run on the CLS rows only, and keys and values
//! are never materialised: per head the query is folded through the key projection
//! (`q̃ = s·W_k,hᵀ q_h`, scores `h1_j·q̃`, the key bias cancels in the softmax and gets an
//! exactly zero gradient) and the values through `a = Σ_j p_j h1_j` (`o_h = W_v,h a + b_v,h`).
//! Gradients are exactly those of the full block.

use anytime_shaders::kernels::{
    adamw, attention_bwd::AttentionBwdArgs, attention_fwd::AttentionShape, loss_fwd_bwd,
    matmul::Operand,
};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError, Kernels};

use super::layers::{
    dense, score_scale, strided, u32_of, BlockLayers, ColSumSpec, Dest, FoldedKey, LayerNorm,
    Linear, MatMulSpec, Matrix, MlpActivations, MlpGradients, NormRows, Recorder,
};
use super::layout::ParamLayout;
use crate::block::BlockDims;

/// Buffers that live as long as the backend (weights and optimiser state stay here).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Persistent<'a> {
    /// Flat parameters (block tensors, then `b`).
    pub params: &'a wgpu::Buffer,
    /// Flat gradients, same layout.
    pub grads: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// Frozen head: `ln_post.weight` `[D]`, `ln_post.bias` `[D]`, `proj` `[D, E]`.
    pub head: &'a wgpu::Buffer,
    /// Uniform [`adamw::Step`], rewritten before each step.
    pub step: &'a wgpu::Buffer,
}

/// Loss hyper-parameters the kernels need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LossConfig {
    pub tau: f32,
    pub beta: f32,
}

/// Buffers and recorded dispatches for one `(B, |Y|)`.
#[derive(Debug)]
pub(crate) struct Plan {
    pub batch: usize,
    pub n_labels: usize,
    /// Inputs, activations and backward buffers.
    pub buffers: Buffers,
    /// The block's forward, from `tokens` to `emb` (saving what the backward reads).
    pub forward: Vec<Dispatch>,
    /// The contrastive loss on `emb`: the per-sample stats, `d emb` and `b`'s gradient.
    /// A private step skips it and writes `d emb` and `b`'s gradient from the host.
    pub loss: Vec<Dispatch>,
    /// Backward: every entry of the gradient buffer.
    pub backward: Vec<Dispatch>,
    /// After `backward`, `d tokens` alone (LN1's input gradient and the CLS residual):
    /// only [`crate::train::TrainBackend::gradients`] reads it, a step skips it.
    pub input_backward: Vec<Dispatch>,
    /// AdamW over every tensor and `b`.
    pub update: Vec<Dispatch>,
    /// Bytes of every buffer the plan allocated (inputs, activations, backward buffers).
    pub bytes: u64,
}

impl Plan {
    /// Allocates the activations and binds every dispatch (sizes checked here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &GpuContext,
        kernels: &Kernels,
        dims: &BlockDims,
        layout: &ParamLayout,
        persistent: Persistent<'_>,
        loss: LossConfig,
        batch: usize,
        n_labels: usize,
    ) -> Result<Self, GpuError> {
        let buffers = Buffers::new(ctx, dims, batch, n_labels);
        let block = Block::new(dims, layout, &persistent);
        let loss = LossHead {
            config: loss,
            n_labels,
            embed: dims.embed,
            other_bias: layout.bias,
        };
        let mut rec = Recorder {
            ctx,
            kernels,
            params: persistent.params,
            grads: persistent.grads,
            width: dims.width,
            rows: batch,
            dispatches: Vec::new(),
        };
        block.forward(&mut rec, &buffers)?;
        let forward = rec.take();
        loss.record(&mut rec, &buffers)?;
        let loss = rec.take();
        let ln1_input = block.backward(&mut rec, &buffers)?;
        let backward = rec.take();
        block.input_backward(&mut rec, &buffers, ln1_input)?;
        let input_backward = rec.take();
        let update = adamw_update(ctx, kernels, layout, &persistent, Updated::BlockAndBias)?;
        let bytes = buffers.bytes();
        Ok(Plan {
            batch,
            n_labels,
            buffers,
            forward,
            loss,
            backward,
            input_backward,
            update,
            bytes,
        })
    }
}

/// Every buffer of one plan, named as in the block's math (`d…` are gradients).
/// `tokens`, `h1`, `stats1`, `dh1` and `dtokens` hold all `B·N` token rows; the others
/// are per sample (its CLS row, or per head and key for `probs` and `dscores`).
#[derive(Debug)]
pub(crate) struct Buffers {
    /// Samples `B`.
    batch: usize,
    /// Token rows `B·N`.
    token_rows: usize,
    /// Inputs, written before each call: `[B, N, D]`, `[B]` u32, `[|Y|, E]`.
    pub tokens: wgpu::Buffer,
    pub labels: wgpu::Buffer,
    pub text: wgpu::Buffer,
    /// Per-sample loss stats first (see [`loss_fwd_bwd::STATS_PER_SAMPLE`]).
    pub scratch: wgpu::Buffer,
    /// `d loss / d tokens`, `[B, N, D]`.
    pub dtokens: wgpu::Buffer,
    h1: wgpu::Buffer,
    stats1: wgpu::Buffer,
    q: wgpu::Buffer,
    qt: wgpu::Buffer,
    probs: wgpu::Buffer,
    av: wgpu::Buffer,
    attn: wgpu::Buffer,
    x1: wgpu::Buffer,
    h2: wgpu::Buffer,
    stats2: wgpu::Buffer,
    fc: wgpu::Buffer,
    act: wgpu::Buffer,
    x2: wgpu::Buffer,
    hp: wgpu::Buffer,
    statsp: wgpu::Buffer,
    /// The unnormalised embeddings of the last forward, `[B, E]`.
    pub emb: wgpu::Buffer,
    /// `d loss / d emb`, `[B, E]`: written by the loss kernel (or by the host), read by
    /// the backward.
    pub demb: wgpu::Buffer,
    dhp: wgpu::Buffer,
    dx2: wgpu::Buffer,
    dact: wgpu::Buffer,
    dfc: wgpu::Buffer,
    dh2: wgpu::Buffer,
    dx1: wgpu::Buffer,
    dattn: wgpu::Buffer,
    dav: wgpu::Buffer,
    dscores: wgpu::Buffer,
    dqt: wgpu::Buffer,
    dq: wgpu::Buffer,
    dh1: wgpu::Buffer,
}

impl Buffers {
    /// Zeroed buffers for `batch` samples and `n_labels` labels.
    fn new(ctx: &GpuContext, dims: &BlockDims, batch: usize, n_labels: usize) -> Self {
        let (width, mlp, embed, heads) = (dims.width, dims.mlp, dims.embed, dims.heads);
        let token_rows = batch * dims.tokens;
        let zeroed = |label: &str, len: usize| ctx.storage_zeroed(label, len);
        Buffers {
            batch,
            token_rows,
            tokens: zeroed("tokens", token_rows * width),
            labels: zeroed("labels", batch),
            text: zeroed("text", n_labels * embed),
            scratch: zeroed("loss scratch", loss_fwd_bwd::scratch_len(batch, n_labels)),
            dtokens: zeroed("d tokens", token_rows * width),
            h1: zeroed("h1", token_rows * width),
            stats1: zeroed("ln1 stats", 2 * token_rows),
            q: zeroed("q", batch * width),
            qt: zeroed("q folded", batch * heads * width),
            probs: zeroed("probs", batch * heads * dims.tokens),
            av: zeroed("a", batch * heads * width),
            attn: zeroed("attn", batch * width),
            x1: zeroed("x1", batch * width),
            h2: zeroed("h2", batch * width),
            stats2: zeroed("ln2 stats", 2 * batch),
            fc: zeroed("fc", batch * mlp),
            act: zeroed("act", batch * mlp),
            x2: zeroed("x2", batch * width),
            hp: zeroed("hp", batch * width),
            statsp: zeroed("ln_post stats", 2 * batch),
            emb: zeroed("emb", batch * embed),
            demb: zeroed("d emb", batch * embed),
            dhp: zeroed("d hp", batch * width),
            dx2: zeroed("d x2", batch * width),
            dact: zeroed("d act", batch * mlp),
            dfc: zeroed("d fc", batch * mlp),
            dh2: zeroed("d h2", batch * width),
            dx1: zeroed("d x1", batch * width),
            dattn: zeroed("d attn", batch * width),
            dav: zeroed("d a", batch * heads * width),
            dscores: zeroed("d scores", batch * heads * dims.tokens),
            dqt: zeroed("d q folded", batch * heads * width),
            dq: zeroed("d q", batch * width),
            dh1: zeroed("d h1", token_rows * width),
        }
    }

    /// Bytes of all the buffers.
    fn bytes(&self) -> u64 {
        [
            &self.tokens,
            &self.labels,
            &self.text,
            &self.scratch,
            &self.dtokens,
            &self.h1,
            &self.stats1,
            &self.q,
            &self.qt,
            &self.probs,
            &self.av,
            &self.attn,
            &self.x1,
            &self.h2,
            &self.stats2,
            &self.fc,
            &self.act,
            &self.x2,
            &self.hp,
            &self.statsp,
            &self.emb,
            &self.demb,
            &self.dhp,
            &self.dx2,
            &self.dact,
            &self.dfc,
            &self.dh2,
            &self.dx1,
            &self.dattn,
            &self.dav,
            &self.dscores,
            &self.dqt,
            &self.dq,
            &self.dh1,
        ]
        .into_iter()
        .map(wgpu::Buffer::size)
        .sum()
    }

    /// LN1 normalises every token row.
    fn ln1_rows(&self) -> NormRows<'_> {
        NormRows {
            rows: self.token_rows,
            input: &self.tokens,
            stats: &self.stats1,
        }
    }

    /// The MLP branch from `x1` to `x2` (CLS rows).
    fn mlp_activations(&self) -> MlpActivations<'_> {
        MlpActivations {
            x: &self.x1,
            stats: &self.stats2,
            h: &self.h2,
            fc: &self.fc,
            act: &self.act,
            y: &self.x2,
        }
    }

    /// The MLP branch's backward from `d x2` to `d x1`.
    fn mlp_gradients(&self) -> MlpGradients<'_> {
        MlpGradients {
            dy: &self.dx2,
            dact: &self.dact,
            dfc: &self.dfc,
            dh: &self.dh2,
            dx: &self.dx1,
        }
    }

    /// `ln_post` normalises `x2`.
    fn ln_post_rows(&self) -> NormRows<'_> {
        NormRows {
            rows: self.batch,
            input: &self.x2,
            stats: &self.statsp,
        }
    }
}

/// The tuned block and the frozen head as layers over the flat parameter buffer and the
/// head buffer.
#[derive(Debug)]
struct Block<'a> {
    dims: BlockDims,
    layers: BlockLayers<'a>,
    /// `W_q`, `W_k`, `W_v`: the three `[D, D]` parts of `in_proj`.
    query: Linear,
    keys: Linear,
    values: Linear,
    /// Frozen.
    ln_post: LayerNorm<'a>,
    /// Frozen `proj`, stored `[D, E]`.
    proj: Operand<'a>,
}

impl<'a> Block<'a> {
    /// The layers at their offsets in `layout` and in the head buffer.
    fn new(dims: &BlockDims, layout: &ParamLayout, persistent: &Persistent<'a>) -> Self {
        let width = dims.width;
        let layers = BlockLayers::new(dims, layout, persistent.params);
        let in_proj = |part: usize| layers.in_proj.slice(part * width, width);
        Block {
            dims: *dims,
            query: in_proj(0),
            keys: in_proj(1),
            values: in_proj(2),
            layers,
            ln_post: LayerNorm {
                buffer: persistent.head,
                weight: 0,
                bias: u32_of(width),
                trainable: false,
            },
            proj: strided(persistent.head, 2 * width, dims.embed),
        }
    }

    /// Head `h`'s key projection, folded into its query.
    fn key_head(&self, h: usize) -> FoldedKey {
        let head_dim = self.dims.head_dim();
        FoldedKey {
            key: self.keys.slice(h * head_dim, head_dim),
            scale: score_scale(&self.dims),
        }
    }

    /// Head `h`'s value projection.
    fn value_head(&self, h: usize) -> Linear {
        let head_dim = self.dims.head_dim();
        self.values.slice(h * head_dim, head_dim)
    }

    /// The CLS rows of a `[B, N, D]` buffer.
    fn cls_rows<'b>(&self, buffer: &'b wgpu::Buffer) -> Operand<'b> {
        strided(buffer, 0, self.dims.tokens * self.dims.width)
    }

    /// Head `h`'s columns of a `[B, D]` buffer.
    fn head_columns<'b>(&self, buffer: &'b wgpu::Buffer, h: usize) -> Operand<'b> {
        let head_dim = self.dims.head_dim();
        strided(buffer, h * head_dim, self.dims.width)
    }

    /// Head `h`'s `[B, D]` slice of a `[B, heads, D]` buffer.
    fn head_vectors<'b>(&self, buffer: &'b wgpu::Buffer, h: usize) -> Operand<'b> {
        let width = self.dims.width;
        strided(buffer, h * width, self.dims.heads * width)
    }

    fn attention_shape(&self, batch: usize) -> AttentionShape {
        AttentionShape {
            batch: u32_of(batch),
            heads: u32_of(self.dims.heads),
            n_k: u32_of(self.dims.tokens),
            width: u32_of(self.dims.width),
        }
    }

    /// Records the forward from `tokens` to `emb`, saving what the backward reads.
    fn forward(&self, rec: &mut Recorder<'_>, b: &Buffers) -> Result<(), GpuError> {
        let (width, embed) = (self.dims.width, self.dims.embed);
        let (ctx, kernels) = (rec.ctx, rec.kernels);
        // h1 = LN1(tokens), all rows.
        self.layers.ln1.forward(rec, &b.ln1_rows(), &b.h1)?;
        // q = h1[CLS]·W_qᵀ + b_q.
        let (h1_cls, q) = (self.cls_rows(&b.h1), dense(&b.q, width));
        self.query.forward(rec, h1_cls, Dest::write(q))?;
        // q̃_h = s·q_h·W_k,h ([B, D] per head, into [B, heads, D]).
        for h in 0..self.dims.heads {
            let (q_h, qt_h) = (self.head_columns(&b.q, h), self.head_vectors(&b.qt, h));
            self.key_head(h).forward(rec, q_h, qt_h)?;
        }
        // Scores, softmax and a_h = Σ_j p_j h1_j.
        let attention = self.attention_shape(rec.rows);
        let scores = kernels
            .attention_fwd
            .bind(ctx, &attention, &b.qt, &b.h1, &b.probs, &b.av)?;
        rec.record([scores]);
        // attn[:, head h] = a_h·W_v,hᵀ + b_v,h.
        for h in 0..self.dims.heads {
            let (a_h, attn_h) = (self.head_vectors(&b.av, h), self.head_columns(&b.attn, h));
            self.value_head(h).forward(rec, a_h, Dest::write(attn_h))?;
        }
        // x1 = tokens[CLS] + attn·W_oᵀ + b_o.
        let (attn, x1) = (dense(&b.attn, width), dense(&b.x1, width));
        rec.copy_rows(self.cls_rows(&b.tokens), Dest::write(x1))?;
        self.layers.out_proj.forward(rec, attn, Dest::add(x1))?;
        // x2 = x1 + MLP(LN2(x1)).
        self.layers.mlp.forward(rec, &b.mlp_activations())?;
        // emb = ln_post(x2)·proj.
        self.ln_post.forward(rec, &b.ln_post_rows(), &b.hp)?;
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: embed,
            inner: width,
            lhs: Matrix::plain(dense(&b.hp, width)),
            rhs: Matrix::plain(self.proj),
            bias: None,
            out: Dest::write(dense(&b.emb, embed)),
            alpha: 1.0,
        })
    }

    /// Records the backward from `d emb` (written by the loss) to every block gradient;
    /// returns LN1's input-gradient dispatch, unrecorded, for [`Block::input_backward`].
    fn backward(&self, rec: &mut Recorder<'_>, b: &Buffers) -> Result<Dispatch, GpuError> {
        let (width, embed) = (self.dims.width, self.dims.embed);
        let (ctx, kernels) = (rec.ctx, rec.kernels);
        // d hp = d emb·projᵀ; d x2 through the frozen ln_post.
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: width,
            inner: embed,
            lhs: Matrix::plain(dense(&b.demb, embed)),
            rhs: Matrix::transposed(self.proj),
            bias: None,
            out: Dest::write(dense(&b.dhp, width)),
            alpha: 1.0,
        })?;
        self.ln_post
            .backward(rec, &b.ln_post_rows(), &b.dhp, Dest::write(&b.dx2))?;
        // MLP branch: d x1 = d x2 (residual) + its backward.
        self.layers
            .mlp
            .backward(rec, &b.mlp_activations(), &b.mlp_gradients())?;
        let dx1 = dense(&b.dx1, width);
        // Attention output projection.
        let (attn, dattn) = (dense(&b.attn, width), dense(&b.dattn, width));
        self.layers
            .out_proj
            .backward(rec, attn, dx1, Dest::write(dattn))?;
        // Values: dW_v,h = d attn_hᵀ·a_h and d a_h = d attn_h·W_v,h per head, then
        // db_v = Σ d attn.
        for h in 0..self.dims.heads {
            let value = self.value_head(h);
            let (a_h, dattn_h) = (self.head_vectors(&b.av, h), self.head_columns(&b.dattn, h));
            value.weight_grad(rec, a_h, dattn_h)?;
            value.input_grad(rec, dattn_h, Dest::write(self.head_vectors(&b.dav, h)))?;
        }
        self.values.bias_grad(rec, &b.dattn)?;
        // The key bias cancels in the softmax: its gradient is exactly zero (a sum over
        // zero rows writes zeros).
        rec.colsum(ColSumSpec {
            rows: 0,
            cols: width,
            src: &b.dattn,
            grad_offset: self.keys.bias,
        })?;
        // Scores and a: d q̃, and d h1 (written here, all rows).
        let attention = self.attention_shape(rec.rows);
        let scores = kernels.attention_bwd.bind(
            ctx,
            &attention,
            &AttentionBwdArgs {
                qt: &b.qt,
                h1: &b.h1,
                probs: &b.probs,
                dav: &b.dav,
                dscores: &b.dscores,
                dqt: &b.dqt,
                dh1: &b.dh1,
                accumulate: false,
            },
        )?;
        rec.record(scores);
        // Keys: dW_k,h = s·q_hᵀ·d q̃_h, d q_h = s·d q̃_h·W_k,hᵀ.
        for h in 0..self.dims.heads {
            let q_h = self.head_columns(&b.q, h);
            let (dqt_h, dq_h) = (self.head_vectors(&b.dqt, h), self.head_columns(&b.dq, h));
            self.key_head(h).backward(rec, q_h, dqt_h, dq_h)?;
        }
        // Query: dW_q = dqᵀ·h1[CLS], db_q = Σ dq, d h1[CLS] += dq·W_q.
        let (h1_cls, dh1_cls) = (self.cls_rows(&b.h1), self.cls_rows(&b.dh1));
        let dq = dense(&b.dq, width);
        self.query.backward(rec, h1_cls, dq, Dest::add(dh1_cls))?;
        // LN1's scale and shift gradients (all rows); its input gradient is `d tokens`'
        // alone.
        self.layers
            .ln1
            .backward_params_first(rec, &b.ln1_rows(), &b.dh1, Dest::write(&b.dtokens))
    }

    /// Records `d tokens` after [`Block::backward`]: `ln1_input` (LN1's input gradient,
    /// all rows) then `d x1` added on the CLS rows (residual).
    fn input_backward(
        &self,
        rec: &mut Recorder<'_>,
        b: &Buffers,
        ln1_input: Dispatch,
    ) -> Result<(), GpuError> {
        rec.record([ln1_input]);
        let dx1 = dense(&b.dx1, self.dims.width);
        rec.copy_rows(dx1, Dest::add(self.cls_rows(&b.dtokens)))
    }
}

/// The contrastive loss over `n_labels` labels: writes the per-sample stats, `d emb`, and
/// the gradient of the "other" bias `b` (at `other_bias` of the parameter buffer and at
/// the same offset of the gradient buffer).
#[derive(Clone, Copy, Debug)]
struct LossHead {
    config: LossConfig,
    n_labels: usize,
    embed: usize,
    other_bias: u32,
}

impl LossHead {
    /// Records the loss on `emb` and its gradients.
    fn record(&self, rec: &mut Recorder<'_>, b: &Buffers) -> Result<(), GpuError> {
        let args = loss_fwd_bwd::LossArgs {
            batch: u32_of(rec.rows),
            n_labels: u32_of(self.n_labels),
            embed: u32_of(self.embed),
            tau: self.config.tau,
            beta: self.config.beta,
            emb: &b.emb,
            text: &b.text,
            labels: &b.labels,
            pbuf: rec.params,
            other_off: self.other_bias,
            demb: &b.demb,
            scratch: &b.scratch,
            grads: rec.grads,
            db_off: self.other_bias,
        };
        let loss = rec.kernels.loss_fwd_bwd.bind(rec.ctx, &args)?;
        rec.record([loss]);
        Ok(())
    }
}

/// Which tensors an AdamW update covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Updated {
    /// The block tensors and `b` (the contrastive step).
    BlockAndBias,
    /// The block tensors alone (`L_r`, which gives `b` no gradient).
    Block,
}

/// AdamW over each block tensor in layout order, then (as `which` says) over `b`.
pub(crate) fn adamw_update(
    ctx: &GpuContext,
    kernels: &Kernels,
    layout: &ParamLayout,
    persistent: &Persistent<'_>,
    which: Updated,
) -> Result<Vec<Dispatch>, GpuError> {
    let buffers = adamw::AdamBuffers {
        params: persistent.params,
        grads: persistent.grads,
        m: persistent.m,
        v: persistent.v,
        step: persistent.step,
    };
    let tensors = (0..layout.offsets.len()).map(|i| adamw::Tensor {
        offset: layout.offsets[i],
        len: layout.lens[i],
        decay: u32::from(layout.decayed[i]),
        _pad: 0,
    });
    let other_bias = adamw::Tensor {
        offset: layout.bias,
        len: 1,
        decay: 0,
        _pad: 0,
    };
    let bias = (which == Updated::BlockAndBias).then_some(other_bias);
    tensors
        .chain(bias)
        .map(|tensor| kernels.adamw.bind(ctx, tensor, &buffers))
        .collect()
}
