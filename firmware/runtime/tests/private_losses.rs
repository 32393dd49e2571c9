//! SPEC §7's generator losses, each against an f64 reference written from its definition,
//! and each gradient by central finite differences of that reference: confidence and
//! diversity through the frozen snapshot to the input tokens (the reference runs the
//! block's CLS path in f64), both also at the logits; statistics alignment and smoothness
//! at the tokens.
//!
//! Finite differences: central, in f64, step `h = 1e-5·max(1, |x|)` (`1e-6` at the
//! logits), on every coordinate; `|fd − g| ≤ 1e-3·max(|fd|, |g|) + 1e-3·max|g|` where the
//! gradient is f32 (through the block), `1e-6·max(|fd|, |g|) + 1e-7·max|g|` where it is
//! f64.

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::private::losses::{
    confidence, diversity, patch_grid, smoothness, stats_alignment,
};
use anytime_runtime::private::{PrivateError, Snapshot, VAR_FLOOR};
use anytime_testkit::{assert_close, close, max_abs};

mod dense_common;
use dense_common::{layernorm, linear, random};

/// A 3×3 patch grid and CLS.
const DIMS: BlockDims = BlockDims {
    width: 16,
    heads: 2,
    mlp: 32,
    tokens: 10,
    embed: 8,
};
/// A logit scale at which the softmax of a random block is not saturated (at 100 it is,
/// and the diversity gradient vanishes).
const TAU: f64 = 10.0;

