//! Attention of the CLS query (the only query the embedding depends on), forward and
//! backward, without materialising keys, values or the LN1 output of the patch tokens.
//!
//! For image `b` and head `h` (rows `h·dh..(h+1)·dh` of `W_k`, `W_v`, with `s = 1/sqrt(dh)`),
//! LN1 output `h1_j = x̂_j ⊙ w1 + b1` of token `j`:
//! - scores `s_j = s·q_h·(W_k,h h1_j + b_k,h) = x̂_j·u_h + const` with `q̃_h = s·W_k,hᵀ q_h`
//!   and `u_h = w1 ⊙ q̃_h` (`[D]`); the constant (`b1·q̃_h` and the `b_k` term) is the same
//!   for every `j` and cancels in the softmax, so `b_k` has no effect (its gradient is
//!   exactly zero);
//! - output `o_h = Σ_j p_j (W_v,h h1_j + b_v,h) = W_v,h a_h + b_v,h` with
//!   `a_h = ā_h ⊙ w1 + b1` and `ā_h = Σ_j p_j x̂_j` (the `p_j` sum to 1).
//!
//! Per image this costs `O(heads·N·D)` for the scores and `ā`, and `O(D²)` for `q̃` and `o`,
//! instead of `O(N·D²)` for keys and values of every token; backward has the same shape.
//! The gradients of `w1` and `b1` come out of the same small products, so backward needs
//! no `[B·N, D]` buffer at all unless the input tokens' gradient is asked for.
//!
//! Layouts (`H` heads): `x̂` `[B·N, D]`; `q`, `o` `[B, D]`; `q̃`, `u`, and the per-head
//! products `[H, B, D]` (one contiguous block per head, written in parallel); `ā`
//! `[B, H, D]` and `probs` `[B, H, N]` (one contiguous block per image).

use rayon::prelude::*;

use super::forward::recompute_affine;
use super::params::BlockDims;
use super::wgrad::Weight;
use anytime_linalg::{Gemm, MatMut, MatRef};

