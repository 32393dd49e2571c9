//! Batched forward of the last block and its head, keeping what backward needs.
//!
//! Only the CLS output reaches the embedding, so LN1 runs on every token, and the query,
//! attention (see [`super::attention`]: keys and values are never materialised),
//! residuals, MLP and head run on the CLS rows only.

use super::attention::{cls_attention_forward, cls_patch_weights, folded};
use super::gemm::{matmul_nn, matmul_nt};
use super::layernorm::{layernorm_affine, layernorm_forward};
use super::params::{BlockDims, BlockParams, FrozenHead};

/// Activations saved by the forward pass for backward (`R = B·N` rows of all tokens).
#[derive(Clone, Debug, Default)]
pub struct Saved {
    pub batch: usize,
    /// LN1 normalised input, `[R, D]`, and its `1/σ`, `[R]`.
    pub xhat1: Vec<f32>,
    pub rstd1: Vec<f32>,
    /// CLS queries `[B, D]`.
    pub q: Vec<f32>,
    /// Queries folded through the keys' weights, `q̃ = W_kᵀ q / sqrt(dh)`, `[B, heads, D]`.
    pub qt: Vec<f32>,
    /// CLS attention probabilities `[B, heads, N]`.
    pub probs: Vec<f32>,
    /// Attention-weighted LN1 outputs `a = Σ_j p_j h1_j`, `[B, heads, D]`.
    pub av: Vec<f32>,
    /// Attention output before `out_proj`, `[B, D]`.
    pub attn: Vec<f32>,
    /// LN2 normalised CLS rows `[B, D]`, `[B]`.
    pub xhat2: Vec<f32>,
    pub rstd2: Vec<f32>,
    /// MLP pre-activation `[B, M]` (QuickGELU is recomputed in backward).
    pub fc: Vec<f32>,
    /// `ln_post` normalised CLS output `[B, D]`, `[B]`.
    pub xhat_post: Vec<f32>,
    pub rstd_post: Vec<f32>,
    /// Unnormalised embeddings `e = ln_post(CLS)·proj`, `[B, E]`.
    pub embed: Vec<f32>,
}

/// QuickGELU `x·σ(1.702x)`.
#[inline]
pub(crate) fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// Every row of `c` (`[rows, n]`) set to `bias` (`[n]`), to accumulate a product on top.
pub(crate) fn broadcast_rows(c: &mut [f32], bias: &[f32]) {
    for row in c.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// LN1 of every token and the CLS queries. Returns `(xhat1, rstd1, h1, q)`.
#[allow(clippy::type_complexity)]
pub(crate) fn attention_inputs(
    dims: &BlockDims,
    p: &BlockParams,
    tokens: &[f32],
    batch: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, d) = (dims.tokens, dims.width);
    let rows = batch * n;
    assert_eq!(tokens.len(), rows * d, "tokens must be [B, N, D]");
    let (mut xhat1, mut rstd1, mut h1) =
        (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows * d]);
    layernorm_forward(
        tokens, d, &p.ln_1_w, &p.ln_1_b, &mut xhat1, &mut rstd1, &mut h1,
    );
    let mut q = vec![0.0; batch * d];
    broadcast_rows(&mut q, &p.in_proj_b[..d]);
    matmul_nt(
        batch,
        d,
        d,
        &h1,
        n * d,
        &p.in_proj_w[..d * d],
        d,
        &mut q,
        d,
        true,
    );
    (xhat1, rstd1, h1, q)
}

/// Forward of `batch` token sets (`[B, N, D]`): the saved activations, whose `embed`
/// holds the unnormalised embeddings.
pub fn forward(
    dims: &BlockDims,
    p: &BlockParams,
    head: &FrozenHead,
    tokens: &[f32],
    batch: usize,
) -> Saved {
    let (n, d, m, e, heads) = (dims.tokens, dims.width, dims.mlp, dims.embed, dims.heads);
    let (xhat1, rstd1, h1, q) = attention_inputs(dims, p, tokens, batch);

    let (mut qt, mut av) = (vec![0.0; batch * heads * d], vec![0.0; batch * heads * d]);
    let mut probs = vec![0.0; batch * heads * n];
    let mut attn = vec![0.0; batch * d];
    let (wk, wv) = (&p.in_proj_w[d * d..2 * d * d], &p.in_proj_w[2 * d * d..]);
    let bv = &p.in_proj_b[2 * d..];
    cls_attention_forward(
        dims, &h1, &q, wk, wv, bv, &mut qt, &mut probs, &mut av, &mut attn,
    );
    drop(h1);

    // x2 = x + attn·Woᵀ + bo (CLS rows)
    let mut x2 = vec![0.0; batch * d];
    for (b, row) in x2.chunks_exact_mut(d).enumerate() {
        for ((x, &t), &bo) in row
            .iter_mut()
            .zip(&tokens[b * n * d..b * n * d + d])
            .zip(&p.out_proj_b)
        {
            *x = t + bo;
        }
    }
    matmul_nt(batch, d, d, &attn, d, &p.out_proj_w, d, &mut x2, d, true);

    let (mut xhat2, mut rstd2, mut h2) =
        (vec![0.0; batch * d], vec![0.0; batch], vec![0.0; batch * d]);
    layernorm_forward(
        &x2, d, &p.ln_2_w, &p.ln_2_b, &mut xhat2, &mut rstd2, &mut h2,
    );
    let mut fc = vec![0.0; batch * m];
    broadcast_rows(&mut fc, &p.fc_b);
    matmul_nt(batch, d, m, &h2, d, &p.fc_w, d, &mut fc, m, true);
    let act: Vec<f32> = fc.iter().map(|&x| quick_gelu(x)).collect();

    // x3 = x2 + act·Wpᵀ + bp
    let mut x3 = x2;
    for row in x3.chunks_exact_mut(d) {
        row.iter_mut().zip(&p.cproj_b).for_each(|(x, &b)| *x += b);
    }
    matmul_nt(batch, m, d, &act, m, &p.cproj_w, m, &mut x3, d, true);

    let (mut xhat_post, mut rstd_post, mut u) =
        (vec![0.0; batch * d], vec![0.0; batch], vec![0.0; batch * d]);
    layernorm_forward(
        &x3,
        d,
        &head.ln_post_w,
        &head.ln_post_b,
        &mut xhat_post,
        &mut rstd_post,
        &mut u,
    );
    let mut embed = vec![0.0; batch * e];
    matmul_nn(batch, d, e, &u, d, &head.proj, e, &mut embed, e, false);

    Saved {
        batch,
        xhat1,
        rstd1,
        q,
        qt,
        probs,
        av,
        attn,
        xhat2,
        rstd2,
        fc,
        xhat_post,
        rstd_post,
        embed,
    }
}

/// `h = xhat·w + b` recomputed from a saved LayerNorm output.
pub(crate) fn recompute_affine(xhat: &[f32], d: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; xhat.len()];
    layernorm_affine(xhat, d, w, b, &mut y);
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
pub fn cls_attention(dims: &BlockDims, p: &BlockParams, tokens: &[f32], batch: usize) -> Vec<f32> {
    let d = dims.width;
    let (_, _, h1, q) = attention_inputs(dims, p, tokens, batch);
    let qt = folded(dims, &q, &p.in_proj_w[d * d..2 * d * d]);
    cls_patch_weights(dims, &h1, &qt)
}
