//! Backward of the last block and its frozen head, from `d loss / d e` (unnormalised
//! embeddings) to the block's parameter gradients and `d loss / d tokens`.
//!
//! The rules mirror [`super::forward::forward`] in reverse; each GEMM's gradient is the
//! usual pair `dW = dYᵀ·X`, `dX = dY·W` (PyTorch `Linear` layout `y = x Wᵀ + b`).

use rayon::prelude::*;

use super::attention::{cls_attention_backward, AttentionGrads, AttentionSaved};
use super::forward::{recompute_affine, Saved};
use super::layernorm::{layernorm_backward, normalise_backward};
use super::params::{BlockDims, BlockParams, FrozenHead};
use super::wgrad::{UpdateRule, Weight};
use anytime_linalg::{Gemm, MatMut, MatRef};

/// Column sums of `dy` (`[rows, n]`) written to `db` (`[n]`).
pub(crate) fn bias_grad(dy: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    for row in dy.chunks_exact(db.len()) {
        db.iter_mut().zip(row).for_each(|(g, &x)| *g += x);
    }
}

/// The weight matrices that [`backward_update`] updates in place (the other tensors'
/// gradients it writes as [`backward`] does).
pub const FUSED_TENSORS: [&str; 4] = [
    "attn.in_proj_weight",
    "attn.out_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
];

/// The block's parameters as backward uses them: the vectors read, the four weight
/// matrices read and then given their gradients (see [`Weight`]).
struct Params<'a> {
    ln_1_w: &'a [f32],
    ln_1_b: &'a [f32],
    ln_2_w: &'a [f32],
    ln_2_b: &'a [f32],
    in_proj: Weight<'a>,
    out_proj: Weight<'a>,
    fc: Weight<'a>,
    cproj: Weight<'a>,
}

/// The gradients of the block's vectors (biases and LayerNorm parameters), written.
struct VectorGrads<'a> {
    ln_1_w: &'a mut [f32],
    ln_1_b: &'a mut [f32],
    in_proj_b: &'a mut [f32],
    out_proj_b: &'a mut [f32],
    ln_2_w: &'a mut [f32],
    ln_2_b: &'a mut [f32],
    fc_b: &'a mut [f32],
    cproj_b: &'a mut [f32],
}

impl<'a> VectorGrads<'a> {
    /// The vector tensors of `g`, and its four weight matrices.
    fn split(g: &'a mut BlockParams) -> (Self, [&'a mut [f32]; 4]) {
        let BlockParams {
            ln_1_w,
            ln_1_b,
            in_proj_w,
            in_proj_b,
            out_proj_w,
            out_proj_b,
            ln_2_w,
            ln_2_b,
            fc_w,
            fc_b,
            cproj_w,
            cproj_b,
        } = g;
        let vectors = VectorGrads {
            ln_1_w,
            ln_1_b,
            in_proj_b,
            out_proj_b,
            ln_2_w,
            ln_2_b,
            fc_b,
            cproj_b,
        };
        (vectors, [in_proj_w, out_proj_w, fc_w, cproj_w])
    }
}

/// Overwrites `grads` with the parameter gradients given `d_embed` (`[B, E]`) and the
/// forward's `saved` activations, and, when `d_tokens` (`[B, N, D]`) is given, overwrites
/// it with the input tokens' gradient. A training step leaves it out: the tokens come
/// from the frozen trunk, and without it backward touches no `[B·N, D]` buffer but the
/// saved LN1 output.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &FrozenHead,
    saved: &Saved,
    d_embed: &[f32],
    grads: &mut BlockParams,
    d_tokens: Option<&mut [f32]>,
) {
    assert!(
        grads.matches(dims),
        "gradient buffers do not match the dims"
    );
    let (vectors, [gi, go, gf, gc]) = VectorGrads::split(grads);
    let params = Params {
        ln_1_w: &p.ln_1_w,
        ln_1_b: &p.ln_1_b,
        ln_2_w: &p.ln_2_w,
        ln_2_b: &p.ln_2_b,
        in_proj: Weight::Store {
            w: &p.in_proj_w,
            g: gi,
        },
        out_proj: Weight::Store {
            w: &p.out_proj_w,
            g: go,
        },
        fc: Weight::Store { w: &p.fc_w, g: gf },
        cproj: Weight::Store {
            w: &p.cproj_w,
            g: gc,
        },
    };
    backward_with(gemm, dims, params, head, saved, d_embed, vectors, d_tokens);
}