/// Softmax of each row of width `n`, in place (max-subtracted).
pub(crate) fn softmax_rows(s: &mut [f32], n: usize) {
    for row in s.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `out[r] = x[r] ⊙ w` for every row of width `w.len()`.
pub(crate) fn scale_rows(x: &[f32], w: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(w.len())
        .zip(x.par_chunks(w.len()))
        .for_each(|(o, x)| {
            o.iter_mut()
                .zip(x)
                .zip(w)
                .for_each(|((o, &x), &w)| *o = x * w)
        });
}

/// Writes `[H, B, dh]` per-head blocks into `[B, D]` rows (heads concatenated), times `scale`.
fn heads_to_rows(dims: &BlockDims, blocks: &[f32], scale: f32, out: &mut [f32]) {
    let (d, dh) = (dims.width, dims.head_dim());
    let batch = out.len() / d;
    for (b, row) in out.chunks_exact_mut(d).enumerate() {
        for (h, seg) in row.chunks_exact_mut(dh).enumerate() {
            let src = &blocks[(h * batch + b) * dh..(h * batch + b + 1) * dh];
            seg.iter_mut().zip(src).for_each(|(o, &v)| *o = v * scale);
        }
    }
}

/// `q̃ = s·W_kᵀ q` per head: `qt` `[H, B, D]` from `q` `[B, D]` and `W_k` `[D, D]`.
pub(crate) fn folded_queries(gemm: &Gemm, dims: &BlockDims, q: &[f32], wk: &[f32], qt: &mut [f32]) {
    let (d, dh) = (dims.width, dims.head_dim());
    let batch = q.len() / d;
    let scale = 1.0 / (dh as f32).sqrt();
    qt.par_chunks_mut(batch * d)
        .enumerate()
        .for_each(|(h, out)| {
            let w = &wk[h * dh * d..(h + 1) * dh * d];
            gemm.matmul(
                MatRef::new(&q[h * dh..], batch, dh, d),
                MatRef::new(w, dh, d, d),
                MatMut::new(out, batch, d, d),
                false,
            );
            out.iter_mut().for_each(|v| *v *= scale);
        });
}

/// Scores of image `b` (`[H, N]`, softmax not applied) from its `x̂` rows and `u` (`[H, B, D]`).
fn image_scores(
    gemm: &Gemm,
    dims: &BlockDims,
    b: usize,
    batch: usize,
    xhat_b: &[f32],
    u: &[f32],
    s: &mut [f32],
) {
    let (n, d, heads) = (dims.tokens, dims.width, dims.heads);
    gemm.matmul(
        MatRef::new(&u[b * d..], heads, d, batch * d),
        MatRef::new(xhat_b, n, d, d).t(),
        MatMut::new(s, heads, n, n),
        false,
    );
}

/// Forward of the attention core: `probs` (`[B, H, N]`) and `ā` (`[B, H, D]`) from the LN1
/// normalised tokens `xhat` and `u = w1 ⊙ q̃` (`[H, B, D]`).
pub(crate) fn attention_core_forward(
    gemm: &Gemm,
    dims: &BlockDims,
    xhat: &[f32],
    u: &[f32],
    probs: &mut [f32],
    abar: &mut [f32],
) {
    let (n, d, heads) = (dims.tokens, dims.width, dims.heads);
    let batch = xhat.len() / (n * d);
    assert!(u.len() == heads * batch * d && abar.len() == u.len());
    assert_eq!(probs.len(), batch * heads * n);
    probs
        .par_chunks_mut(heads * n)
        .zip(abar.par_chunks_mut(heads * d))
        .enumerate()
        .for_each(|(b, (pb, ab))| {
            let xb = &xhat[b * n * d..(b + 1) * n * d];
            image_scores(gemm, dims, b, batch, xb, u, pb);
            softmax_rows(pb, n);
            gemm.matmul(
                MatRef::new(pb, heads, n, n),
                MatRef::new(xb, n, d, d),
                MatMut::new(ab, heads, d, d),
                false,
            );
        });
}

/// `o` (`[B, D]`, heads concatenated, before `out_proj`) from `a` (`[B, H, D]`), `W_v`
/// (`[D, D]`) and `b_v` (`[D]`).
pub(crate) fn value_output(
    gemm: &Gemm,
    dims: &BlockDims,
    a: &[f32],
    wv: &[f32],
    bv: &[f32],
    o: &mut [f32],
) {
    let (d, dh, heads) = (dims.width, dims.head_dim(), dims.heads);
    let batch = o.len() / d;
    let mut blocks = gemm.zeros(heads * batch * dh);
    blocks
        .par_chunks_mut(batch * dh)
        .enumerate()
        .for_each(|(h, out)| {
            let w = &wv[h * dh * d..(h + 1) * dh * d];
            gemm.matmul(
                MatRef::new(&a[h * d..], batch, d, heads * d),
                MatRef::new(w, dh, d, d).t(),
                MatMut::new(out, batch, dh, dh),
                false,
            );
        });
    heads_to_rows(dims, &blocks, 1.0, o);
    for row in o.chunks_exact_mut(d) {
        row.iter_mut().zip(bv).for_each(|(x, &b)| *x += b);
    }
}

/// Inputs of [`cls_attention_backward`] saved or recomputed from the forward.
pub(crate) struct AttentionSaved<'a> {
    /// LN1 normalised tokens `[B·N, D]`.
    pub xhat: &'a [f32],
    /// LN1 scale `w1` `[D]`.
    pub w1: &'a [f32],
    /// CLS queries `[B, D]`.
    pub q: &'a [f32],
    /// `q̃` `[H, B, D]`.
    pub qt: &'a [f32],
    /// `[B, H, N]`.
    pub probs: &'a [f32],
    /// `ā` `[B, H, D]`.
    pub abar: &'a [f32],
}

/// Gradients produced by [`cls_attention_backward`].
pub(crate) struct AttentionGrads<'a> {
    /// `[B, D]`, written.
    pub dq: &'a mut [f32],
    /// `[D]` each, written (`dbk` is zero).
    pub dbk: &'a mut [f32],
    pub dbv: &'a mut [f32],
    /// `[D]` each, **added to**: the LN1 scale and shift through `a` and the scores.
    pub dw1: &'a mut [f32],
    pub db1: &'a mut [f32],
    /// When given, `[B·N, D]`, **added to**: `d loss / d x̂` through the attention.
    pub dxhat: Option<&'a mut [f32]>,
}

