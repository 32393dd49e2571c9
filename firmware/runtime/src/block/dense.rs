//! The dense last block: every token of every image through LN1, multi-head attention
//! (each query over its own image's keys), `out_proj`, LN2 and the MLP, forward and
//! backward. The losses that need every token's output (SPEC §8's masked-token loss
//! `L_r`) use it; the CLS-only path ([`super::forward`]) stays the one for the embedding.
//!
//! Same parameters as the CLS path ([`BlockParams`], `y = x Wᵀ + b`, `in_proj` rows q, k, v),
//! the same LayerNorm (eps `LN_EPS`) and QuickGELU. Layouts (`R = B·N` rows, `H` heads):
//! tokens, LN1 and LN2 outputs, attention output and block output `[R, D]`; `qkv`
//! `[R, 3D]` (columns q, k, v, head `h` at `h·dh` inside each); probabilities
//! `[B, H, N, N]`; MLP activations `[R, M]`. Work runs per image on the rayon pool, and
//! inside the large GEMMs; every sum has an order fixed by the shapes, so the result does
//! not depend on the thread count.

use rayon::prelude::*;

use super::attention::softmax_rows;
use super::backward::bias_grad;
use super::forward::{broadcast_rows, quick_gelu_rows, recompute_affine};
use super::layernorm::{layernorm_affine, layernorm_backward, layernorm_normalise};
use super::params::{BlockDims, BlockParams};
use anytime_linalg::{AlignedVec, Gemm, MatMut, MatRef};

/// Activations of [`dense_forward`] (the block's output among them), kept for
/// [`dense_backward`].
#[derive(Clone, Debug, Default)]
pub struct DenseSaved {
    pub batch: usize,
    /// LN1 normalised input `[R, D]` and its `1/σ` `[R]`.
    pub xhat1: AlignedVec,
    pub rstd1: AlignedVec,
    /// Queries, keys and values of every token, `[R, 3D]`.
    pub qkv: AlignedVec,
    /// Attention probabilities `[B, H, N, N]` (row: query, column: key).
    pub probs: AlignedVec,
    /// Attention output before `out_proj`, heads concatenated, `[R, D]`.
    pub attn: AlignedVec,
    /// LN2 normalised input `[R, D]` and its `1/σ` `[R]`.
    pub xhat2: AlignedVec,
    pub rstd2: AlignedVec,
    /// QuickGELU of the MLP pre-activation `[R, M]`, and its derivative there.
    pub act: AlignedVec,
    pub dact: AlignedVec,
    /// The block's output tokens `[B, N, D]`.
    pub out: AlignedVec,
}

/// `1/sqrt(dh)`, the attention's score scale.
fn score_scale(dims: &BlockDims) -> f32 {
    1.0 / (dims.head_dim() as f32).sqrt()
}

