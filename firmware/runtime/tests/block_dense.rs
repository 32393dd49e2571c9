//! The dense block (every token through the block): its forward against a naive f64 full
//! block and, on the CLS row through the frozen head, against the CLS-only path; its
//! backward by finite differences; its bits on 1 and 3 threads.
//!
//! Finite differences: central, in f64, of `L = Σ r·out` (a fixed random `r`), on every
//! coordinate of every block tensor and every input token, step `h = 1e-2·max(1, |x|)`;
//! `|fd − g| ≤ 1e-3·max(|fd|, |g|) + 1e-3·max|g over the tensor|`: 2 % errors planted in
//! single backward rules fail it. Forward comparisons allow f32 rounding (5e-6 abs + rel).

use anytime_linalg::Gemm;
use anytime_runtime::block::{
    block_tensor_shapes, dense_backward, dense_forward, forward, BlockDims, BlockParams, FrozenHead,
};
use anytime_testkit::{assert_close, max_abs};

mod dense_common;
use dense_common::*;

/// The whole block for one image in f64, plain loops: every output token, `[N, D]`.
fn naive_block(d: &BlockDims, p: &BlockParams, x: &[f32]) -> Vec<f64> {
    let (n, w, dh) = (d.tokens, d.width, d.head_dim());
    let x: Vec<Vec<f64>> = x
        .chunks(w)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let qkv: Vec<Vec<f64>> = x
        .iter()
        .map(|r| {
            linear(
                &layernorm(r, &p.ln_1_w, &p.ln_1_b),
                &p.in_proj_w,
                &p.in_proj_b,
            )
        })
        .collect();
    let mut attn = vec![vec![0.0; w]; n];
    for hd in 0..d.heads {
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..dh)
                        .map(|c| qkv[i][hd * dh + c] * qkv[j][w + hd * dh + c])
                        .sum::<f64>()
                        / (dh as f64).sqrt()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
            for c in 0..dh {
                attn[i][hd * dh + c] = (0..n)
                    .map(|j| (s[j] - mx).exp() / z * qkv[j][2 * w + hd * dh + c])
                    .sum();
            }
        }
    }
    (0..n)
        .flat_map(|t| {
            let a = linear(&attn[t], &p.out_proj_w, &p.out_proj_b);
            let x2: Vec<f64> = x[t].iter().zip(&a).map(|(u, v)| u + v).collect();
            let f = linear(&layernorm(&x2, &p.ln_2_w, &p.ln_2_b), &p.fc_w, &p.fc_b);
            let g: Vec<f64> = f.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect();
            let o = linear(&g, &p.cproj_w, &p.cproj_b);
            x2.iter().zip(&o).map(|(u, v)| u + v).collect::<Vec<_>>()
        })
        .collect()
}

/// `ln_post` and `proj` of one output row, in f64.
fn head_embed(d: &BlockDims, h: &FrozenHead, row: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = row.iter().map(|&v| v as f64).collect();
    let u = layernorm(&x, &h.ln_post_w, &h.ln_post_b);
    (0..d.embed)
        .map(|k| {
            (0..d.width)
                .map(|i| u[i] * h.proj[i * d.embed + k] as f64)
                .sum()
        })
        .collect()
}

#[test]
fn dense_forward_matches_a_naive_full_block_on_every_token() {
    let gemm = Gemm::default();
    for (dims, batch, seed) in [(SMALL, 3, 1), (WIDE, 2, 2)] {
        let p = BlockParams::random(&dims, seed);
        let x = random(batch * dims.tokens_len(), 2.0, seed + 10);
        let s = dense_forward(&gemm, &dims, &p, &x, batch);
        let want: Vec<f64> = x
            .chunks(dims.tokens_len())
            .flat_map(|img| naive_block(&dims, &p, img))
            .collect();
        assert_close(&format!("{dims:?}"), &s.out, &want, 5e-6, 5e-6);
    }
}

