//! Backward of the last block and its frozen head, from `d loss / d e` (unnormalised
//! embeddings) to the block's parameter gradients and `d loss / d tokens`.
//!
//! The rules mirror [`super::forward::forward`] in reverse; each GEMM's gradient is the
//! usual pair `dW = dYᵀ·X`, `dX = dY·W` (PyTorch `Linear` layout `y = x Wᵀ + b`).

use rayon::prelude::*;

use super::attention::{cls_attention_backward, AttentionGrads, AttentionSaved};
use super::forward::{recompute_affine, zeros, Saved};
use super::gemm::{matmul_nn, matmul_nt, matmul_tn};
use super::layernorm::{layernorm_backward, normalise_backward};
use super::params::{BlockDims, BlockParams, FrozenHead};

/// Column sums of `dy` (`[rows, n]`) written to `db` (`[n]`).
fn bias_grad(dy: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    for row in dy.chunks_exact(db.len()) {
        db.iter_mut().zip(row).for_each(|(g, &x)| *g += x);
    }
}

/// Overwrites `grads` with the parameter gradients given `d_embed` (`[B, E]`) and the
/// forward's `saved` activations, and, when `d_tokens` (`[B, N, D]`) is given, overwrites
/// it with the input tokens' gradient. A training step leaves it out: the tokens come
/// from the frozen trunk, and without it backward touches no `[B·N, D]` buffer but the
/// saved LN1 output.
pub fn backward(
    dims: &BlockDims,
    p: &BlockParams,
    head: &FrozenHead,
    saved: &Saved,
    d_embed: &[f32],
    grads: &mut BlockParams,
    d_tokens: Option<&mut [f32]>,
) {
    let (n, d, m, e) = (dims.tokens, dims.width, dims.mlp, dims.embed);
    let batch = saved.batch;
    let rows = batch * n;
    assert_eq!(d_embed.len(), batch * e, "d_embed must be [B, E]");
    if let Some(dt) = &d_tokens {
        assert_eq!(dt.len(), rows * d, "d_tokens must be [B, N, D]");
    }
    assert!(
        grads.matches(dims),
        "gradient buffers do not match the dims"
    );

    // Head: e = u·proj (frozen), u = ln_post(x3).
    let mut du = vec![0.0; batch * d];
    matmul_nt(batch, e, d, d_embed, e, &head.proj, e, &mut du, d, false);
    let mut dx3 = vec![0.0; batch * d];
    layernorm_backward(
        &du,
        &saved.xhat_post,
        &saved.rstd_post,
        &head.ln_post_w,
        &mut dx3,
        None,
    );

    // MLP: x3 = x2 + act·Wpᵀ + bp, act = qgelu(fc), fc = h2·Wfcᵀ + bfc.
    matmul_tn(
        d,
        batch,
        m,
        &dx3,
        d,
        &saved.act,
        m,
        &mut grads.cproj_w,
        m,
        false,
    );
    bias_grad(&dx3, &mut grads.cproj_b);
    let mut dfc = zeros(batch * m);
    matmul_nn(batch, d, m, &dx3, d, &p.cproj_w, m, &mut dfc, m, false);
    dfc.iter_mut().zip(&saved.dact).for_each(|(g, &s)| *g *= s);
    let h2 = recompute_affine(&saved.xhat2, d, &p.ln_2_w, &p.ln_2_b);
    matmul_tn(m, batch, d, &dfc, m, &h2, d, &mut grads.fc_w, d, false);
    bias_grad(&dfc, &mut grads.fc_b);
    let mut dh2 = vec![0.0; batch * d];
    matmul_nn(batch, m, d, &dfc, m, &p.fc_w, d, &mut dh2, d, false);

    // LN2 and the first residual: dx2 = dx3 + LN2ᵀ(dh2).
    let mut dx2 = dx3;
    grads.ln_2_w.fill(0.0);
    grads.ln_2_b.fill(0.0);
    layernorm_backward(
        &dh2,
        &saved.xhat2,
        &saved.rstd2,
        &p.ln_2_w,
        &mut dx2,
        Some((&mut grads.ln_2_w, &mut grads.ln_2_b)),
    );

    // out_proj: x2 = x + attn·Woᵀ + bo.
    matmul_tn(
        d,
        batch,
        d,
        &dx2,
        d,
        &saved.attn,
        d,
        &mut grads.out_proj_w,
        d,
        false,
    );
    bias_grad(&dx2, &mut grads.out_proj_b);
    let mut dattn = vec![0.0; batch * d];
    matmul_nn(batch, d, d, &dx2, d, &p.out_proj_w, d, &mut dattn, d, false);

    // Attention of the CLS query, then q = h1_cls·Wqᵀ + bq.
    let mut dxhat = d_tokens.as_ref().map(|_| vec![0.0f32; rows * d]);
    let mut dq = vec![0.0; batch * d];
    let (wq, wkv) = p.in_proj_w.split_at(d * d);
    let (wk, wv) = wkv.split_at(d * d);
    grads.ln_1_w.fill(0.0);
    grads.ln_1_b.fill(0.0);
    {
        let (gq, gkv) = grads.in_proj_w.split_at_mut(d * d);
        let (gk, gv) = gkv.split_at_mut(d * d);
        let (gbq, gbkv) = grads.in_proj_b.split_at_mut(d);
        let (gbk, gbv) = gbkv.split_at_mut(d);
        let g = AttentionGrads {
            dq: &mut dq,
            dwk: gk,
            dwv: gv,
            dbk: gbk,
            dbv: gbv,
            dw1: &mut grads.ln_1_w,
            db1: &mut grads.ln_1_b,
            dxhat: dxhat.as_deref_mut(),
        };
        let s = AttentionSaved {
            xhat: &saved.xhat1,
            w1: &p.ln_1_w,
            q: &saved.q,
            qt: &saved.qt,
            probs: &saved.probs,
            abar: &saved.abar,
        };
        cls_attention_backward(dims, &s, wk, wv, &p.ln_1_b, &dattn, g);
        matmul_tn(d, batch, d, &dq, d, &saved.h1_cls, d, gq, d, false);
        bias_grad(&dq, gbq);
    }
    let mut dh1_cls = vec![0.0; batch * d];
    matmul_nn(batch, d, d, &dq, d, wq, d, &mut dh1_cls, d, false);

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