/// Backward with the optimiser step of the four weight matrices ([`FUSED_TENSORS`])
/// fused into it: each is read for its input gradient, then updated in place by `rule`
/// from its gradient a strip of rows at a time, with its moments in `m`, `v`, while the
/// strip is in cache, so that its gradient is never written out nor streamed back in by
/// the optimiser. The gradients of the other tensors go to `grads` as in [`backward`]
/// (its four matrices are left as they were); no input-token gradient. Each matrix gets
/// the gradient bits that [`backward`] would store.
#[allow(clippy::too_many_arguments)]
pub fn backward_update(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &mut BlockParams,
    head: &FrozenHead,
    saved: &Saved,
    d_embed: &[f32],
    grads: &mut BlockParams,
    (m, v): (&mut BlockParams, &mut BlockParams),
    rule: &UpdateRule<'_>,
) {
    assert!(
        grads.vectors_match(dims) && m.matches(dims) && v.matches(dims) && p.matches(dims),
        "buffers do not match the dims"
    );
    let (vectors, _) = VectorGrads::split(grads);
    let fused = |name, w, m, v| Weight::Update {
        name,
        w,
        m,
        v,
        rule,
    };
    let params = Params {
        ln_1_w: &p.ln_1_w,
        ln_1_b: &p.ln_1_b,
        ln_2_w: &p.ln_2_w,
        ln_2_b: &p.ln_2_b,
        in_proj: fused(
            FUSED_TENSORS[0],
            &mut p.in_proj_w,
            &mut m.in_proj_w,
            &mut v.in_proj_w,
        ),
        out_proj: fused(
            FUSED_TENSORS[1],
            &mut p.out_proj_w,
            &mut m.out_proj_w,
            &mut v.out_proj_w,
        ),
        fc: fused(FUSED_TENSORS[2], &mut p.fc_w, &mut m.fc_w, &mut v.fc_w),
        cproj: fused(
            FUSED_TENSORS[3],
            &mut p.cproj_w,
            &mut m.cproj_w,
            &mut v.cproj_w,
        ),
    };
    backward_with(gemm, dims, params, head, saved, d_embed, vectors, None);
}

