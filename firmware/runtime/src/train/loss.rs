//! The SPEC §4 loss, forward and backward, from unnormalised embeddings.
//!
//! For sample `i` with embedding `e`, `z = e/‖e‖`, label `y` and the `K = |Y|` text rows
//! `t_j`: logits `l = [τ z·t_0, …, τ z·t_{K−1}, b]` (the last one is "other"),
//! `L_i = CE(y; all K+1) + β·CE(other; all but y)`, and the loss is the batch mean.
//! With a single label the second term is over {other} alone and is 0.

use rayon::prelude::*;

use super::{StepStats, TrainConfig};
use crate::simd::Build;
use anytime_linalg::sums;

/// Loss value, statistics and the gradients w.r.t. the unnormalised embeddings
/// (`[B, E]`) and `b`.
#[derive(Clone, Debug)]
pub struct LossOutput {
    pub stats: StepStats,
    pub d_embed: Vec<f32>,
    pub d_bias: f32,
}

/// `log Σ exp(l_j)` over the given values.
fn logsumexp(l: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = l.clone().fold(f64::NEG_INFINITY, f64::max);
    max + l.map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// One sample's terms: `CE(y; all)`, `CE(other; all but y)`, `d L / d b`, and whether the
/// argmax over `Y` is `y`.
struct SampleTerms {
    ce_label: f64,
    ce_other: f64,
    d_bias: f64,
    correct: bool,
}

/// What every sample of a batch is scored against: the `k` text rows (`[k, E]`), the
/// "other" bias, the batch size (gradients are of the batch mean) and the settings.
struct LabelSet<'a> {
    cfg: &'a TrainConfig,
    text: &'a [f32],
    k: usize,
    other_bias: f32,
    batch: usize,
}

/// The loss terms of one sample with unnormalised embedding `er` and label `y` against
/// `set`, and its gradient by `er` written to `d_er` (already divided by the batch
/// size), with the widest vectors the CPU has. Every sum has a fixed order (eight partial sums, or one running sum)
/// and every operation is exact IEEE arithmetic or a libm call, so every build gives
/// the same bits; the baseline SSE2 build does two f64 lanes per instruction.
fn sample_terms(set: &LabelSet<'_>, er: &[f32], y: usize, d_er: &mut [f32]) -> SampleTerms {
    terms_with(Build::widest(NARROW), set, er, y, d_er)
}

/// The 256-bit extension of [`terms_body`]'s narrow build.
const NARROW: &str = "avx2";