/// Forward of the whole block over `batch` token sets (`[B, N, D]`): the output tokens
/// (`out`) and what [`dense_backward`] needs.
pub fn dense_forward(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    tokens: &[f32],
    batch: usize,
) -> DenseSaved {
    let (n, d, m) = (dims.tokens, dims.width, dims.mlp);
    let rows = batch * n;
    assert!(
        dims.is_valid() && p.matches(dims),
        "params do not match the dims"
    );
    assert_eq!(tokens.len(), rows * d, "tokens must be [B, N, D]");

    // LN1, then qkv = h1·W_inᵀ + b_in.
    let mut xhat1 = gemm.zeros(rows * d);
    let mut rstd1 = gemm.zeros(rows);
    xhat1
        .par_chunks_mut(n * d)
        .zip(rstd1.par_chunks_mut(n))
        .zip(tokens.par_chunks(n * d))
        .for_each(|((xh, rs), x)| layernorm_normalise(x, d, xh, rs));
    let h1 = recompute_affine(gemm, &xhat1, d, &p.ln_1_w, &p.ln_1_b);
    let mut qkv = gemm.zeros(rows * 3 * d);
    broadcast_rows(&mut qkv, &p.in_proj_b);
    gemm.matmul(
        MatRef::new(&h1, rows, d, d),
        MatRef::new(&p.in_proj_w, 3 * d, d, d).t(),
        MatMut::new(&mut qkv, rows, 3 * d, 3 * d),
        true,
    );

    let mut probs = gemm.zeros(batch * dims.heads * n * n);
    let mut attn = gemm.zeros(rows * d);
    attention_forward(gemm, dims, &qkv, &mut probs, &mut attn);

    // x2 = x + attn·W_oᵀ + b_o, then LN2.
    let mut x2 = gemm.zeros(rows * d);
    for (row, x) in x2.chunks_exact_mut(d).zip(tokens.chunks_exact(d)) {
        for ((o, &t), &b) in row.iter_mut().zip(x).zip(&p.out_proj_b) {
            *o = t + b;
        }
    }
    gemm.matmul(
        MatRef::new(&attn, rows, d, d),
        MatRef::new(&p.out_proj_w, d, d, d).t(),
        MatMut::new(&mut x2, rows, d, d),
        true,
    );
    let mut xhat2 = gemm.zeros(rows * d);
    let mut rstd2 = gemm.zeros(rows);
    xhat2
        .par_chunks_mut(n * d)
        .zip(rstd2.par_chunks_mut(n))
        .zip(x2.par_chunks(n * d))
        .for_each(|((xh, rs), x)| layernorm_normalise(x, d, xh, rs));
    let mut h2 = gemm.zeros(rows * d);
    h2.par_chunks_mut(n * d)
        .zip(xhat2.par_chunks(n * d))
        .for_each(|(h, xh)| layernorm_affine(xh, d, &p.ln_2_w, &p.ln_2_b, h));

    // MLP: act = qgelu(h2·W_fcᵀ + b_fc), out = x2 + act·W_pᵀ + b_p.
    let mut act = gemm.zeros(rows * m);
    let mut dact = gemm.zeros(rows * m);
    broadcast_rows(&mut act, &p.fc_b);
    gemm.matmul(
        MatRef::new(&h2, rows, d, d),
        MatRef::new(&p.fc_w, m, d, d).t(),
        MatMut::new(&mut act, rows, m, m),
        true,
    );
    quick_gelu_rows(&mut act, &mut dact, m);
    let mut out = x2;
    for row in out.chunks_exact_mut(d) {
        row.iter_mut().zip(&p.cproj_b).for_each(|(x, &b)| *x += b);
    }
    gemm.matmul(
        MatRef::new(&act, rows, m, m),
        MatRef::new(&p.cproj_w, d, m, m).t(),
        MatMut::new(&mut out, rows, d, d),
        true,
    );

    DenseSaved {
        batch,
        xhat1,
        rstd1,
        qkv,
        probs,
        attn,
        xhat2,
        rstd2,
        act,
        dact,
        out,
    }
}

/// Per image and head: `P = softmax(s·Q Kᵀ)` into `probs` and `O = P V` into its head's
/// columns of `attn`.
fn attention_forward(
    gemm: &Gemm,
    dims: &BlockDims,
    qkv: &[f32],
    probs: &mut [f32],
    attn: &mut [f32],
) {
    let (n, d, dh, heads) = (dims.tokens, dims.width, dims.head_dim(), dims.heads);
    let scale = score_scale(dims);
    probs
        .par_chunks_mut(heads * n * n)
        .zip(attn.par_chunks_mut(n * d))
        .zip(qkv.par_chunks(n * 3 * d))
        .for_each(|((pb, ab), xb)| {
            for (h, ph) in pb.chunks_exact_mut(n * n).enumerate() {
                let c = h * dh;
                gemm.matmul(
                    MatRef::new(&xb[c..], n, dh, 3 * d),
                    MatRef::new(&xb[d + c..], n, dh, 3 * d).t(),
                    MatMut::new(ph, n, n, n),
                    false,
                );
                ph.iter_mut().for_each(|s| *s *= scale);
                softmax_rows(ph, n);
                gemm.matmul(
                    MatRef::new(ph, n, n, n),
                    MatRef::new(&xb[2 * d + c..], n, dh, 3 * d),
                    MatMut::new(&mut ab[c..], n, dh, d),
                    false,
                );
            }
        });
}

