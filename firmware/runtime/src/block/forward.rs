//! Batched forward of the last block and its head, keeping what backward needs.
//!
//! Only the CLS output reaches the embedding, so LN1 normalises every token, and the
//! query, attention (see [`super::attention`]: keys, values and the LN1 output of the
//! patch tokens are never materialised), residuals, MLP and head run on the CLS rows only.
//! Work is spread over the rayon pool (per image, per head, and inside large GEMMs).

use rayon::prelude::*;

use super::attention::{
    attention_core_forward, cls_patch_weights, folded_queries, scale_rows, value_output,
};
use super::layernorm::{layernorm_affine, layernorm_forward, layernorm_normalise};
use super::params::{BlockDims, BlockParams, FrozenHead};
use anytime_linalg::{AlignedVec, Gemm, MatMut, MatRef, Placement};

/// Activations saved by the forward pass for backward (`R = B·N` rows of all tokens,
/// `H` heads). Reused across steps by [`forward_into`].
#[derive(Clone, Debug, Default)]
pub struct Saved {
    pub batch: usize,
    /// LN1 normalised input, `[R, D]`, and its `1/σ`, `[R]`.
    pub xhat1: AlignedVec,
    pub rstd1: AlignedVec,
    /// LN1 output of the CLS rows, `[B, D]` (the queries' input).
    pub h1_cls: AlignedVec,
    /// CLS queries `[B, D]`.
    pub q: AlignedVec,
    /// Queries folded through the keys' weights, `q̃ = W_kᵀ q / sqrt(dh)`, `[H, B, D]`.
    pub qt: AlignedVec,
    /// CLS attention probabilities `[B, H, N]`.
    pub probs: AlignedVec,
    /// Attention-weighted normalised tokens `ā = Σ_j p_j x̂_j`, `[B, H, D]`.
    pub abar: AlignedVec,
    /// Attention output before `out_proj`, `[B, D]`.
    pub attn: AlignedVec,
    /// LN2 normalised CLS rows `[B, D]`, `[B]`.
    pub xhat2: AlignedVec,
    pub rstd2: AlignedVec,
    /// QuickGELU of the MLP pre-activation `[B, M]`, and its derivative there (both from
    /// the one `exp` per element that the forward computes anyway).
    pub act: AlignedVec,
    pub dact: AlignedVec,
    /// `ln_post` normalised CLS output `[B, D]`, `[B]`.
    pub xhat_post: AlignedVec,
    pub rstd_post: AlignedVec,
    /// Unnormalised embeddings `e = ln_post(CLS)·proj`, `[B, E]`.
    pub embed: AlignedVec,
}

impl Saved {
    /// No activations yet; the buffers [`forward_into`] fills will be placed as
    /// `placement` says.
    pub fn placed(placement: Placement) -> Self {
        let e = || AlignedVec::empty(placement);
        Saved {
            batch: 0,
            xhat1: e(),
            rstd1: e(),
            h1_cls: e(),
            q: e(),
            qt: e(),
            probs: e(),
            abar: e(),
            attn: e(),
            xhat2: e(),
            rstd2: e(),
            act: e(),
            dact: e(),
            xhat_post: e(),
            rstd_post: e(),
            embed: e(),
        }
    }
}

/// QuickGELU `x·σ(1.702x)` and its derivative `σ(1.702x) + 1.702·x·σ(1.702x)(1 − σ(1.702x))`.
#[inline]
fn quick_gelu_and_grad(x: f32) -> (f32, f32) {
    let e = 1.0 + (-1.702 * x).exp();
    let s = 1.0 / e;
    (x / e, s + 1.702 * x * s * (1.0 - s))
}

/// QuickGELU of every element of `x` (the MLP pre-activation, written there), in
/// parallel by rows of width `m`; its derivative into `dact`.
pub(crate) fn quick_gelu_rows(x: &mut [f32], dact: &mut [f32], m: usize) {
    x.par_chunks_mut(m)
        .zip(dact.par_chunks_mut(m))
        .for_each(|(xr, dr)| {
            for (v, d) in xr.iter_mut().zip(dr) {
                (*v, *d) = quick_gelu_and_grad(*v);
            }
        });
}

