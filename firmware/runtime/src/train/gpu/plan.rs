//! The recorded training step for one batch shape: activation buffers sized for `B`
//! samples and `|Y|` labels, and every dispatch of forward, loss, backward and AdamW bound
//! once. A step re-records these dispatches into one command encoder; nothing reads back
//! in between.
//!
//! Like the CPU path (see `block::attention`), only the CLS rows reach the embedding, so
//! the query, attention output, MLP and head run on the CLS rows only, and keys and values
//! are never materialised: per head the query is folded through the key projection
//! (`q̃ = s·W_k,hᵀ q_h`, scores `h1_j·q̃`, the key bias cancels in the softmax and gets an
//! exactly zero gradient) and the values through `a = Σ_j p_j h1_j` (`o_h = W_v,h a + b_v,h`).
//! Gradients are exactly those of the full block.

use anytime_shaders::kernels::{
    adamw,
    attention_bwd::AttentionBwdArgs,
    attention_fwd::AttentionShape,
    col_sum::ColSumArgs,
    copy_rows::CopyArgs,
    layer_norm_bwd,
    layer_norm_fwd::LayerNormFwdArgs,
    loss_fwd_bwd,
    matmul::{Layout, Operand, Product},
};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError, Kernels};

use super::layout::{t, ParamLayout};
use crate::block::BlockDims;

/// LayerNorm epsilon of CLIP (as the CPU path).
const LN_EPS: f32 = 1e-5;

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
    /// Inputs, written before each call: `[B, N, D]`, `[B]` u32, `[|Y|, E]`.
    pub tokens: wgpu::Buffer,
    pub labels: wgpu::Buffer,
    pub text: wgpu::Buffer,
    /// Per-sample loss stats first (see [`loss_fwd_bwd::STATS_PER_SAMPLE`]).
    pub scratch: wgpu::Buffer,
    /// `d loss / d tokens`, `[B, N, D]`.
    pub dtokens: wgpu::Buffer,
    /// The unnormalised embeddings of the last forward, `[B, E]`.
    pub emb: wgpu::Buffer,
    /// Forward and loss (the loss kernel also writes its gradients).
    pub forward: Vec<Dispatch>,
    /// Backward: every entry of the gradient buffer and `dtokens`.
    pub backward: Vec<Dispatch>,
    /// AdamW over every tensor and `b`.
    pub update: Vec<Dispatch>,
    /// Bytes of every buffer the plan allocated (inputs, activations, backward buffers).
    pub bytes: u64,
    /// Activations, kept alive with the plan.
    _activations: Vec<wgpu::Buffer>,
}

fn u(x: usize) -> u32 {
    x as u32
}

