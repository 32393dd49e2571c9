//! Attention of the CLS query (the only query the embedding depends on), forward and
//! backward, without materialising keys or values.
//!
//! For image `b` and head `h` (rows `h·dh..(h+1)·dh` of `W_k`, `W_v`, with `s = 1/sqrt(dh)`):
//! - scores `s_j = s·q_h·(W_k,h h1_j + b_k,h) = h1_j·q̃_h + const` with `q̃_h = s·W_k,hᵀ q_h`
//!   (`[D]`); the constant is the same for every `j` and cancels in the softmax, so `b_k`
//!   has no effect (its gradient is exactly zero);
//! - output `o_h = Σ_j p_j (W_v,h h1_j + b_v,h) = W_v,h a_h + b_v,h` with `a_h = Σ_j p_j h1_j`.
//!
//! Per image this costs `O(heads·N·D)` for the scores and `a`, and `O(D²)` for `q̃` and `o`,
//! instead of `O(N·D²)` for keys and values of every token; backward has the same shape.
//! Layouts: `h1` `[B·N, D]`; `q`, `o` `[B, D]`; `qt` (q̃), `av` (a) `[B, heads, D]`;
//! `probs` `[B, heads, N]`.

use super::gemm::{matmul_nn, matmul_nt, matmul_tn};
use super::params::BlockDims;

/// Softmax of each row of width `n`, in place (max-subtracted).
fn softmax_rows(s: &mut [f32], n: usize) {
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

/// `q̃ = s·W_kᵀ q` per head: `qt` `[B, heads, D]` from `q` `[B, D]` and `W_k` `[D, D]`.
fn folded_queries(dims: &BlockDims, q: &[f32], wk: &[f32], qt: &mut [f32]) {
    let (d, dh, heads) = (dims.width, dims.head_dim(), dims.heads);
    let batch = q.len() / d;
    for h in 0..heads {
        let (a, w) = (&q[h * dh..], &wk[h * dh * d..(h + 1) * dh * d]);
        matmul_nn(batch, dh, d, a, d, w, d, &mut qt[h * d..], heads * d, false);
    }
    let scale = 1.0 / (dh as f32).sqrt();
    qt.iter_mut().for_each(|v| *v *= scale);
}

/// Scores `[B, heads, N]` (softmax not applied) from `h1` and `qt`.
fn scores(dims: &BlockDims, h1: &[f32], qt: &[f32], s: &mut [f32]) {
    let (n, d, heads) = (dims.tokens, dims.width, dims.heads);
    for (b, sb) in s.chunks_exact_mut(heads * n).enumerate() {
        let (qb, hb) = (
            &qt[b * heads * d..(b + 1) * heads * d],
            &h1[b * n * d..(b + 1) * n * d],
        );
        matmul_nt(heads, d, n, qb, d, hb, d, sb, n, false);
    }
}

/// Forward: writes `qt`, `probs`, `av` and the attention output `o` (`[B, D]`, heads
/// concatenated, before `out_proj`). `wk`, `wv` are `[D, D]`, `bv` is `[D]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cls_attention_forward(
    dims: &BlockDims,
    h1: &[f32],
    q: &[f32],
    wk: &[f32],
    wv: &[f32],
    bv: &[f32],
    qt: &mut [f32],
    probs: &mut [f32],
    av: &mut [f32],
    o: &mut [f32],
) {
    let (n, d, dh, heads) = (dims.tokens, dims.width, dims.head_dim(), dims.heads);
    let batch = q.len() / d;
    assert!(h1.len() == batch * n * d && o.len() == q.len());
    assert!(
        qt.len() == batch * heads * d && av.len() == qt.len() && probs.len() == batch * heads * n
    );
    folded_queries(dims, q, wk, qt);
    scores(dims, h1, qt, probs);
    softmax_rows(probs, n);
    for b in 0..batch {
        let (pb, hb) = (
            &probs[b * heads * n..(b + 1) * heads * n],
            &h1[b * n * d..(b + 1) * n * d],
        );
        matmul_nn(
            heads,
            n,
            d,
            pb,
            n,
            hb,
            d,
            &mut av[b * heads * d..(b + 1) * heads * d],
            d,
            false,
        );
    }
    for row in o.chunks_exact_mut(d) {
        row.copy_from_slice(bv);
    }
    for h in 0..heads {
        let w = &wv[h * dh * d..(h + 1) * dh * d];
        matmul_nt(
            batch,
            d,
            dh,
            &av[h * d..],
            heads * d,
            w,
            d,
            &mut o[h * dh..],
            d,
            true,
        );
    }
}

/// Gradients produced by [`cls_attention_backward`].
pub(crate) struct AttentionGrads<'a> {
    /// `[B, D]`, written.
    pub dq: &'a mut [f32],
    /// `[D, D]` each, written.
    pub dwk: &'a mut [f32],
    pub dwv: &'a mut [f32],
    /// `[D]` each, written (`dbk` is zero).
    pub dbk: &'a mut [f32],
    pub dbv: &'a mut [f32],
    /// `[B·N, D]`, **added to**.
    pub dh1: &'a mut [f32],
}