/// Overwrites `grads` with the parameter gradients given `d_out` (`[B, N, D]`, the
/// gradient of the block's output tokens) and the forward's `saved` activations, and,
/// when `d_tokens` (`[B, N, D]`) is given, overwrites it with the input tokens' gradient.
pub fn dense_backward(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    saved: &DenseSaved,
    d_out: &[f32],
    grads: &mut BlockParams,
    d_tokens: Option<&mut [f32]>,
) {
    let (n, d, m) = (dims.tokens, dims.width, dims.mlp);
    let rows = saved.batch * n;
    assert!(
        p.matches(dims) && grads.matches(dims),
        "params or gradient buffers do not match the dims"
    );
    assert_eq!(d_out.len(), rows * d, "d_out must be [B, N, D]");
    assert_eq!(saved.out.len(), rows * d, "saved activations of other dims");

    // MLP: out = x2 + act·W_pᵀ + b_p, act = qgelu(fc), fc = h2·W_fcᵀ + b_fc.
    let mut dfc = gemm.zeros(rows * m);
    gemm.matmul(
        MatRef::new(d_out, rows, d, d),
        MatRef::new(&p.cproj_w, d, m, m),
        MatMut::new(&mut dfc, rows, m, m),
        false,
    );
    weight_grad(gemm, d_out, d, &saved.act, m, &mut grads.cproj_w);
    bias_grad(d_out, &mut grads.cproj_b);
    dfc.iter_mut().zip(&saved.dact).for_each(|(g, &s)| *g *= s);
    let h2 = recompute_affine(gemm, &saved.xhat2, d, &p.ln_2_w, &p.ln_2_b);
    let mut dh2 = gemm.zeros(rows * d);
    gemm.matmul(
        MatRef::new(&dfc, rows, m, m),
        MatRef::new(&p.fc_w, m, d, d),
        MatMut::new(&mut dh2, rows, d, d),
        false,
    );
    weight_grad(gemm, &dfc, m, &h2, d, &mut grads.fc_w);
    bias_grad(&dfc, &mut grads.fc_b);

    // LN2 and the residual: dx2 = d_out + LN2ᵀ(dh2).
    let mut dx2 = gemm.zeros(rows * d);
    dx2.copy_from_slice(d_out);
    layernorm_backward_par(
        n * d,
        &dh2,
        &saved.xhat2,
        &saved.rstd2,
        &p.ln_2_w,
        &mut dx2,
        (&mut grads.ln_2_w, &mut grads.ln_2_b),
    );

    // out_proj: x2 = x + attn·W_oᵀ + b_o.
    let mut dattn = gemm.zeros(rows * d);
    gemm.matmul(
        MatRef::new(&dx2, rows, d, d),
        MatRef::new(&p.out_proj_w, d, d, d),
        MatMut::new(&mut dattn, rows, d, d),
        false,
    );
    weight_grad(gemm, &dx2, d, &saved.attn, d, &mut grads.out_proj_w);
    bias_grad(&dx2, &mut grads.out_proj_b);

    // Attention, then qkv = h1·W_inᵀ + b_in.
    let mut dqkv = gemm.zeros(rows * 3 * d);
    attention_backward(gemm, dims, saved, &dattn, &mut dqkv);
    let h1 = recompute_affine(gemm, &saved.xhat1, d, &p.ln_1_w, &p.ln_1_b);
    let mut dh1 = gemm.zeros(rows * d);
    gemm.matmul(
        MatRef::new(&dqkv, rows, 3 * d, 3 * d),
        MatRef::new(&p.in_proj_w, 3 * d, d, d),
        MatMut::new(&mut dh1, rows, d, d),
        false,
    );
    weight_grad(gemm, &dqkv, 3 * d, &h1, d, &mut grads.in_proj_w);
    bias_grad(&dqkv, &mut grads.in_proj_b);
    // The key bias adds `q_i·b_k` to every score of query `i`, which cancels in its
    // softmax: its gradient is exactly zero, as the CLS path writes it (the column sums
    // give round-off, which AdamW would blow up to steps of up to lr).
    grads.in_proj_b[d..2 * d].fill(0.0);

    // LN1 and the residual into the input tokens.
    let mut dx = gemm.zeros(rows * d);
    layernorm_backward_par(
        n * d,
        &dh1,
        &saved.xhat1,
        &saved.rstd1,
        &p.ln_1_w,
        &mut dx,
        (&mut grads.ln_1_w, &mut grads.ln_1_b),
    );
    if let Some(dt) = d_tokens {
        assert_eq!(dt.len(), rows * d, "d_tokens must be [B, N, D]");
        for ((t, &a), &b) in dt.iter_mut().zip(&dx).zip(&dx2) {
            *t = a + b;
        }
    }
}