/// Every row of `c` (`[rows, n]`) set to `bias` (`[n]`), to accumulate a product on top.
pub(crate) fn broadcast_rows(c: &mut [f32], bias: &[f32]) {
    for row in c.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `v` resized to `len` (contents unspecified: every user overwrites it).
fn sized(v: &mut AlignedVec, len: usize) -> &mut [f32] {
    v.resize(len, 0.0);
    v
}

/// LN1 of every token, the CLS rows' LN1 output and the CLS queries, into `s`.
fn attention_inputs(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    tokens: &[f32],
    batch: usize,
    s: &mut Saved,
) {
    let (n, d) = (dims.tokens, dims.width);
    let rows = batch * n;
    assert_eq!(tokens.len(), rows * d, "tokens must be [B, N, D]");
    let xhat1 = sized(&mut s.xhat1, rows * d);
    let rstd1 = sized(&mut s.rstd1, rows);
    xhat1
        .par_chunks_mut(n * d)
        .zip(rstd1.par_chunks_mut(n))
        .zip(tokens.par_chunks(n * d))
        .for_each(|((xh, rs), x)| layernorm_normalise(x, d, xh, rs));
    let h1_cls = sized(&mut s.h1_cls, batch * d);
    for (b, row) in h1_cls.chunks_exact_mut(d).enumerate() {
        layernorm_affine(
            &s.xhat1[b * n * d..b * n * d + d],
            d,
            &p.ln_1_w,
            &p.ln_1_b,
            row,
        );
    }
    let q = sized(&mut s.q, batch * d);
    broadcast_rows(q, &p.in_proj_b[..d]);
    gemm.matmul(
        MatRef::new(&s.h1_cls, batch, d, d),
        MatRef::new(&p.in_proj_w[..d * d], d, d, d).t(),
        MatMut::new(q, batch, d, d),
        true,
    );
    let qt = sized(&mut s.qt, dims.heads * batch * d);
    folded_queries(gemm, dims, &s.q, &p.in_proj_w[d * d..2 * d * d], qt);
}

/// Forward of `batch` token sets (`[B, N, D]`): the saved activations, whose `embed`
/// holds the unnormalised embeddings.
pub fn forward(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &FrozenHead,
    tokens: &[f32],
    batch: usize,
) -> Saved {
    let mut s = Saved::default();
    forward_into(gemm, dims, p, head, tokens, batch, &mut s);
    s
}

/// [`forward`] into `s`, reusing its buffers.
pub fn forward_into(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &FrozenHead,
    tokens: &[f32],
    batch: usize,
    s: &mut Saved,
) {
    let (n, d, m, e, heads) = (dims.tokens, dims.width, dims.mlp, dims.embed, dims.heads);
    s.batch = batch;
    attention_inputs(gemm, dims, p, tokens, batch, s);

    let mut u = gemm.zeros(heads * batch * d);
    scale_rows(&s.qt, &p.ln_1_w, &mut u);
    let probs = sized(&mut s.probs, batch * heads * n);
    let abar = sized(&mut s.abar, batch * heads * d);
    attention_core_forward(gemm, dims, &s.xhat1, &u, probs, abar);
    // a = ā ⊙ w1 + b1 (the probabilities sum to 1), then o = W_v a + b_v per head.
    let a = recompute_affine(gemm, &s.abar, d, &p.ln_1_w, &p.ln_1_b);
    let attn = sized(&mut s.attn, batch * d);
    value_output(
        gemm,
        dims,
        &a,
        &p.in_proj_w[2 * d * d..],
        &p.in_proj_b[2 * d..],
        attn,
    );

    // x2 = x + attn·Woᵀ + bo (CLS rows)
    let mut x2 = gemm.zeros(batch * d);
    for (b, row) in x2.chunks_exact_mut(d).enumerate() {
        for ((x, &t), &bo) in row
            .iter_mut()
            .zip(&tokens[b * n * d..b * n * d + d])
            .zip(&p.out_proj_b)
        {
            *x = t + bo;
        }
    }
    gemm.matmul(
        MatRef::new(&s.attn, batch, d, d),
        MatRef::new(&p.out_proj_w, d, d, d).t(),
        MatMut::new(&mut x2, batch, d, d),
        true,
    );

    let mut h2 = gemm.zeros(batch * d);
    layernorm_forward(
        &x2,
        d,
        &p.ln_2_w,
        &p.ln_2_b,
        sized(&mut s.xhat2, batch * d),
        sized(&mut s.rstd2, batch),
        &mut h2,
    );
    let fc = sized(&mut s.act, batch * m);
    broadcast_rows(fc, &p.fc_b);
    gemm.matmul(
        MatRef::new(&h2, batch, d, d),
        MatRef::new(&p.fc_w, m, d, d).t(),
        MatMut::new(fc, batch, m, m),
        true,
    );
    quick_gelu_rows(fc, sized(&mut s.dact, batch * m), m);

    // x3 = x2 + act·Wpᵀ + bp
    let mut x3 = x2;
    for row in x3.chunks_exact_mut(d) {
        row.iter_mut().zip(&p.cproj_b).for_each(|(x, &b)| *x += b);
    }
    gemm.matmul(
        MatRef::new(&s.act, batch, m, m),
        MatRef::new(&p.cproj_w, d, m, m).t(),
        MatMut::new(&mut x3, batch, d, d),
        true,
    );

    let mut u_post = gemm.zeros(batch * d);
    layernorm_forward(
        &x3,
        d,
        &head.ln_post_w,
        &head.ln_post_b,
        sized(&mut s.xhat_post, batch * d),
        sized(&mut s.rstd_post, batch),
        &mut u_post,
    );
    let embed = sized(&mut s.embed, batch * e);
    gemm.matmul(
        MatRef::new(&u_post, batch, d, d),
        MatRef::new(&head.proj, d, e, e),
        MatMut::new(embed, batch, e, e),
        false,
    );
}

/// `h = xhat·w + b` recomputed from a saved LayerNorm output (in parallel by blocks of
/// rows: for `ā` it is `B·H` rows).
pub(crate) fn recompute_affine(
    gemm: &Gemm,
    xhat: &[f32],
    d: usize,
    w: &[f32],
    b: &[f32],
) -> AlignedVec {
    const ROWS: usize = 32;
    let mut y = gemm.zeros(xhat.len());
    y.par_chunks_mut(ROWS * d)
        .zip(xhat.par_chunks(ROWS * d))
        .for_each(|(y, x)| layernorm_affine(x, d, w, b, y));
    y
}

/// L2-normalises each row of width `e` in place (a zero row stays zero).
pub fn l2_normalise(x: &mut [f32], e: usize) {
    for row in x.chunks_exact_mut(e) {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// SPEC §5 CLS→patch weights (`[B, N−1]`), computed without the rest of the block.
pub fn cls_attention(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    tokens: &[f32],
    batch: usize,
) -> Vec<f32> {
    let mut s = Saved::default();
    attention_inputs(gemm, dims, p, tokens, batch, &mut s);
    let mut u = gemm.zeros(s.qt.len());
    scale_rows(&s.qt, &p.ln_1_w, &mut u);
    cls_patch_weights(gemm, dims, &s.xhat1, &u)
}