/// The dense CLS row through the frozen head is the CLS-only path's embedding.
#[test]
fn dense_cls_row_through_the_head_matches_the_cls_only_forward() {
    let gemm = Gemm::default();
    for (dims, batch, seed) in [(SMALL, 3, 3), (WIDE, 2, 4)] {
        let p = BlockParams::random(&dims, seed);
        let head = FrozenHead::random(&dims, seed + 1);
        let x = random(batch * dims.tokens_len(), 2.0, seed + 10);
        let cls = forward(&gemm, &dims, &p, &head, &x, batch);
        let dense = dense_forward(&gemm, &dims, &p, &x, batch);
        let got: Vec<f64> = dense
            .out
            .chunks(dims.tokens_len())
            .flat_map(|img| head_embed(&dims, &head, &img[..dims.width]))
            .collect();
        assert_close(&format!("{dims:?}"), &got, &cls.embed, 5e-6, 5e-6);
    }
}

/// `Σ r·out` in f64.
fn objective(gemm: &Gemm, dims: &BlockDims, p: &BlockParams, x: &[f32], r: &[f32]) -> f64 {
    let batch = x.len() / dims.tokens_len();
    let s = dense_forward(gemm, dims, p, x, batch);
    s.out
        .iter()
        .zip(r)
        .map(|(&o, &r)| o as f64 * r as f64)
        .sum()
}

#[test]
fn dense_backward_matches_finite_differences_everywhere() {
    let (gemm, dims, batch) = (Gemm::default(), SMALL, 2);
    let p = BlockParams::random(&dims, 5);
    let x = random(batch * dims.tokens_len(), 1.5, 6);
    let r = random(x.len(), 1.0, 7);
    let s = dense_forward(&gemm, &dims, &p, &x, batch);
    let mut g = BlockParams::zeros(&dims);
    let mut gx = vec![f32::NAN; x.len()];
    dense_backward(&gemm, &dims, &p, &s, &r, &mut g, Some(&mut gx));

    let mut failures = vec![];
    for (t, (name, _)) in block_tensor_shapes(&dims).iter().enumerate() {
        let gt = g.tensors()[t];
        let scale = max_abs(gt);
        assert!(scale > 0.0, "{name}: gradient all zero");
        for (i, &gi) in gt.iter().enumerate() {
            let mut q = p.clone();
            let fd = central(p.tensors()[t][i], |v| {
                q.tensors_mut()[t][i] = v;
                objective(&gemm, &dims, &q, &x, &r)
            });
            if !agrees(fd, gi, scale) {
                failures.push(format!("{name}[{i}]: fd {fd:e} vs {gi:e}"));
            }
        }
    }
    let scale = max_abs(&gx);
    for (i, &gi) in gx.iter().enumerate() {
        let mut y = x.clone();
        let fd = central(x[i], |v| {
            y[i] = v;
            objective(&gemm, &dims, &p, &y, &r)
        });
        if !agrees(fd, gi, scale) {
            failures.push(format!("tokens[{i}]: fd {fd:e} vs {gi:e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Forward and backward in a pool of `threads`: the output, every gradient and the input
/// tokens' gradient, as bits.
fn run_on(threads: usize, dims: &BlockDims, batch: usize) -> Vec<Vec<u32>> {
    let gemm = Gemm::default();
    let p = BlockParams::random(dims, 8);
    let x = random(batch * dims.tokens_len(), 2.0, 9);
    let r = random(x.len(), 1.0, 10);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let s = dense_forward(&gemm, dims, &p, &x, batch);
        let mut g = BlockParams::zeros(dims);
        let mut gx = vec![0.0; x.len()];
        dense_backward(&gemm, dims, &p, &s, &r, &mut g, Some(&mut gx));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut all = vec![bits(&s.out), bits(&gx)];
        all.extend(g.tensors().iter().map(|t| bits(t)));
        all
    })
}

#[test]
fn dense_block_gives_the_same_bits_on_1_and_3_threads() {
    // Large enough that the GEMMs split across threads.
    let dims = BlockDims {
        width: 64,
        heads: 4,
        mlp: 256,
        tokens: 50,
        embed: 16,
    };
    assert_eq!(run_on(1, &dims, 4), run_on(3, &dims, 4));
}