/// Backward itself, over the parameters as [`Params`] (stored or fused weight gradients).
#[allow(clippy::too_many_arguments)]
fn backward_with(
    gemm: &Gemm,
    dims: &BlockDims,
    p: Params<'_>,
    head: &FrozenHead,
    saved: &Saved,
    d_embed: &[f32],
    grads: VectorGrads<'_>,
    d_tokens: Option<&mut [f32]>,
) {
    let (n, d, m, e) = (dims.tokens, dims.width, dims.mlp, dims.embed);
    let batch = saved.batch;
    let rows = batch * n;
    assert_eq!(d_embed.len(), batch * e, "d_embed must be [B, E]");
    if let Some(dt) = &d_tokens {
        assert_eq!(dt.len(), rows * d, "d_tokens must be [B, N, D]");
    }

    // Head: e = u·proj (frozen), u = ln_post(x3).
    let mut du = gemm.zeros(batch * d);
    gemm.matmul(
        MatRef::new(d_embed, batch, e, e),
        MatRef::new(&head.proj, d, e, e).t(),
        MatMut::new(&mut du, batch, d, d),
        false,
    );
    let mut dx3 = gemm.zeros(batch * d);
    layernorm_backward(
        &du,
        &saved.xhat_post,
        &saved.rstd_post,
        &head.ln_post_w,
        &mut dx3,
        None,
    );

    // MLP: x3 = x2 + act·Wpᵀ + bp, act = qgelu(fc), fc = h2·Wfcᵀ + bfc. Each weight is
    // read for its input gradient before its own gradient is taken (which may update
    // it). `c_proj` (768 × 3072 for ViT-B/32) is wider than tall: the one-pass
    // `backprop` would add up partial input gradients as large as a quarter of it, and
    // is slower than matrixmultiply there; it serves the other three (docs/perf-log.md).
    let mut dfc = gemm.zeros(batch * m);
    gemm.matmul(
        MatRef::new(&dx3, batch, d, d),
        MatRef::new(p.cproj.w(), d, m, m),
        MatMut::new(&mut dfc, batch, m, m),
        false,
    );
    p.cproj
        .grad(gemm, batch, m, &dx3, d, &saved.act, m, 1.0, true);
    bias_grad(&dx3, grads.cproj_b);
    dfc.iter_mut().zip(&saved.dact).for_each(|(g, &s)| *g *= s);
    let h2 = recompute_affine(gemm, &saved.xhat2, d, p.ln_2_w, p.ln_2_b);
    let mut dh2 = gemm.zeros(batch * d);
    p.fc.backprop(gemm, batch, d, &dfc, m, &h2, d, &mut dh2);
    bias_grad(&dfc, grads.fc_b);

    // LN2 and the first residual: dx2 = dx3 + LN2ᵀ(dh2).
    let mut dx2 = dx3;
    grads.ln_2_w.fill(0.0);
    grads.ln_2_b.fill(0.0);
    layernorm_backward(
        &dh2,
        &saved.xhat2,
        &saved.rstd2,
        p.ln_2_w,
        &mut dx2,
        Some((grads.ln_2_w, grads.ln_2_b)),
    );

    // out_proj: x2 = x + attn·Woᵀ + bo.
    let mut dattn = gemm.zeros(batch * d);
    p.out_proj
        .backprop(gemm, batch, d, &dx2, d, &saved.attn, d, &mut dattn);
    bias_grad(&dx2, grads.out_proj_b);

    // Attention of the CLS query, then q = h1_cls·Wqᵀ + bq.
    let mut dxhat = d_tokens.as_ref().map(|_| gemm.zeros(rows * d));
    let mut dq = gemm.zeros(batch * d);
    let (wq, wkv) = p.in_proj.split_at(d * d);
    let (wk, wv) = wkv.split_at(d * d);
    grads.ln_1_w.fill(0.0);
    grads.ln_1_b.fill(0.0);
    let (gbq, gbkv) = grads.in_proj_b.split_at_mut(d);
    let (gbk, gbv) = gbkv.split_at_mut(d);
    let g = AttentionGrads {
        dq: &mut dq,
        dbk: gbk,
        dbv: gbv,
        dw1: &mut *grads.ln_1_w,
        db1: &mut *grads.ln_1_b,
        dxhat: dxhat.as_deref_mut(),
    };
    let s = AttentionSaved {
        xhat: &saved.xhat1,
        w1: p.ln_1_w,
        q: &saved.q,
        qt: &saved.qt,
        probs: &saved.probs,
        abar: &saved.abar,
    };
    cls_attention_backward(gemm, dims, &s, wk, wv, p.ln_1_b, &dattn, g);
    let mut dh1_cls = gemm.zeros(batch * d);
    wq.backprop(gemm, batch, d, &dq, d, &saved.h1_cls, d, &mut dh1_cls);
    bias_grad(&dq, gbq);

    // LN1 of the CLS rows (the queries' input): h1 = x̂ ⊙ w1 + b1.
    for (b, dh) in dh1_cls.chunks_exact(d).enumerate() {
        let xr = &saved.xhat1[b * n * d..b * n * d + d];
        for i in 0..d {
            grads.ln_1_w[i] += dh[i] * xr[i];
            grads.ln_1_b[i] += dh[i];
        }
    }

    // Input tokens: d x̂ of the CLS rows gains the query's part, LN1's normalisation
    // backward, and the residual into the CLS rows.
    if let (Some(d_tokens), Some(mut dxhat)) = (d_tokens, dxhat) {
        for (b, dh) in dh1_cls.chunks_exact(d).enumerate() {
            let row = &mut dxhat[b * n * d..b * n * d + d];
            for i in 0..d {
                row[i] += dh[i] * p.ln_1_w[i];
            }
        }
        d_tokens.fill(0.0);
        for b in 0..batch {
            d_tokens[b * n * d..b * n * d + d].copy_from_slice(&dx2[b * d..(b + 1) * d]);
        }
        d_tokens
            .par_chunks_mut(n * d)
            .zip(dxhat.par_chunks(n * d))
            .zip(saved.xhat1.par_chunks(n * d).zip(saved.rstd1.par_chunks(n)))
            .for_each(|((dt, g), (xh, rs))| normalise_backward(g, xh, rs, dt));
    }
}