/// [`sample_terms`] in the given build (panics when the CPU lacks it).
fn terms_with(
    build: Build,
    set: &LabelSet<'_>,
    er: &[f32],
    y: usize,
    d_er: &mut [f32],
) -> SampleTerms {
    anytime_linalg::build_of!(
        build,
        "avx2",
        terms_body(set: &LabelSet<'_>, er: &[f32], y: usize, d_er: &mut [f32]) -> SampleTerms
    )
}

/// The body of [`sample_terms`], compiled into each build.
#[inline(always)]
fn terms_body(set: &LabelSet<'_>, er: &[f32], y: usize, d_er: &mut [f32]) -> SampleTerms {
    let LabelSet {
        cfg,
        text,
        k,
        other_bias,
        batch,
    } = *set;
    let e = er.len();
    let tau = cfg.logit_scale as f64;
    let beta = cfg.beta_other as f64;
    let norm = sums::sum_sq_dev(er, 0.0).sqrt().max(1e-12);
    let z: Vec<f64> = er.iter().map(|&v| v as f64 / norm).collect();
    // Four text rows at a time: four independent chains of partial sums (each dot in
    // `sums::dot`'s order) instead of one.
    let mut logits = vec![0.0f64; k + 1];
    for (ls, ts) in logits[..k].chunks_mut(4).zip(text[..k * e].chunks(4 * e)) {
        if ls.len() == 4 {
            let (t0, rest) = ts.split_at(e);
            let (t1, rest) = rest.split_at(e);
            let (t2, t3) = rest.split_at(e);
            let d = sums::dot4([t0, t1, t2, t3], &z);
            ls.iter_mut().zip(d).for_each(|(l, d)| *l = tau * d);
        } else {
            for (l, t) in ls.iter_mut().zip(ts.chunks_exact(e)) {
                *l = tau * sums::dot(t, &z);
            }
        }
    }
    logits[k] = other_bias as f64;
    let best = (0..k).fold(0, |b, j| if logits[j] > logits[b] { j } else { b });

    // CE(y; all K+1)
    let lse1 = logsumexp(logits.iter().copied());
    // CE(other; all but y)
    let others = logits
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != y)
        .map(|(_, &v)| v);
    let lse2 = logsumexp(others);

    let mut dl = vec![0.0f64; k + 1];
    for (j, g) in dl.iter_mut().enumerate() {
        let p1 = (logits[j] - lse1).exp();
        let p2 = if j == y {
            0.0
        } else {
            (logits[j] - lse2).exp()
        };
        let g1 = p1 - f64::from(u8::from(j == y));
        let g2 = p2 - f64::from(u8::from(j == k));
        *g = (g1 + beta * g2) / batch as f64;
    }
    // dz = τ Σ_j dl_j t_j; de = (dz − z (z·dz)) / ‖e‖
    // Four text rows a pass, each element still gaining its terms in the order of `j`.
    let mut dz = vec![0.0f64; e];
    let coeff: Vec<f64> = dl[..k].iter().map(|&g| tau * g).collect();
    for (cs, ts) in coeff.chunks(4).zip(text[..k * e].chunks(4 * e)) {
        if let ([c0, c1, c2, c3], 4) = (cs, ts.len() / e) {
            let (t0, rest) = ts.split_at(e);
            let (t1, rest) = rest.split_at(e);
            let (t2, t3) = rest.split_at(e);
            let ts = t0.iter().zip(t1).zip(t2.iter().zip(t3));
            for (g, ((&x0, &x1), (&x2, &x3))) in dz.iter_mut().zip(ts) {
                let mut v = *g + c0 * x0 as f64;
                v += c1 * x1 as f64;
                v += c2 * x2 as f64;
                *g = v + c3 * x3 as f64;
            }
        } else {
            for (&c, t) in cs.iter().zip(ts.chunks_exact(e)) {
                dz.iter_mut()
                    .zip(t)
                    .for_each(|(g, &tv)| *g += c * tv as f64);
            }
        }
    }
    let zdz: f64 = z.iter().zip(&dz).map(|(a, b)| a * b).sum();
    for c in 0..e {
        d_er[c] = ((dz[c] - z[c] * zdz) / norm) as f32;
    }
    SampleTerms {
        ce_label: lse1 - logits[y],
        ce_other: lse2 - logits[k],
        d_bias: dl[k],
        correct: best == y,
    }
}