/// Sums the rows of `parts` (`[P, D]`, one partial per head or image) into `out`, in order.
fn add_partials(parts: &[f32], out: &mut [f32]) {
    for p in parts.chunks_exact(out.len()) {
        out.iter_mut().zip(p).for_each(|(o, &v)| *o += v);
    }
}

/// Backward from `d_o` (`[B, D]`) given the forward's saved values (`s.q`, `q̃`, `probs`, `ā`)
/// and the weights `W_k`, `W_v`, which get their gradients (see [`Weight`]) once read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cls_attention_backward(
    gemm: &Gemm,
    dims: &BlockDims,
    s: &AttentionSaved<'_>,
    wk: Weight<'_>,
    wv: Weight<'_>,
    b1: &[f32],
    d_o: &[f32],
    g: AttentionGrads<'_>,
) {
    let (n, d, dh, heads) = (dims.tokens, dims.width, dims.head_dim(), dims.heads);
    let batch = s.q.len() / d;
    let w1 = s.w1;
    assert!(d_o.len() == s.q.len() && g.dq.len() == s.q.len());
    let scale = 1.0 / (dh as f32).sqrt();

    // a = ā ⊙ w1 + b1 again, `[B, H, D]`.
    let a = recompute_affine(gemm, s.abar, d, w1, b1);

    // o_h = W_v,h a_h + b_v,h: dW_v,h = d_o,hᵀ a_h and da_h = d_o,h W_v,h (`[H, B, D]`);
    // w1, b1 partials Σ_b da ⊙ ā, Σ_b da per head.
    let mut dabar = gemm.zeros(heads * batch * d);
    let mut part_w = gemm.zeros(heads * d);
    let mut part_b = gemm.zeros(heads * d);
    wv.chunks(dh * d)
        .into_par_iter()
        .zip(dabar.par_chunks_mut(batch * d))
        .zip(part_w.par_chunks_mut(d).zip(part_b.par_chunks_mut(d)))
        .enumerate()
        .for_each(|(h, ((wvh, da), (pw, pb)))| {
            let (dout, ah) = (&d_o[h * dh..], &a[h * d..]);
            gemm.matmul(
                MatRef::new(dout, batch, dh, d),
                MatRef::new(wvh.w(), dh, d, d),
                MatMut::new(da, batch, d, d),
                false,
            );
            wvh.grad(gemm, batch, d, dout, d, ah, heads * d, 1.0, false);
            for (b, dar) in da.chunks_exact_mut(d).enumerate() {
                let abr = &s.abar[(b * heads + h) * d..(b * heads + h + 1) * d];
                for ((((w, b), x), &a), &s) in pw
                    .iter_mut()
                    .zip(pb.iter_mut())
                    .zip(dar.iter_mut())
                    .zip(abr)
                    .zip(w1)
                {
                    *w += *x * a;
                    *b += *x;
                    *x *= s;
                }
            }
        });
    add_partials(&part_w, g.dw1);
    add_partials(&part_b, g.db1);
    g.dbv.fill(0.0);
    for row in d_o.chunks_exact(d) {
        g.dbv.iter_mut().zip(row).for_each(|(x, &v)| *x += v);
    }
    g.dbk.fill(0.0);

    // Per image: dp = dā·x̂ᵀ, the softmax rule ds = p (dp − Σ p dp), du = ds·x̂
    // (`[B, H, D]`), the w1 partial Σ_h du ⊙ q̃, and dq̃ = du ⊙ w1 in place.
    let mut ds = gemm.zeros(batch * heads * n);
    let mut du = gemm.zeros(batch * heads * d);
    let mut part_w = gemm.zeros(batch * d);
    ds.par_chunks_mut(heads * n)
        .zip(du.par_chunks_mut(heads * d))
        .zip(part_w.par_chunks_mut(d))
        .enumerate()
        .for_each(|(b, ((dsb, dub), pw))| {
            let xb = &s.xhat[b * n * d..(b + 1) * n * d];
            let pb = &s.probs[b * heads * n..(b + 1) * heads * n];
            gemm.matmul(
                MatRef::new(&dabar[b * d..], heads, d, batch * d),
                MatRef::new(xb, n, d, d).t(),
                MatMut::new(dsb, heads, n, n),
                false,
            );
            for (dsr, pr) in dsb.chunks_exact_mut(n).zip(pb.chunks_exact(n)) {
                let pdp: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                dsr.iter_mut()
                    .zip(pr)
                    .for_each(|(x, &p)| *x = p * (*x - pdp));
            }
            gemm.matmul(
                MatRef::new(dsb, heads, n, n),
                MatRef::new(xb, n, d, d),
                MatMut::new(dub, heads, d, d),
                false,
            );
            for (h, dur) in dub.chunks_exact_mut(d).enumerate() {
                let qr = &s.qt[(h * batch + b) * d..(h * batch + b + 1) * d];
                for (((w, x), &q), &s) in pw.iter_mut().zip(dur.iter_mut()).zip(qr).zip(w1) {
                    *w += *x * q;
                    *x *= s;
                }
            }
        });
    add_partials(&part_w, g.dw1);
    let dqt = du;

    // q̃_h = s·W_k,hᵀ q_h: dW_k,h = s·q_hᵀ dq̃_h, dq_h = s·dq̃_h W_k,hᵀ (`[H, B, dh]`).
    let mut dq_blocks = gemm.zeros(heads * batch * dh);
    wk.chunks(dh * d)
        .into_par_iter()
        .zip(dq_blocks.par_chunks_mut(batch * dh))
        .enumerate()
        .for_each(|(h, (wkh, dqh))| {
            let dq_tilde = &dqt[h * d..];
            gemm.matmul(
                MatRef::new(dq_tilde, batch, d, heads * d),
                MatRef::new(wkh.w(), dh, d, d).t(),
                MatMut::new(dqh, batch, dh, dh),
                false,
            );
            wkh.grad(
                gemm,
                batch,
                d,
                &s.q[h * dh..],
                d,
                dq_tilde,
                heads * d,
                scale,
                false,
            );
        });
    heads_to_rows(dims, &dq_blocks, scale, g.dq);

    // d x̂_j = Σ_h p_hj dā_h + ds_hj u_h, with u = w1 ⊙ q̃.
    if let Some(dxhat) = g.dxhat {
        let mut u = gemm.zeros(s.qt.len());
        scale_rows(s.qt, w1, &mut u);
        dxhat
            .par_chunks_mut(n * d)
            .enumerate()
            .for_each(|(b, dxb)| {
                let pb = &s.probs[b * heads * n..(b + 1) * heads * n];
                let dsb = &ds[b * heads * n..(b + 1) * heads * n];
                gemm.matmul(
                    MatRef::new(pb, heads, n, n).t(),
                    MatRef::new(&dabar[b * d..], heads, d, batch * d),
                    MatMut::new(dxb, n, d, d),
                    true,
                );
                gemm.matmul(
                    MatRef::new(dsb, heads, n, n).t(),
                    MatRef::new(&u[b * d..], heads, d, batch * d),
                    MatMut::new(dxb, n, d, d),
                    true,
                );
            });
    }
}

/// SPEC §5 weights of the patches: per head, softmax over the `N−1` patch keys of the CLS
/// query's scores (the CLS key left out), then the mean over heads. `[B, N−1]`, each row
/// sums to 1. `u = w1 ⊙ q̃` (`[H, B, D]`) as computed by the forward.
pub(crate) fn cls_patch_weights(
    gemm: &Gemm,
    dims: &BlockDims,
    xhat: &[f32],
    u: &[f32],
) -> Vec<f32> {
    let (n, d, heads) = (dims.tokens, dims.width, dims.heads);
    let batch = xhat.len() / (n * d);
    let mut out = vec![0.0f32; batch * (n - 1)];
    out.par_chunks_mut(n - 1).enumerate().for_each(|(b, w)| {
        let mut s = gemm.zeros(heads * n);
        image_scores(
            gemm,
            dims,
            b,
            batch,
            &xhat[b * n * d..(b + 1) * n * d],
            u,
            &mut s,
        );
        for row in s.chunks_exact_mut(n) {
            softmax_rows(&mut row[1..], n - 1);
            for (x, &p) in w.iter_mut().zip(&row[1..]) {
                *x += p / heads as f32;
            }
        }
    });
    out
}
