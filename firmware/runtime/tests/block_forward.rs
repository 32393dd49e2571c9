//! Forward of the last block against a naive full-block reference (every token through
//! attention and MLP, plain loops), and the CLS→patch weights.

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead, LastBlock};
use anytime_testkit::close;
use rand::{rngs::StdRng, Rng, SeedableRng};

mod dense_common;
use dense_common::*;

const DIMS: BlockDims = BlockDims {
    width: 16,
    heads: 4,
    mlp: 32,
    tokens: 7,
    embed: 6,
};

/// The whole block for one image, every token, in f64: returns (unnormalised embedding,
/// per-head CLS attention probabilities `[heads][N]`).
fn naive(d: &BlockDims, p: &BlockParams, h: &FrozenHead, x: &[f32]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (n, w, dh) = (d.tokens, d.width, d.head_dim());
    let x: Vec<Vec<f64>> = (0..n)
        .map(|t| x[t * w..(t + 1) * w].iter().map(|&v| v as f64).collect())
        .collect();
    let h1: Vec<Vec<f64>> = x
        .iter()
        .map(|r| layernorm(r, &p.ln_1_w, &p.ln_1_b))
        .collect();
    let qkv: Vec<Vec<f64>> = h1
        .iter()
        .map(|r| linear(r, &p.in_proj_w, &p.in_proj_b))
        .collect();
    let mut attn = vec![vec![0.0; w]; n];
    let mut cls_probs = vec![];
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
            let pr: Vec<f64> = s.iter().map(|v| (v - mx).exp() / z).collect();
            for c in 0..dh {
                attn[i][hd * dh + c] = (0..n).map(|j| pr[j] * qkv[j][2 * w + hd * dh + c]).sum();
            }
            if i == 0 {
                cls_probs.push(pr);
            }
        }
    }
    let x2: Vec<Vec<f64>> = (0..n)
        .map(|t| {
            let a = linear(&attn[t], &p.out_proj_w, &p.out_proj_b);
            x[t].iter().zip(&a).map(|(u, v)| u + v).collect()
        })
        .collect();
    let x3: Vec<Vec<f64>> = x2
        .iter()
        .map(|r| {
            let f = linear(&layernorm(r, &p.ln_2_w, &p.ln_2_b), &p.fc_w, &p.fc_b);
            let g: Vec<f64> = f.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect();
            let o = linear(&g, &p.cproj_w, &p.cproj_b);
            r.iter().zip(&o).map(|(u, v)| u + v).collect()
        })
        .collect();
    let u = layernorm(&x3[0], &h.ln_post_w, &h.ln_post_b);
    let e = (0..d.embed)
        .map(|k| (0..w).map(|i| u[i] * h.proj[i * d.embed + k] as f64).sum())
        .collect();
    (e, cls_probs)
}

fn block() -> LastBlock {
    LastBlock::new(
        DIMS,
        BlockParams::random(&DIMS, 1),
        FrozenHead::random(&DIMS, 2),
    )
}

fn tokens(batch: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..batch * DIMS.tokens_len())
        .map(|_| rng.gen_range(-2.0f32..2.0))
        .collect()
}

#[test]
fn block_forward_matches_naive_full_block() {
    let (blk, batch) = (block(), 3);
    let x = tokens(batch, 3);
    let raw = blk.forward_raw(&x, batch);
    let z = blk.forward_embeddings(&x, batch);
    for b in 0..batch {
        let (want, _) = naive(
            &DIMS,
            &blk.params,
            &blk.head,
            &x[b * DIMS.tokens_len()..(b + 1) * DIMS.tokens_len()],
        );
        let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
        for k in 0..DIMS.embed {
            let got = raw[b * DIMS.embed + k] as f64;
            assert!(
                close(got, want[k], 1e-4, 1e-4),
                "raw[{b},{k}] {got} vs {}",
                want[k]
            );
            let gz = z[b * DIMS.embed + k] as f64;
            assert!(close(gz, want[k] / norm, 1e-5, 0.0), "z[{b},{k}]");
        }
    }
}

#[test]
fn block_forward_is_per_image() {
    let blk = block();
    let x = tokens(4, 5);
    let all = blk.forward_embeddings(&x, 4);
    let one = blk.forward_embeddings(&x[2 * DIMS.tokens_len()..3 * DIMS.tokens_len()], 1);
    assert_eq!(&all[2 * DIMS.embed..3 * DIMS.embed], &one[..]);
}

#[test]
fn block_cls_attention_sums_to_one_and_matches_naive() {
    let (blk, batch) = (block(), 2);
    let x = tokens(batch, 7);
    let w = blk.cls_attention(&x, batch);
    let n = DIMS.tokens;
    assert_eq!(w.len(), batch * (n - 1));
    for b in 0..batch {
        let row = &w[b * (n - 1)..(b + 1) * (n - 1)];
        assert!(close(row.iter().sum::<f32>(), 1.0, 1e-5, 0.0));
        let (_, probs) = naive(
            &DIMS,
            &blk.params,
            &blk.head,
            &x[b * DIMS.tokens_len()..(b + 1) * DIMS.tokens_len()],
        );
        for i in 0..n - 1 {
            // Per head: renormalise the patch part of the CLS row, then average.
            let want: f64 =
                probs.iter().map(|p| p[i + 1] / (1.0 - p[0])).sum::<f64>() / DIMS.heads as f64;
            assert!(
                close(row[i] as f64, want, 1e-5, 0.0),
                "w[{b},{i}] {} vs {want}",
                row[i]
            );
        }
    }
}