/// Computes the loss of `embed` (`[B, E]`, unnormalised) against `labels` and `text`
/// (`[K, E]`, normalised) and its gradients. Lengths are checked by the caller. Samples
/// run in parallel; their terms are summed in order.
pub fn loss_forward_backward(
    cfg: &TrainConfig,
    embed: &[f32],
    e: usize,
    labels: &[u32],
    text: &[f32],
    n_labels: usize,
    other_bias: f32,
) -> LossOutput {
    let batch = labels.len();
    let beta = cfg.beta_other as f64;
    let set = LabelSet {
        cfg,
        text,
        k: n_labels,
        other_bias,
        batch,
    };
    let mut d_embed = vec![0.0f32; batch * e];
    let terms: Vec<SampleTerms> = d_embed
        .par_chunks_mut(e)
        .zip(embed.par_chunks(e))
        .zip(labels.par_iter())
        .map(|((d_er, er), &y)| sample_terms(&set, er, y as usize, d_er))
        .collect();
    let (mut sum1, mut sum2, mut d_bias, mut correct) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for t in &terms {
        sum1 += t.ce_label;
        sum2 += t.ce_other;
        d_bias += t.d_bias;
        correct += usize::from(t.correct);
    }
    let (l1, l2) = (sum1 / batch as f64, sum2 / batch as f64);
    LossOutput {
        stats: StepStats {
            loss: (l1 + beta * l2) as f32,
            loss_label: l1 as f32,
            loss_other: l2 as f32,
            correct,
            batch,
            step: 0,
        },
        d_embed,
        d_bias: d_bias as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-log softmax(l)[i]` in f64, written directly.
    fn ce(l: &[f64], i: usize) -> f64 {
        let s: f64 = l.iter().map(|v| v.exp()).sum();
        -(l[i].exp() / s).ln()
    }

    #[test]
    fn loss_is_the_spec_formula_with_other_once() {
        // E = 2, three labels on the unit circle; embeddings of different norms.
        let cfg = TrainConfig {
            logit_scale: 2.0,
            ..TrainConfig::default()
        };
        let text = [1.0f32, 0.0, 0.0, 1.0, -0.6, 0.8];
        let embed = [3.0f32, 4.0, -1.0, 0.0];
        let labels = [1u32, 2];
        let b = 0.7f32;
        let out = loss_forward_backward(&cfg, &embed, 2, &labels, &text, 3, b);
        let (tau, beta) = (2.0f64, 0.1f64);
        let mut l1 = 0.0;
        let mut l2 = 0.0;
        for (i, &y) in labels.iter().enumerate() {
            let (x, z) = (embed[2 * i] as f64, embed[2 * i + 1] as f64);
            let n = (x * x + z * z).sqrt();
            let mut l: Vec<f64> = (0..3)
                .map(|j| tau * (text[2 * j] as f64 * x + text[2 * j + 1] as f64 * z) / n)
                .collect();
            l.push(b as f64); // "other", once
            l1 += ce(&l, y as usize);
            let without_y: Vec<f64> = (0..4).filter(|&j| j != y as usize).map(|j| l[j]).collect();
            l2 += ce(&without_y, 2); // "other" is last of the three left
        }
        let (l1, l2) = (l1 / 2.0, l2 / 2.0);
        assert!(
            anytime_testkit::close(out.stats.loss_label, l1, 1e-6, 0.0),
            "{out:?}"
        );
        assert!(
            anytime_testkit::close(out.stats.loss_other, l2, 1e-6, 0.0),
            "{out:?}"
        );
        assert!(anytime_testkit::close(
            out.stats.loss,
            l1 + beta * l2,
            1e-6,
            0.0
        ));
        // Sample 0 (direction (0.6, 0.8)) is closest to label 1; sample 1 to label 2.
        assert_eq!(out.stats.correct, 2);
        assert_eq!(out.stats.batch, 2);
    }

    /// The logits and the embedding gradient in the plain order: one text row at a time
    /// (each dot in `sums::dot`'s order), `dz` gaining the rows' terms in order.
    fn plain_terms(
        cfg: &TrainConfig,
        er: &[f32],
        y: usize,
        text: &[f32],
        k: usize,
    ) -> (Vec<f64>, Vec<f32>) {
        let (tau, beta) = (cfg.logit_scale as f64, cfg.beta_other as f64);
        let e = er.len();
        let norm = sums::sum_sq_dev(er, 0.0).sqrt().max(1e-12);
        let z: Vec<f64> = er.iter().map(|&v| v as f64 / norm).collect();
        let mut l: Vec<f64> = (0..k)
            .map(|j| tau * sums::dot(&text[j * e..(j + 1) * e], &z))
            .collect();
        l.push(0.25);
        let lse1 = logsumexp(l.iter().copied());
        let lse2 = logsumexp(
            l.iter()
                .enumerate()
                .filter(|&(j, _)| j != y)
                .map(|(_, &v)| v),
        );
        let mut dz = vec![0.0f64; e];
        for j in 0..k {
            let p1 = (l[j] - lse1).exp();
            let p2 = if j == y { 0.0 } else { (l[j] - lse2).exp() };
            let g1 = p1 - f64::from(u8::from(j == y));
            let dl = (g1 + beta * p2) / 3.0;
            for (g, &t) in dz.iter_mut().zip(&text[j * e..(j + 1) * e]) {
                *g += tau * dl * t as f64;
            }
        }
        let zdz: f64 = z.iter().zip(&dz).map(|(a, b)| a * b).sum();
        let d_er = (0..e)
            .map(|c| ((dz[c] - z[c] * zdz) / norm) as f32)
            .collect();
        (l, d_er)
    }

    /// Every build of the per-sample terms this CPU runs (baseline, AVX2, AVX-512) gives
    /// the plain one-row-at-a-time order's gradient (f32) and loss term (f64) bit for
    /// bit, with label counts and widths that leave remainders (`K mod 4`, `E mod 8`).
    /// A small logit scale, so that every row's term counts in the sums (at 100 the
    /// softmax leaves most of them far below an ulp).
    #[test]
    fn sample_terms_builds_give_the_plain_order_bits() {
        const TEST: &str = "sample_terms_builds_give_the_plain_order_bits";
        for build in crate::simd::builds_to_test(TEST, "loss per-sample terms", NARROW) {
            check_build(build);
        }
    }

    fn check_build(build: Build) {
        let cfg = TrainConfig {
            logit_scale: 1.5,
            ..TrainConfig::default()
        };
        for (k, e) in [(7usize, 13usize), (8, 16), (1, 5), (100, 512)] {
            let mut text: Vec<f32> = (0..k * e).map(|i| (i as f32 * 0.71).sin()).collect();
            crate::block::l2_normalise(&mut text, e);
            let er: Vec<f32> = (0..e).map(|i| (i as f32 * 0.3).cos() * 2.0).collect();
            let y = k / 2;
            let (l, want) = plain_terms(&cfg, &er, y, &text, k);
            let (mut d1, mut d2) = (vec![0.0f32; e], vec![0.0f32; e]);
            let set = LabelSet {
                cfg: &cfg,
                text: &text,
                k,
                other_bias: 0.25,
                batch: 3,
            };
            let t1 = terms_with(build, &set, &er, y, &mut d1);
            let t2 = terms_body(&set, &er, y, &mut d2);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d1), bits(&want), "{build:?} K={k}, E={e}");
            assert_eq!(bits(&d2), bits(&want), "K={k}, E={e}");
            let ce = logsumexp(l.iter().copied()) - l[y];
            assert_eq!(t1.ce_label.to_bits(), ce.to_bits());
            assert_eq!(t2.ce_label.to_bits(), ce.to_bits());
        }
    }

    /// `correct` counts what prediction answers: the argmax over the labels, the first on
    /// ties (`anytime_core::mixing::argmax`'s rule).
    #[test]
    fn a_tie_counts_for_the_first_label() {
        let cfg = TrainConfig::default();
        // Labels 0 and 1 share a text row; label 2 points away.
        let text = [0.6f32, 0.8, 0.6, 0.8, -0.8, 0.6];
        let out = loss_forward_backward(&cfg, &[3.0, 4.0, 3.0, 4.0], 2, &[0, 1], &text, 3, 0.0);
        assert_eq!(
            out.stats.correct, 1,
            "label 0 wins the tie: sample 1 is wrong"
        );
        let out = loss_forward_backward(&cfg, &[3.0, 4.0], 2, &[1], &text, 3, 0.0);
        assert_eq!(out.stats.correct, 0, "label 0 wins the tie");
        assert_eq!(
            anytime_core::mixing::argmax(&[1.0, 1.0, -1.0]),
            Some(0),
            "the rule prediction uses"
        );
    }

    #[test]
    fn with_one_label_the_other_term_is_zero() {
        let cfg = TrainConfig::default();
        let out = loss_forward_backward(&cfg, &[1.0, 2.0], 2, &[0], &[0.6, 0.8], 1, 0.3);
        assert_eq!(out.stats.loss_other, 0.0);
        // CE(y; {y, other}) with logit τ·1 = 100 against b = 0.3.
        let expect = (1.0f64 + (0.3f64 - 100.0).exp()).ln();
        assert!(anytime_testkit::close(
            out.stats.loss_label,
            expect,
            1e-9,
            0.0
        ));
    }
}