/// `g = dYᵀ·X` (`[out, inn]`, overwritten) from `dy` (`[R, out]`) and `x` (`[R, inn]`).
fn weight_grad(gemm: &Gemm, dy: &[f32], out: usize, x: &[f32], inn: usize, g: &mut [f32]) {
    let rows = dy.len() / out;
    gemm.matmul(
        MatRef::new(dy, rows, out, out).t(),
        MatRef::new(x, rows, inn, inn),
        MatMut::new(g, out, inn, inn),
        false,
    );
}

/// [`layernorm_backward`] over blocks of `chunk` elements in parallel: **adds** the
/// input gradient to `dx`, and **overwrites** `dw`, `db` with the sums of the blocks'
/// partials, added in block order.
fn layernorm_backward_par(
    chunk: usize,
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = w.len();
    let blocks = dy.len().div_ceil(chunk);
    let mut parts = vec![0.0f32; blocks * 2 * d];
    parts
        .par_chunks_mut(2 * d)
        .zip(dx.par_chunks_mut(chunk))
        .zip(dy.par_chunks(chunk))
        .zip(xhat.par_chunks(chunk).zip(rstd.par_chunks(chunk / d)))
        .for_each(|(((part, dx), dy), (xh, rs))| {
            let (pw, pb) = part.split_at_mut(d);
            layernorm_backward(dy, xh, rs, w, dx, Some((pw, pb)));
        });
    dw.fill(0.0);
    db.fill(0.0);
    for part in parts.chunks_exact(2 * d) {
        let (pw, pb) = part.split_at(d);
        dw.iter_mut().zip(pw).for_each(|(g, &v)| *g += v);
        db.iter_mut().zip(pb).for_each(|(g, &v)| *g += v);
    }
}

/// Backward of [`attention_forward`] per image and head: from `dattn` (`[R, D]`) to
/// `dqkv` (`[R, 3D]`, overwritten), with `dP = dO Vᵀ`, `dV = Pᵀ dO`, the softmax rule
/// `dS = s·P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS K` and `dK = dSᵀ Q`.
fn attention_backward(
    gemm: &Gemm,
    dims: &BlockDims,
    saved: &DenseSaved,
    dattn: &[f32],
    dqkv: &mut [f32],
) {
    let (n, d, dh, heads) = (dims.tokens, dims.width, dims.head_dim(), dims.heads);
    let scale = score_scale(dims);
    dqkv.par_chunks_mut(n * 3 * d)
        .zip(saved.qkv.par_chunks(n * 3 * d))
        .zip(saved.probs.par_chunks(heads * n * n))
        .zip(dattn.par_chunks(n * d))
        .for_each(|(((gb, xb), pb), db)| {
            let mut ds = gemm.zeros(n * n);
            for (h, ph) in pb.chunks_exact(n * n).enumerate() {
                let c = h * dh;
                let d_o = MatRef::new(&db[c..], n, dh, d);
                gemm.matmul(
                    d_o,
                    MatRef::new(&xb[2 * d + c..], n, dh, 3 * d).t(),
                    MatMut::new(&mut ds, n, n, n),
                    false,
                );
                gemm.matmul(
                    MatRef::new(ph, n, n, n).t(),
                    d_o,
                    MatMut::new(&mut gb[2 * d + c..], n, dh, 3 * d),
                    false,
                );
                for (dsr, pr) in ds.chunks_exact_mut(n).zip(ph.chunks_exact(n)) {
                    let pdp: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                    dsr.iter_mut()
                        .zip(pr)
                        .for_each(|(x, &p)| *x = scale * p * (*x - pdp));
                }
                gemm.matmul(
                    MatRef::new(&ds, n, n, n),
                    MatRef::new(&xb[d + c..], n, dh, 3 * d),
                    MatMut::new(&mut gb[c..], n, dh, 3 * d),
                    false,
                );
                gemm.matmul(
                    MatRef::new(&ds, n, n, n).t(),
                    MatRef::new(&xb[c..], n, dh, 3 * d),
                    MatMut::new(&mut gb[d + c..], n, dh, 3 * d),
                    false,
                );
            }
        });
}