/// Unnormalised embedding of one image (`[N, D]`, f64) through the block's CLS path.
fn embed(d: &BlockDims, p: &BlockParams, h: &FrozenHead, x: &[f64]) -> Vec<f64> {
    let (n, w, dh) = (d.tokens, d.width, d.head_dim());
    let rows: Vec<&[f64]> = x.chunks_exact(w).collect();
    let h1: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| layernorm(r, &p.ln_1_w, &p.ln_1_b))
        .collect();
    let qkv: Vec<Vec<f64>> = h1
        .iter()
        .map(|r| linear(r, &p.in_proj_w, &p.in_proj_b))
        .collect();
    let mut attn = vec![0.0; w];
    for hd in 0..d.heads {
        let s: Vec<f64> = (0..n)
            .map(|j| {
                let dot: f64 = (0..dh)
                    .map(|c| qkv[0][hd * dh + c] * qkv[j][w + hd * dh + c])
                    .sum();
                dot / (dh as f64).sqrt()
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
        for c in 0..dh {
            attn[hd * dh + c] = (0..n)
                .map(|j| (s[j] - mx).exp() / z * qkv[j][2 * w + hd * dh + c])
                .sum();
        }
    }
    let o = linear(&attn, &p.out_proj_w, &p.out_proj_b);
    let x2: Vec<f64> = rows[0].iter().zip(&o).map(|(a, b)| a + b).collect();
    let f = linear(&layernorm(&x2, &p.ln_2_w, &p.ln_2_b), &p.fc_w, &p.fc_b);
    let g: Vec<f64> = f.iter().map(|v| v / (1.0 + (-1.702 * v).exp())).collect();
    let m = linear(&g, &p.cproj_w, &p.cproj_b);
    let x3: Vec<f64> = x2.iter().zip(&m).map(|(a, b)| a + b).collect();
    let u = layernorm(&x3, &h.ln_post_w, &h.ln_post_b);
    (0..d.embed)
        .map(|k| (0..w).map(|i| u[i] * h.proj[i * d.embed + k] as f64).sum())
        .collect()
}

/// Logits `[B, K]` of tokens `[B, N, D]` (f64) against `text` `[K, E]`.
fn logits_ref(p: &BlockParams, h: &FrozenHead, x: &[f64], text: &[f32]) -> Vec<f64> {
    let mut out = vec![];
    for img in x.chunks_exact(DIMS.tokens_len()) {
        let e = embed(&DIMS, p, h, img);
        let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
        for t in text.chunks_exact(DIMS.embed) {
            out.push(TAU * e.iter().zip(t).map(|(a, &b)| a * b as f64).sum::<f64>() / norm);
        }
    }
    out
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let mx = l.iter().cloned().fold(f64::MIN, f64::max);
    let s: f64 = l.iter().map(|v| (v - mx).exp()).sum();
    l.iter().map(|v| (v - mx).exp() / s).collect()
}

/// `mean_b −ln softmax(l_b/T)[y_b]`.
fn confidence_ref(l: &[f64], k: usize, y: &[u32], t: f64) -> f64 {
    let ce = l.chunks_exact(k).zip(y).map(|(r, &y)| {
        let scaled: Vec<f64> = r.iter().map(|v| v / t).collect();
        -softmax(&scaled)[y as usize].ln()
    });
    ce.sum::<f64>() / y.len() as f64
}

/// `1 + Σ p̄ ln p̄ / ln K`.
fn diversity_ref(l: &[f64], k: usize) -> f64 {
    let b = l.len() / k;
    let mut mean = vec![0.0; k];
    for r in l.chunks_exact(k) {
        mean.iter_mut()
            .zip(softmax(r))
            .for_each(|(m, p)| *m += p / b as f64);
    }
    1.0 + mean.iter().map(|p| p * p.ln()).sum::<f64>() / (k as f64).ln()
}

/// Central difference of `f` at coordinate `i` of `x`, relative step `h`.
fn central(x: &[f64], i: usize, h: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
    let mut y = x.to_vec();
    let step = h * x[i].abs().max(1.0);
    y[i] = x[i] + step;
    let fp = f(&y);
    y[i] = x[i] - step;
    (fp - f(&y)) / (2.0 * step)
}

/// The coordinates where `g` and the finite differences of `f` disagree.
fn fd_failures(
    what: &str,
    x: &[f64],
    g: &[f64],
    h: f64,
    (rtol, atol): (f64, f64),
    f: impl Fn(&[f64]) -> f64,
) -> Vec<String> {
    let scale = max_abs(g);
    assert!(scale > 0.0, "{what}: gradient all zero");
    let mut failures = vec![];
    assert_eq!(g.len(), x.len(), "{what}: gradient and input lengths");
    for (i, &gi) in g.iter().enumerate() {
        let fd = central(x, i, h, &f);
        let tol = rtol * fd.abs().max(gi.abs()) + atol * scale;
        if !close(gi, fd, tol, 0.0) {
            failures.push(format!("{what}[{i}]: fd {fd:e} vs {gi:e}"));
        }
    }
    failures
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// L2-normalised random rows `[k, E]`.
fn text(k: usize, seed: u64) -> Vec<f32> {
    let mut t = random(k * DIMS.embed, 1.0, seed);
    for row in t.chunks_exact_mut(DIMS.embed) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    t
}

#[test]
fn confidence_and_diversity_gradients_reach_the_tokens_through_the_snapshot() {
    let (p, h) = (BlockParams::random(&DIMS, 1), FrozenHead::random(&DIMS, 2));
    let snap = Snapshot::new(DIMS, p.clone(), h.clone(), TAU as f32).unwrap();
    let (batch, k, temp) = (3, 4, 1.5);
    let x = random(batch * DIMS.tokens_len(), 1.5, 3);
    let t = text(k, 4);
    let labels = [2u32, 0, 2];
    let fwd = snap.logits(&x, batch, &t, k).unwrap();
    let xs = to_f64(&x);
    assert_close(
        "logits",
        &fwd.logits,
        &logits_ref(&p, &h, &xs, &t),
        1e-4,
        1e-4,
    );

    let (l_conf, d_conf) = confidence(&fwd.logits, k, &labels, temp).unwrap();
    let (l_div, d_div) = diversity(&fwd.logits, k).unwrap();
    let conf = |x: &[f64]| confidence_ref(&logits_ref(&p, &h, x, &t), k, &labels, temp);
    let div = |x: &[f64]| diversity_ref(&logits_ref(&p, &h, x, &t), k);
    assert!(
        close(l_conf, conf(&xs), 1e-5, 1e-5),
        "{l_conf} vs {}",
        conf(&xs)
    );
    assert!(
        close(l_div, div(&xs), 1e-5, 1e-5),
        "{l_div} vs {}",
        div(&xs)
    );
    assert!(
        l_div > 0.01,
        "diversity {l_div}: the softmax is not spread enough to test"
    );

    let mut failures = vec![];
    for (what, d, f) in [
        ("confidence", &d_conf, &conf as &dyn Fn(&[f64]) -> f64),
        ("diversity", &d_div, &div),
    ] {
        let g = to_f64(&snap.tokens_grad(&fwd, d));
        failures.extend(fd_failures(what, &xs, &g, 1e-5, (1e-3, 1e-3), f));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn confidence_and_diversity_gradients_match_at_the_logits() {
    let (k, labels) = (5, [4u32, 1, 1, 0]);
    let l: Vec<f64> = random(labels.len() * k, 3.0, 5)
        .iter()
        .map(|&v| v as f64)
        .collect();
    for temp in [1.0, 0.5, 4.0] {
        let (v, g) = confidence(&l, k, &labels, temp).unwrap();
        let f = |l: &[f64]| confidence_ref(l, k, &labels, temp);
        assert!(
            close(v, f(&l), 1e-12, 1e-12),
            "T = {temp}: {v} vs {}",
            f(&l)
        );
        let fails = fd_failures("confidence", &l, &g, 1e-6, (1e-6, 1e-7), f);
        assert!(fails.is_empty(), "T = {temp}: {}", fails.join("\n"));
    }
    let (v, g) = diversity(&l, k).unwrap();
    let f = |l: &[f64]| diversity_ref(l, k);
    assert!(close(v, f(&l), 1e-12, 1e-12), "{v} vs {}", f(&l));
    let fails = fd_failures("diversity", &l, &g, 1e-6, (1e-6, 1e-7), f);
    assert!(fails.is_empty(), "{}", fails.join("\n"));

    // Its range: 0 for a batch spread evenly, 1 for one label always; a single label is 0.
    let even: Vec<f64> = (0..k * k)
        .map(|i| if i % (k + 1) == 0 { 50.0 } else { 0.0 })
        .collect();
    let one: Vec<f64> = (0..k * k)
        .map(|i| if i % k == 0 { 50.0 } else { 0.0 })
        .collect();
    let (v_even, _) = diversity(&even, k).unwrap();
    let (v_one, _) = diversity(&one, k).unwrap();
    assert!(
        close(v_even, 0.0, 1e-9, 0.0) && close(v_one, 1.0, 1e-9, 0.0),
        "{v_even}, {v_one}"
    );
    assert_eq!(diversity(&[3.0, -1.0], 1).unwrap(), (0.0, vec![0.0, 0.0]));
    // Bad input.
    assert!(matches!(
        confidence(&l, k, &[5, 0, 0, 0], 1.0),
        Err(PrivateError::Label { label: 5, .. })
    ));
    assert!(matches!(
        confidence(&l, k, &labels, 0.0),
        Err(PrivateError::Setting { .. })
    ));
    assert!(matches!(
        confidence(&l[1..], k, &labels, 1.0),
        Err(PrivateError::Shape { .. })
    ));
    assert!(diversity(&l[1..], k).is_err() && diversity(&l, 0).is_err());
}

/// The alignment loss from its definition: per label present, Gaussian KL per channel of
/// the batch's statistics (`+ VAR_FLOOR`) to the target's, mean over channels and labels.
fn kl_ref(x: &[f64], n: usize, d: usize, labels: &[u32], targets: &[(Vec<f32>, Vec<f32>)]) -> f64 {
    let mut present: Vec<u32> = labels.to_vec();
    present.sort();
    present.dedup();
    let mut total = 0.0;
    for &y in &present {
        let rows: Vec<&[f64]> = labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l == y)
            .flat_map(|(b, _)| x[b * n * d..(b + 1) * n * d].chunks_exact(d))
            .collect();
        let m = rows.len() as f64;
        for c in 0..d {
            let mu = rows.iter().map(|r| r[c]).sum::<f64>() / m;
            let v = rows.iter().map(|r| (r[c] - mu).powi(2)).sum::<f64>() / m + VAR_FLOOR as f64;
            let (my, vy) = (
                targets[y as usize].0[c] as f64,
                targets[y as usize].1[c] as f64,
            );
            total += 0.5 * ((vy / v).ln() + (v + (mu - my).powi(2)) / vy - 1.0);
        }
    }
    total / (present.len() * d) as f64
}

#[test]
fn stats_alignment_matches_its_definition_and_finite_differences() {
    let (n, d) = (DIMS.tokens, 5);
    let labels = [0u32, 1, 0, 0];
    let x = random(labels.len() * n * d, 2.0, 6);
    let targets: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
        .map(|s| {
            let mean = random(d, 1.0, 10 + s);
            let var = random(d, 1.0, 20 + s)
                .iter()
                .map(|v| 0.5 + v.abs())
                .collect();
            (mean, var)
        })
        .collect();
    let (v, g) = stats_alignment(&x, n, d, &labels, &targets).unwrap();
    let xs = to_f64(&x);
    let f = |x: &[f64]| kl_ref(x, n, d, &labels, &targets);
    assert!(close(v, f(&xs), 1e-9, 1e-7), "{v} vs {}", f(&xs));
    let fails = fd_failures("alignment", &xs, &to_f64(&g), 1e-5, (1e-4, 1e-5), f);
    assert!(fails.is_empty(), "{}", fails.join("\n"));

    // Zero when the batch has the target's statistics.
    let rows: Vec<&[f32]> = x.chunks_exact(d).take(n).collect();
    let mean: Vec<f32> = (0..d)
        .map(|c| rows.iter().map(|r| r[c]).sum::<f32>() / n as f32)
        .collect();
    let var: Vec<f32> = (0..d)
        .map(|c| rows.iter().map(|r| (r[c] - mean[c]).powi(2)).sum::<f32>() / n as f32 + VAR_FLOOR)
        .collect();
    let (v0, _) = stats_alignment(&x[..n * d], n, d, &[0], &[(mean, var)]).unwrap();
    assert!(close(v0, 0.0, 1e-6, 0.0), "KL of equal statistics {v0}");
    // Bad input.
    assert!(matches!(
        stats_alignment(&x, n, d, &[0, 1, 0, 3], &targets),
        Err(PrivateError::Label { label: 3, .. })
    ));
    let mut bad = targets.clone();
    bad[1].1[2] = 0.0;
    assert!(stats_alignment(&x, n, d, &labels, &bad).is_err());
    let mut nan = x.clone();
    nan[7] = f32::NAN;
    assert!(matches!(
        stats_alignment(&nan, n, d, &labels, &targets),
        Err(PrivateError::NonFinite { .. })
    ));
    assert!(matches!(
        stats_alignment(&x[1..], n, d, &labels, &targets),
        Err(PrivateError::Shape { .. })
    ));
}

/// The smoothness loss from its definition, by explicit windows on the grid.
fn smooth_ref(x: &[f64], n: usize, d: usize) -> f64 {
    let side = ((n - 1) as f64).sqrt() as isize;
    let batch = x.len() / (n * d);
    let mut total = 0.0;
    for img in x.chunks_exact(n * d) {
        let tok = |r: isize, c: isize, ch: usize| img[(1 + (r * side + c) as usize) * d + ch];
        for r in 0..side {
            for c in 0..side {
                for ch in 0..d {
                    let mut sum = 0.0;
                    let mut count = 0.0;
                    for rr in r - 1..=r + 1 {
                        for cc in c - 1..=c + 1 {
                            if (0..side).contains(&rr) && (0..side).contains(&cc) {
                                sum += tok(rr, cc, ch);
                                count += 1.0;
                            }
                        }
                    }
                    total += (tok(r, c, ch) - sum / count).powi(2);
                }
            }
        }
    }
    total / (batch * (n - 1) * d) as f64
}

#[test]
fn smoothness_matches_its_definition_and_finite_differences() {
    let d = 3;
    for n in [10, 17, 50] {
        let x = random(2 * n * d, 1.0, n as u64);
        let (v, g) = smoothness(&x, n, d).unwrap();
        let xs = to_f64(&x);
        let f = |x: &[f64]| smooth_ref(x, n, d);
        assert!(close(v, f(&xs), 1e-9, 1e-7), "N = {n}: {v} vs {}", f(&xs));
        let fails = fd_failures("smoothness", &xs, &to_f64(&g), 1e-5, (1e-4, 1e-5), f);
        assert!(fails.is_empty(), "N = {n}: {}", fails.join("\n"));
        // CLS takes no part.
        for img in g.chunks_exact(n * d) {
            assert_eq!(&img[..d], &[0.0; 3][..], "N = {n}: CLS has a gradient");
        }
    }
    assert_eq!(
        [patch_grid(10), patch_grid(50), patch_grid(2)].map(Result::unwrap),
        [3, 7, 1]
    );
    // The same token at every patch (any CLS) is perfectly smooth; a 1×1 grid always is.
    let mut flat: Vec<f32> = [0.3f32, -1.0, 2.0].repeat(10);
    flat[..3].copy_from_slice(&[9.0, 9.0, 9.0]);
    let (v_flat, _) = smoothness(&flat, 10, 3).unwrap();
    assert!(close(v_flat, 0.0, 1e-12, 0.0), "flat patches: {v_flat}");
    assert_eq!(smoothness(&random(6, 1.0, 1), 2, 3).unwrap().0, 0.0);
    for n in [1, 11, 49] {
        let want = PrivateError::Grid {
            tokens: n,
            patches: n - 1,
        };
        assert_eq!(patch_grid(n).unwrap_err(), want);
        assert_eq!(smoothness(&vec![0.0; n * d], n, d).unwrap_err(), want);
    }
    assert!(smoothness(&[0.0; 29], 10, 3).is_err());
}

#[test]
fn snapshot_refuses_other_dims_and_bad_input() {
    let (p, h) = (BlockParams::random(&DIMS, 1), FrozenHead::random(&DIMS, 2));
    let other = BlockDims { width: 8, ..DIMS };
    assert!(Snapshot::new(other, p.clone(), h.clone(), 100.0).is_err());
    assert!(Snapshot::new(DIMS, p.clone(), h.clone(), 0.0).is_err());
    let snap = Snapshot::new(DIMS, p, h, 100.0).unwrap();
    let x = random(2 * DIMS.tokens_len(), 1.0, 3);
    let t = text(3, 4);
    assert!(matches!(
        snap.logits(&x[1..], 2, &t, 3),
        Err(PrivateError::Shape { .. })
    ));
    assert!(matches!(
        snap.logits(&x, 2, &t[1..], 3),
        Err(PrivateError::Shape { .. })
    ));
    let mut nan = x.clone();
    nan[0] = f32::INFINITY;
    assert!(matches!(
        snap.logits(&nan, 2, &t, 3),
        Err(PrivateError::NonFinite { .. })
    ));
    assert_eq!(snap.logits(&x, 2, &t, 3).unwrap().logits.len(), 6);
}