impl Plan {
    /// Allocates the activations and binds every dispatch (sizes checked here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &GpuContext,
        k: &Kernels,
        dims: &BlockDims,
        layout: &ParamLayout,
        p: Persistent<'_>,
        loss: LossConfig,
        batch: usize,
        n_labels: usize,
    ) -> Result<Self, GpuError> {
        let (n, d, m, e, heads) = (dims.tokens, dims.width, dims.mlp, dims.embed, dims.heads);
        let hd = dims.head_dim();
        let (bsz, rows) = (batch, batch * n);
        let z = |label: &str, len: usize| ctx.storage_zeroed(label, len);
        let o = |i: usize| layout.offsets[i];

        let tokens = z("tokens", rows * d);
        let labels = z("labels", bsz);
        let text = z("text", n_labels * e);
        let scratch = z("loss scratch", loss_fwd_bwd::scratch_len(bsz, n_labels));
        let dtokens = z("d tokens", rows * d);

        // Forward activations.
        let h1 = z("h1", rows * d);
        let stats1 = z("ln1 stats", 2 * rows);
        let q = z("q", bsz * d);
        let qt = z("q folded", bsz * heads * d);
        let probs = z("probs", bsz * heads * n);
        let av = z("a", bsz * heads * d);
        let attn = z("attn", bsz * d);
        let x1 = z("x1", bsz * d);
        let h2 = z("h2", bsz * d);
        let stats2 = z("ln2 stats", 2 * bsz);
        let fc = z("fc", bsz * m);
        let act = z("act", bsz * m);
        let x2 = z("x2", bsz * d);
        let hp = z("hp", bsz * d);
        let statsp = z("ln_post stats", 2 * bsz);
        let emb = z("emb", bsz * e);
        // Backward activations.
        let demb = z("d emb", bsz * e);
        let dhp = z("d hp", bsz * d);
        let dx2 = z("d x2", bsz * d);
        let dact = z("d act", bsz * m);
        let dfc = z("d fc", bsz * m);
        let dh2 = z("d h2", bsz * d);
        let dx1 = z("d x1", bsz * d);
        let dattn = z("d attn", bsz * d);
        let dav = z("d a", bsz * heads * d);
        let dscores = z("d scores", bsz * heads * n);
        let dqt = z("d q folded", bsz * heads * d);
        let dq = z("d q", bsz * d);
        let dh1 = z("d h1", rows * d);

        let op = Operand::new;
        let mm = |m_: usize,
                  n_: usize,
                  k_: usize,
                  a: Operand<'_>,
                  a_layout: Layout,
                  b: Operand<'_>,
                  b_layout: Layout,
                  bias: Option<Operand<'_>>,
                  c: Operand<'_>,
                  accumulate: bool,
                  alpha: f32| {
            k.matmul.bind(
                ctx,
                &Product {
                    m: u(m_),
                    n: u(n_),
                    k: u(k_),
                    a,
                    a_layout,
                    b,
                    b_layout,
                    bias,
                    c,
                    accumulate,
                    alpha,
                },
            )
        };
        let copy = |rows_: usize,
                    src: &wgpu::Buffer,
                    lds: usize,
                    dst: &wgpu::Buffer,
                    ldd: usize,
                    accumulate: bool| {
            k.copy_rows.bind(
                ctx,
                &CopyArgs {
                    rows: u(rows_),
                    cols: u(d),
                    src,
                    s_off: 0,
                    lds: u(lds),
                    dst,
                    d_off: 0,
                    ldd: u(ldd),
                    accumulate,
                },
            )
        };
        let colsum = |rows_: usize, cols: usize, src: &wgpu::Buffer, d_off: u32| {
            k.col_sum.bind(
                ctx,
                &ColSumArgs {
                    rows: u(rows_),
                    cols: u(cols),
                    src,
                    s_off: 0,
                    lds: u(cols),
                    dst: p.grads,
                    d_off,
                    accumulate: false,
                },
            )
        };
        let ln = |rows_: usize,
                  x: &wgpu::Buffer,
                  wb: &wgpu::Buffer,
                  w_off: u32,
                  b_off: u32,
                  y: &wgpu::Buffer,
                  stats: &wgpu::Buffer| {
            k.layer_norm_fwd.bind(
                ctx,
                &LayerNormFwdArgs {
                    rows: u(rows_),
                    width: u(d),
                    eps: LN_EPS,
                    x,
                    wb,
                    w_off,
                    b_off,
                    y,
                    stats,
                },
            )
        };
        let (plain, trans) = (Layout::Plain, Layout::Transposed);
        // Rows of head h in W_k and W_v (each [D, D] inside in_proj_weight).
        let wk = |h: usize| o(t::IN_W) + u(d * d + h * hd * d);
        let wv = |h: usize| o(t::IN_W) + u(2 * d * d + h * hd * d);
        let scale = 1.0 / (hd as f32).sqrt();
        let attention = AttentionShape {
            batch: u(bsz),
            heads: u(heads),
            n_k: u(n),
            width: u(d),
        };

        let mut forward = vec![
            // h1 = LN1(tokens), all rows.
            ln(
                rows,
                &tokens,
                p.params,
                o(t::LN1_W),
                o(t::LN1_B),
                &h1,
                &stats1,
            )?,
            // q = h1[CLS] · W_qᵀ + b_q.
            mm(
                bsz,
                d,
                d,
                op(&h1, 0, u(n * d)),
                plain,
                op(p.params, o(t::IN_W), u(d)),
                trans,
                Some(op(p.params, o(t::IN_B), 0)),
                op(&q, 0, u(d)),
                false,
                1.0,
            )?,
        ];
        // q̃_h = s · q_h · W_k,h  ([B, D] per head, into [B, heads, D]).
        for h in 0..heads {
            forward.push(mm(
                bsz,
                d,
                hd,
                op(&q, u(h * hd), u(d)),
                plain,
                op(p.params, wk(h), u(d)),
                plain,
                None,
                op(&qt, u(h * d), u(heads * d)),
                false,
                scale,
            )?);
        }
        forward.push(
            k.attention_fwd
                .bind(ctx, &attention, &qt, &h1, &probs, &av)?,
        );
        // attn[:, head h] = a_h · W_v,hᵀ + b_v,h.
        for h in 0..heads {
            forward.push(mm(
                bsz,
                hd,
                d,
                op(&av, u(h * d), u(heads * d)),
                plain,
                op(p.params, wv(h), u(d)),
                trans,
                Some(op(p.params, o(t::IN_B) + u(2 * d + h * hd), 0)),
                op(&attn, u(h * hd), u(d)),
                false,
                1.0,
            )?);
        }
        forward.extend([
            // x1 = tokens[CLS] + attn · W_oᵀ + b_o.
            copy(bsz, &tokens, n * d, &x1, d, false)?,
            mm(
                bsz,
                d,
                d,
                op(&attn, 0, u(d)),
                plain,
                op(p.params, o(t::OUT_W), u(d)),
                trans,
                Some(op(p.params, o(t::OUT_B), 0)),
                op(&x1, 0, u(d)),
                true,
                1.0,
            )?,
            ln(bsz, &x1, p.params, o(t::LN2_W), o(t::LN2_B), &h2, &stats2)?,
            // fc = h2 · W_fcᵀ + b_fc; act = QuickGELU(fc).
            mm(
                bsz,
                m,
                d,
                op(&h2, 0, u(d)),
                plain,
                op(p.params, o(t::FC_W), u(d)),
                trans,
                Some(op(p.params, o(t::FC_B), 0)),
                op(&fc, 0, u(m)),
                false,
                1.0,
            )?,
            k.quick_gelu_fwd.bind(ctx, u(bsz * m), &fc, &act)?,
            // x2 = x1 + act · W_cpᵀ + b_cp.
            copy(bsz, &x1, d, &x2, d, false)?,
            mm(
                bsz,
                d,
                m,
                op(&act, 0, u(m)),
                plain,
                op(p.params, o(t::CPROJ_W), u(m)),
                trans,
                Some(op(p.params, o(t::CPROJ_B), 0)),
                op(&x2, 0, u(d)),
                true,
                1.0,
            )?,
            // emb = ln_post(x2) · proj.
            ln(bsz, &x2, p.head, 0, u(d), &hp, &statsp)?,
            mm(
                bsz,
                e,
                d,
                op(&hp, 0, u(d)),
                plain,
                op(p.head, u(2 * d), u(e)),
                plain,
                None,
                op(&emb, 0, u(e)),
                false,
                1.0,
            )?,
        ]);
        forward.push(k.loss_fwd_bwd.bind(
            ctx,
            &loss_fwd_bwd::LossArgs {
                batch: u(bsz),
                n_labels: u(n_labels),
                embed: u(e),
                tau: loss.tau,
                beta: loss.beta,
                emb: &emb,
                text: &text,
                labels: &labels,
                pbuf: p.params,
                other_off: layout.bias,
                demb: &demb,
                scratch: &scratch,
                grads: p.grads,
                db_off: layout.bias,
            },
        )?);

        let ln_bwd = |rows_: usize,
                      x: &wgpu::Buffer,
                      wb: &wgpu::Buffer,
                      w_off: u32,
                      stats: &wgpu::Buffer,
                      dy: &wgpu::Buffer,
                      dx: &wgpu::Buffer,
                      accumulate: bool,
                      grads: Option<(u32, u32)>| {
            k.layer_norm_bwd.bind(
                ctx,
                &layer_norm_bwd::LayerNormBwdArgs {
                    rows: u(rows_),
                    width: u(d),
                    x,
                    wb,
                    w_off,
                    stats,
                    dy,
                    dx,
                    accumulate,
                    grads: grads.map(|(dw_off, db_off)| layer_norm_bwd::ParamGrads {
                        buffer: p.grads,
                        dw_off,
                        db_off,
                    }),
                },
            )
        };

        let mut backward = Vec::new();
        // d hp = d emb · projᵀ (proj stored [D, E]); d x2 through the frozen ln_post.
        backward.push(mm(
            bsz,
            d,
            e,
            op(&demb, 0, u(e)),
            plain,
            op(p.head, u(2 * d), u(e)),
            trans,
            None,
            op(&dhp, 0, u(d)),
            false,
            1.0,
        )?);
        backward.extend(ln_bwd(
            bsz, &x2, p.head, 0, &statsp, &dhp, &dx2, false, None,
        )?);
        // MLP output projection: dW_cp = dx2ᵀ · act, db_cp = Σ dx2, d act = dx2 · W_cp.
        backward.push(mm(
            d,
            m,
            bsz,
            op(&dx2, 0, u(d)),
            trans,
            op(&act, 0, u(m)),
            plain,
            None,
            op(p.grads, o(t::CPROJ_W), u(m)),
            false,
            1.0,
        )?);
        backward.push(colsum(bsz, d, &dx2, o(t::CPROJ_B))?);
        backward.push(mm(
            bsz,
            m,
            d,
            op(&dx2, 0, u(d)),
            plain,
            op(p.params, o(t::CPROJ_W), u(m)),
            plain,
            None,
            op(&dact, 0, u(m)),
            false,
            1.0,
        )?);
        backward.push(k.quick_gelu_bwd.bind(ctx, u(bsz * m), &fc, &dact, &dfc)?);
        // MLP input projection: dW_fc = dfcᵀ · h2, db_fc = Σ dfc, d h2 = dfc · W_fc.
        backward.push(mm(
            m,
            d,
            bsz,
            op(&dfc, 0, u(m)),
            trans,
            op(&h2, 0, u(d)),
            plain,
            None,
            op(p.grads, o(t::FC_W), u(d)),
            false,
            1.0,
        )?);
        backward.push(colsum(bsz, m, &dfc, o(t::FC_B))?);
        backward.push(mm(
            bsz,
            d,
            m,
            op(&dfc, 0, u(m)),
            plain,
            op(p.params, o(t::FC_W), u(d)),
            plain,
            None,
            op(&dh2, 0, u(d)),
            false,
            1.0,
        )?);
        // d x1 = d x2 (residual) + LN2 backward.
        backward.push(copy(bsz, &dx2, d, &dx1, d, false)?);
        backward.extend(ln_bwd(
            bsz,
            &x1,
            p.params,
            o(t::LN2_W),
            &stats2,
            &dh2,
            &dx1,
            true,
            Some((o(t::LN2_W), o(t::LN2_B))),
        )?);
        // Attention output projection.
        backward.push(mm(
            d,
            d,
            bsz,
            op(&dx1, 0, u(d)),
            trans,
            op(&attn, 0, u(d)),
            plain,
            None,
            op(p.grads, o(t::OUT_W), u(d)),
            false,
            1.0,
        )?);
        backward.push(colsum(bsz, d, &dx1, o(t::OUT_B))?);
        backward.push(mm(
            bsz,
            d,
            d,
            op(&dx1, 0, u(d)),
            plain,
            op(p.params, o(t::OUT_W), u(d)),
            plain,
            None,
            op(&dattn, 0, u(d)),
            false,
            1.0,
        )?);
        // Values: dW_v,h = d attn_hᵀ · a_h, d a_h = d attn_h · W_v,h, db_v = Σ d attn.
        for h in 0..heads {
            backward.push(mm(
                hd,
                d,
                bsz,
                op(&dattn, u(h * hd), u(d)),
                trans,
                op(&av, u(h * d), u(heads * d)),
                plain,
                None,
                op(p.grads, wv(h), u(d)),
                false,
                1.0,
            )?);
            backward.push(mm(
                bsz,
                d,
                hd,
                op(&dattn, u(h * hd), u(d)),
                plain,
                op(p.params, wv(h), u(d)),
                plain,
                None,
                op(&dav, u(h * d), u(heads * d)),
                false,
                1.0,
            )?);
        }
        backward.push(colsum(bsz, d, &dattn, o(t::IN_B) + u(2 * d))?);
        // The key bias cancels in the softmax: its gradient is exactly zero (a sum over
        // zero rows writes zeros).
        backward.push(colsum(0, d, &dattn, o(t::IN_B) + u(d))?);
        // Scores and a: d q̃, and d h1 (written here, all rows).
        backward.extend(k.attention_bwd.bind(
            ctx,
            &attention,
            &AttentionBwdArgs {
                qt: &qt,
                h1: &h1,
                probs: &probs,
                dav: &dav,
                dscores: &dscores,
                dqt: &dqt,
                dh1: &dh1,
                accumulate: false,
            },
        )?);
        // Keys: dW_k,h = s · q_hᵀ · d q̃_h, d q_h = s · d q̃_h · W_k,hᵀ.
        for h in 0..heads {
            backward.push(mm(
                hd,
                d,
                bsz,
                op(&q, u(h * hd), u(d)),
                trans,
                op(&dqt, u(h * d), u(heads * d)),
                plain,
                None,
                op(p.grads, wk(h), u(d)),
                false,
                scale,
            )?);
            backward.push(mm(
                bsz,
                hd,
                d,
                op(&dqt, u(h * d), u(heads * d)),
                plain,
                op(p.params, wk(h), u(d)),
                trans,
                None,
                op(&dq, u(h * hd), u(d)),
                false,
                scale,
            )?);
        }
        // Query: dW_q = dqᵀ · h1[CLS], db_q = Σ dq, d h1[CLS] += dq · W_q.
        backward.push(mm(
            d,
            d,
            bsz,
            op(&dq, 0, u(d)),
            trans,
            op(&h1, 0, u(n * d)),
            plain,
            None,
            op(p.grads, o(t::IN_W), u(d)),
            false,
            1.0,
        )?);
        backward.push(colsum(bsz, d, &dq, o(t::IN_B))?);
        backward.push(mm(
            bsz,
            d,
            d,
            op(&dq, 0, u(d)),
            plain,
            op(p.params, o(t::IN_W), u(d)),
            plain,
            None,
            op(&dh1, 0, u(n * d)),
            true,
            1.0,
        )?);
        // d tokens = LN1 backward (all rows) + d x1 on the CLS rows (residual).
        backward.extend(ln_bwd(
            rows,
            &tokens,
            p.params,
            o(t::LN1_W),
            &stats1,
            &dh1,
            &dtokens,
            false,
            Some((o(t::LN1_W), o(t::LN1_B))),
        )?);
        backward.push(copy(bsz, &dx1, d, &dtokens, n * d, true)?);

        let bufs = adamw::AdamBuffers {
            params: p.params,
            grads: p.grads,
            m: p.m,
            v: p.v,
            step: p.step,
        };
        let mut update = Vec::with_capacity(13);
        for i in 0..12 {
            let tensor = adamw::Tensor {
                offset: layout.offsets[i],
                len: layout.lens[i],
                decay: u32::from(layout.decayed[i]),
                _pad: 0,
            };
            update.push(k.adamw.bind(ctx, tensor, &bufs)?);
        }
        let bias = adamw::Tensor {
            offset: layout.bias,
            len: 1,
            decay: 0,
            _pad: 0,
        };
        update.push(k.adamw.bind(ctx, bias, &bufs)?);

        let activations = vec![
            h1, stats1, q, qt, probs, av, attn, x1, h2, stats2, fc, act, x2, hp, statsp, demb, dhp,
            dx2, dact, dfc, dh2, dx1, dattn, dav, dscores, dqt, dq, dh1,
        ];
        let bytes = [&tokens, &labels, &text, &scratch, &dtokens, &emb]
            .into_iter()
            .chain(&activations)
            .map(wgpu::Buffer::size)
            .sum();
        Ok(Plan {
            batch,
            n_labels,
            tokens,
            labels,
            text,
            scratch,
            dtokens,
            emb,
            forward,
            backward,
            update,
            bytes,
            _activations: activations,
        })
    }
}