/// Backward from `d_o` (`[B, D]`) given the forward's inputs and saved `qt`, `probs`, `av`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cls_attention_backward(
    dims: &BlockDims,
    h1: &[f32],
    q: &[f32],
    wk: &[f32],
    wv: &[f32],
    qt: &[f32],
    probs: &[f32],
    av: &[f32],
    d_o: &[f32],
    g: AttentionGrads<'_>,
) {
    let (n, d, dh, heads) = (dims.tokens, dims.width, dims.head_dim(), dims.heads);
    let batch = q.len() / d;
    assert!(d_o.len() == q.len() && g.dq.len() == q.len() && g.dh1.len() == h1.len());
    let scale = 1.0 / (dh as f32).sqrt();

    // o_h = W_v,h a_h + b_v,h
    let mut dav = vec![0.0f32; batch * heads * d];
    for h in 0..heads {
        let (w, gw) = (
            &wv[h * dh * d..(h + 1) * dh * d],
            &mut g.dwv[h * dh * d..(h + 1) * dh * d],
        );
        matmul_tn(
            dh,
            batch,
            d,
            &d_o[h * dh..],
            d,
            &av[h * d..],
            heads * d,
            gw,
            d,
            false,
        );
        matmul_nn(
            batch,
            dh,
            d,
            &d_o[h * dh..],
            d,
            w,
            d,
            &mut dav[h * d..],
            heads * d,
            false,
        );
    }
    g.dbv.fill(0.0);
    for row in d_o.chunks_exact(d) {
        g.dbv.iter_mut().zip(row).for_each(|(x, &v)| *x += v);
    }
    g.dbk.fill(0.0);

    // a_h = Σ_j p_j h1_j and scores s_j = h1_j·q̃_h, per image.
    let mut dqt = vec![0.0f32; batch * heads * d];
    let mut ds = vec![0.0f32; heads * n];
    for b in 0..batch {
        let (hr, pr, vr) = (
            b * n * d..(b + 1) * n * d,
            b * heads * n..(b + 1) * heads * n,
            b * heads * d..(b + 1) * heads * d,
        );
        let (hb, pb) = (&h1[hr.clone()], &probs[pr]);
        // dp = da·h1ᵀ, then the softmax rule ds = p (dp − Σ p dp).
        matmul_nt(heads, d, n, &dav[vr.clone()], d, hb, d, &mut ds, n, false);
        for (dsr, pr) in ds.chunks_exact_mut(n).zip(pb.chunks_exact(n)) {
            let pdp: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dsr.iter_mut()
                .zip(pr)
                .for_each(|(x, &p)| *x = p * (*x - pdp));
        }
        // dh1 += pᵀ·da + dsᵀ·q̃ ; dq̃ = ds·h1
        let dh1b = &mut g.dh1[hr];
        matmul_tn(n, heads, d, pb, n, &dav[vr.clone()], d, dh1b, d, true);
        matmul_tn(n, heads, d, &ds, n, &qt[vr.clone()], d, dh1b, d, true);
        matmul_nn(heads, n, d, &ds, n, hb, d, &mut dqt[vr], d, false);
    }

    // q̃_h = s·W_k,hᵀ q_h
    for h in 0..heads {
        let (w, gw) = (
            &wk[h * dh * d..(h + 1) * dh * d],
            &mut g.dwk[h * dh * d..(h + 1) * dh * d],
        );
        matmul_tn(
            dh,
            batch,
            d,
            &q[h * dh..],
            d,
            &dqt[h * d..],
            heads * d,
            gw,
            d,
            false,
        );
        gw.iter_mut().for_each(|v| *v *= scale);
        matmul_nt(
            batch,
            d,
            dh,
            &dqt[h * d..],
            heads * d,
            w,
            d,
            &mut g.dq[h * dh..],
            d,
            false,
        );
    }
    g.dq.iter_mut().for_each(|v| *v *= scale);
}

/// SPEC §5 weights of the patches: per head, softmax over the `N−1` patch keys of the CLS
/// query's scores (the CLS key left out), then the mean over heads. `[B, N−1]`, each row
/// sums to 1. `qt` as computed by the forward.
pub(crate) fn cls_patch_weights(dims: &BlockDims, h1: &[f32], qt: &[f32]) -> Vec<f32> {
    let (n, heads) = (dims.tokens, dims.heads);
    let batch = qt.len() / (heads * dims.width);
    let mut s = vec![0.0f32; batch * heads * n];
    scores(dims, h1, qt, &mut s);
    let mut out = vec![0.0f32; batch * (n - 1)];
    for (b, w) in out.chunks_exact_mut(n - 1).enumerate() {
        for h in 0..heads {
            let row = &mut s[(b * heads + h) * n..(b * heads + h + 1) * n];
            softmax_rows(&mut row[1..], n - 1);
            for (x, &p) in w.iter_mut().zip(&row[1..]) {
                *x += p / heads as f32;
            }
        }
    }
    out
}

/// `q̃` for the CLS→patch weights without the rest of the forward.
pub(crate) fn folded(dims: &BlockDims, q: &[f32], wk: &[f32]) -> Vec<f32> {
    let mut qt = vec![0.0f32; q.len() / dims.width * dims.heads * dims.width];
    folded_queries(dims, q, wk, &mut qt);
    qt
}
