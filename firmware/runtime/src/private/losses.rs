//! SPEC §7's generator losses, each with its gradient: by the snapshot's logits for the
//! two that read the snapshot's prediction ([`confidence`], [`diversity`]; taken to the
//! tokens by [`Snapshot::tokens_grad`]), by the tokens `[B, N, D]` for the two that read
//! the tokens ([`stats_alignment`], [`smoothness`]). Values and gradients are computed in
//! f64; every loss is a mean, so that its weight does not depend on `B`, `N` or `D`.

use anytime_linalg::Gemm;

use super::stats::VAR_FLOOR;
use super::PrivateError;
use crate::block::{backward, forward, BlockDims, BlockParams, FrozenHead, Saved};

/// `θ'`: a frozen copy of the tuned block, its frozen head (`ln_post`, `proj`) and the
/// logit scale `τ`. Nothing here changes its parameters.
#[derive(Debug)]
pub struct Snapshot {
    dims: BlockDims,
    params: BlockParams,
    head: FrozenHead,
    logit_scale: f32,
    gemm: Gemm,
}

/// A batch through the snapshot: its logits and what [`Snapshot::tokens_grad`] needs.
#[derive(Clone, Debug)]
pub struct SnapshotForward {
    saved: Saved,
    /// L2-normalised embeddings `[B, E]` and the norms they were divided by `[B]`.
    z: Vec<f64>,
    norms: Vec<f64>,
    text: Vec<f32>,
    n_labels: usize,
    /// `τ z·e_k`, `[B, K]`.
    pub logits: Vec<f64>,
}

impl Snapshot {
    /// The snapshot of a block of `dims` with these parameters and head.
    pub fn new(
        dims: BlockDims,
        params: BlockParams,
        head: FrozenHead,
        logit_scale: f32,
    ) -> Result<Self, PrivateError> {
        let head_ok = head.ln_post_w.len() == dims.width
            && head.ln_post_b.len() == dims.width
            && head.proj.len() == dims.width * dims.embed;
        if !dims.is_valid() || !params.matches(&dims) || !head_ok {
            return Err(PrivateError::Invalid {
                what: "snapshot",
                why: "parameters or head do not match the block dims",
            });
        }
        if !(logit_scale.is_finite() && logit_scale > 0.0) {
            return Err(PrivateError::Setting {
                what: "logit scale",
                value: logit_scale as f64,
                why: "finite and above 0",
            });
        }
        Ok(Snapshot {
            dims,
            params,
            head,
            logit_scale,
            gemm: Gemm::default(),
        })
    }

    pub fn dims(&self) -> BlockDims {
        self.dims
    }

    /// The logits `τ z·e_k` (`z` the L2-normalised embedding) of `batch` token sets
    /// (`[B, N, D]`) against the `n_labels` text embeddings `text` (`[K, E]`,
    /// L2-normalised).
    pub fn logits(
        &self,
        tokens: &[f32],
        batch: usize,
        text: &[f32],
        n_labels: usize,
    ) -> Result<SnapshotForward, PrivateError> {
        let (e, tau) = (self.dims.embed, self.logit_scale as f64);
        check_len(
            "tokens (B·N·D)",
            batch * self.dims.tokens_len(),
            tokens.len(),
        )?;
        check_len("text (K·E)", n_labels * e, text.len())?;
        if batch == 0 || n_labels == 0 {
            return Err(PrivateError::Invalid {
                what: "snapshot batch",
                why: "no sample or no label",
            });
        }
        check_finite("tokens", tokens)?;
        check_finite("text", text)?;
        let saved = forward(
            &self.gemm,
            &self.dims,
            &self.params,
            &self.head,
            tokens,
            batch,
        );
        let mut z = vec![0.0f64; batch * e];
        let mut norms = vec![0.0f64; batch];
        let mut logits = vec![0.0f64; batch * n_labels];
        for (b, er) in saved.embed.chunks_exact(e).enumerate() {
            let norm = er.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            norms[b] = norm.max(1e-12);
            let zb = &mut z[b * e..(b + 1) * e];
            zb.iter_mut()
                .zip(er)
                .for_each(|(z, &v)| *z = v as f64 / norms[b]);
            for (l, t) in logits[b * n_labels..(b + 1) * n_labels]
                .iter_mut()
                .zip(text.chunks_exact(e))
            {
                *l = tau * zb.iter().zip(t).map(|(&a, &b)| a * b as f64).sum::<f64>();
            }
        }
        Ok(SnapshotForward {
            saved,
            z,
            norms,
            text: text.to_vec(),
            n_labels,
            logits,
        })
    }

    /// The gradient by the input tokens (`[B, N, D]`) of a loss whose gradient by the
    /// logits of `fwd` is `d_logits` (`[B, K]`), through the frozen block (its parameter
    /// gradients are computed by the block's backward and dropped).
    pub fn tokens_grad(&self, fwd: &SnapshotForward, d_logits: &[f64]) -> Vec<f32> {
        let (e, k, tau) = (self.dims.embed, fwd.n_labels, self.logit_scale as f64);
        let batch = fwd.saved.batch;
        assert_eq!(d_logits.len(), batch * k, "d_logits must be [B, K]");
        // dz = τ Σ_k dl_k t_k; de = (dz − z (z·dz)) / ‖e‖.
        let mut d_embed = vec![0.0f32; batch * e];
        for b in 0..batch {
            let mut dz = vec![0.0f64; e];
            for (&g, t) in d_logits[b * k..(b + 1) * k]
                .iter()
                .zip(fwd.text.chunks_exact(e))
            {
                dz.iter_mut()
                    .zip(t)
                    .for_each(|(s, &x)| *s += tau * g * x as f64);
            }
            let zb = &fwd.z[b * e..(b + 1) * e];
            let dot: f64 = zb.iter().zip(&dz).map(|(a, b)| a * b).sum();
            for ((o, &g), &zv) in d_embed[b * e..(b + 1) * e].iter_mut().zip(&dz).zip(zb) {
                *o = ((g - zv * dot) / fwd.norms[b]) as f32;
            }
        }
        let mut grads = BlockParams::zeros(&self.dims);
        let mut d_tokens = vec![0.0f32; batch * self.dims.tokens_len()];
        backward(
            &self.gemm,
            &self.dims,
            &self.params,
            &self.head,
            &fwd.saved,
            &d_embed,
            &mut grads,
            Some(&mut d_tokens),
        );
        d_tokens
    }
}

/// The confidence loss `mean_b CE(l_b / T, y_b)` of logits `[B, K]` and labels `[B]`
/// (indices `< K`) at temperature `T`, and its gradient by the logits.
pub fn confidence(
    logits: &[f64],
    n_labels: usize,
    labels: &[u32],
    temperature: f64,
) -> Result<(f64, Vec<f64>), PrivateError> {
    let (k, batch) = (n_labels, labels.len());
    check_len("logits (B·K)", batch * k, logits.len())?;
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(PrivateError::Setting {
            what: "temperature",
            value: temperature,
            why: "finite and above 0",
        });
    }
    if let Some(&label) = labels.iter().find(|&&l| l as usize >= k) {
        return Err(PrivateError::Label { label, n_labels: k });
    }
    let mut loss = 0.0;
    let mut grad = vec![0.0f64; logits.len()];
    for ((l, g), &y) in logits
        .chunks_exact(k)
        .zip(grad.chunks_exact_mut(k))
        .zip(labels)
    {
        let scaled = l.iter().map(|&v| v / temperature);
        let max = scaled.clone().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + scaled.clone().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - l[y as usize] / temperature;
        let p = softmax(scaled);
        for (j, (g, &pj)) in g.iter_mut().zip(&p).enumerate() {
            let target = f64::from(u8::from(j == y as usize));
            *g = (pj - target) / (temperature * batch as f64);
        }
    }
    Ok((loss / batch as f64, grad))
}

/// The diversity loss `1 + Σ_k p̄_k ln p̄_k / ln K` of logits `[B, K]` (`p̄` the batch mean
/// of `softmax(l_b)`, at temperature 1), and its gradient by the logits: 0 when the batch
/// predicts every label equally often on average, 1 when it predicts one label only. With
/// a single label there is nothing to spread over: 0, and no gradient.
pub fn diversity(logits: &[f64], n_labels: usize) -> Result<(f64, Vec<f64>), PrivateError> {
    let k = n_labels;
    if k == 0 || logits.is_empty() || !logits.len().is_multiple_of(k) {
        return Err(PrivateError::Invalid {
            what: "diversity logits",
            why: "not [B, K] with B and K at least 1",
        });
    }
    let batch = logits.len() / k;
    let mut grad = vec![0.0f64; logits.len()];
    if k == 1 {
        return Ok((0.0, grad));
    }
    let probs: Vec<Vec<f64>> = logits
        .chunks_exact(k)
        .map(|l| softmax(l.iter().copied()))
        .collect();
    let mut mean = vec![0.0f64; k];
    for p in &probs {
        mean.iter_mut()
            .zip(p)
            .for_each(|(m, &v)| *m += v / batch as f64);
    }
    let ln_k = (k as f64).ln();
    // p̄ ln p̄ → 0 as p̄ → 0; the log is taken of at least the smallest normal.
    let logs: Vec<f64> = mean
        .iter()
        .map(|&m| m.max(f64::MIN_POSITIVE).ln())
        .collect();
    let loss = 1.0 + mean.iter().zip(&logs).map(|(m, l)| m * l).sum::<f64>() / ln_k;
    // dL/dp̄_k = (ln p̄_k + 1)/ln K; dp̄_k/dp_bk = 1/B; softmax backward per sample.
    let dmean: Vec<f64> = logs
        .iter()
        .map(|l| (l + 1.0) / (ln_k * batch as f64))
        .collect();
    for (p, g) in probs.iter().zip(grad.chunks_exact_mut(k)) {
        let dot: f64 = p.iter().zip(&dmean).map(|(a, b)| a * b).sum();
        for ((g, &pj), &dj) in g.iter_mut().zip(p).zip(&dmean) {
            *g = pj * (dj - dot);
        }
    }
    Ok((loss, grad))
}

/// The statistics-alignment loss of `tokens` (`[B, N, D]`) whose sample `b` has label
/// `labels[b]`, an index into `targets` (each a label's published per-channel mean and
/// variance, `[D]` each), and its gradient by the tokens.
///
/// For each label in the batch, the batch's statistics over the tokens of its samples
/// (every token, CLS included, as [`super::TokenStats`] counts them): per channel the mean
/// `μ_b` and variance `v_b` (population, plus [`VAR_FLOOR`]); the loss is the Gaussian
/// `KL(N(μ_b, v_b) ‖ N(μ_y, v_y)) = ½ [ln(v_y/v_b) + (v_b + (μ_b − μ_y)²)/v_y − 1]`,
/// averaged over the channels, then over the labels present in the batch. This direction
/// divides by the stored variance only (floored when published), never by the batch's.
pub fn stats_alignment(
    tokens: &[f32],
    tokens_per_image: usize,
    width: usize,
    labels: &[u32],
    targets: &[(Vec<f32>, Vec<f32>)],
) -> Result<(f64, Vec<f32>), PrivateError> {
    let (n, d, batch) = (tokens_per_image, width, labels.len());
    check_len("tokens (B·N·D)", batch * n * d, tokens.len())?;
    check_finite("tokens", tokens)?;
    if batch == 0 || n == 0 || d == 0 {
        return Err(PrivateError::Invalid {
            what: "statistics alignment",
            why: "an empty batch",
        });
    }
    if let Some(&label) = labels.iter().find(|&&l| l as usize >= targets.len()) {
        return Err(PrivateError::Label {
            label,
            n_labels: targets.len(),
        });
    }
    for (mean, var) in targets {
        check_len("target mean (D)", d, mean.len())?;
        check_len("target variance (D)", d, var.len())?;
        check_finite("target statistics", mean)?;
        check_finite("target statistics", var)?;
        if var.iter().any(|&v| v <= 0.0) {
            return Err(PrivateError::Invalid {
                what: "target statistics",
                why: "a variance at or below 0",
            });
        }
    }
    let present: Vec<u32> = {
        let mut p = labels.to_vec();
        p.sort_unstable();
        p.dedup();
        p
    };
    let groups = present.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0f32; tokens.len()];
    for &y in &present {
        let (mean_y, var_y) = &targets[y as usize];
        let images: Vec<usize> = (0..batch).filter(|&b| labels[b] == y).collect();
        let rows = || {
            images
                .iter()
                .flat_map(|&b| tokens[b * n * d..(b + 1) * n * d].chunks_exact(d))
        };
        let m = (images.len() * n) as f64;
        let mut mu = vec![0.0f64; d];
        for row in rows() {
            mu.iter_mut()
                .zip(row)
                .for_each(|(s, &x)| *s += x as f64 / m);
        }
        let mut var = vec![VAR_FLOOR as f64; d];
        for row in rows() {
            for ((s, &x), &u) in var.iter_mut().zip(row).zip(&mu) {
                *s += (x as f64 - u).powi(2) / m;
            }
        }
        // Per channel: the KL, and its gradient by μ_b (ga) and by v_b (gb).
        let scale = 1.0 / (groups * d as f64);
        let mut ga = vec![0.0f64; d];
        let mut gb = vec![0.0f64; d];
        for c in 0..d {
            let (my, vy) = (mean_y[c] as f64, var_y[c] as f64);
            let diff = mu[c] - my;
            loss += scale * 0.5 * ((vy / var[c]).ln() + (var[c] + diff * diff) / vy - 1.0);
            ga[c] = scale * diff / vy;
            gb[c] = scale * 0.5 * (1.0 / vy - 1.0 / var[c]);
        }
        // dμ_b/dx = 1/M, dv_b/dx = 2 (x − μ_b)/M.
        for &b in &images {
            let at = b * n * d..(b + 1) * n * d;
            for (g, x) in grad[at.clone()]
                .chunks_exact_mut(d)
                .zip(tokens[at].chunks_exact(d))
            {
                for c in 0..d {
                    let dev = x[c] as f64 - mu[c];
                    g[c] = ((ga[c] + 2.0 * gb[c] * dev) / m) as f32;
                }
            }
        }
    }
    Ok((loss, grad))
}

/// The side of the square grid the `N − 1` patch tokens of `tokens_per_image` tokens lie
/// on (7 for ViT-B/32's 50); an error when `N − 1` is not a square of at least 1.
pub fn patch_grid(tokens_per_image: usize) -> Result<usize, PrivateError> {
    let patches = tokens_per_image.saturating_sub(1);
    let side = (patches as f64).sqrt().round() as usize;
    if patches == 0 || side * side != patches {
        return Err(PrivateError::Grid {
            tokens: tokens_per_image,
            patches,
        });
    }
    Ok(side)
}

/// The smoothness loss of `tokens` (`[B, N, D]`) and its gradient by them: the mean over
/// images, patch tokens and channels of `(x_p − a_p)²`, `a_p` the mean of the patch tokens
/// of the 3×3 window around `p` on the patch grid ([`patch_grid`], row-major, token `1 + i`
/// at row `i / side`, column `i % side`), `p` itself included. At a border the window is
/// cut to the tokens on the grid (a corner averages 4, an edge 6). CLS takes no part.
pub fn smoothness(
    tokens: &[f32],
    tokens_per_image: usize,
    width: usize,
) -> Result<(f64, Vec<f32>), PrivateError> {
    let (n, d) = (tokens_per_image, width);
    let side = patch_grid(n)?;
    if d == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(n * d) {
        return Err(PrivateError::Invalid {
            what: "smoothness tokens",
            why: "not [B, N, D] with B and D at least 1",
        });
    }
    check_finite("tokens", tokens)?;
    let patches = side * side;
    let batch = tokens.len() / (n * d);
    let window = |p: usize| {
        let (r, c) = ((p / side) as isize, (p % side) as isize);
        let s = side as isize;
        (-1..=1).flat_map(move |dr| {
            (-1..=1).filter_map(move |dc| {
                let (rr, cc) = (r + dr, c + dc);
                let inside = (0..s).contains(&rr) && (0..s).contains(&cc);
                inside.then_some((rr * s + cc) as usize)
            })
        })
    };
    let norm = 1.0 / (batch * patches * d) as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0f32; tokens.len()];
    for (x, g) in tokens.chunks_exact(n * d).zip(grad.chunks_exact_mut(n * d)) {
        let x = &x[d..];
        // r_p = x_p − a_p, divided by the window's size for the second term.
        let mut res = vec![0.0f64; patches * d];
        let mut res_over = vec![0.0f64; patches * d];
        for p in 0..patches {
            let count = window(p).count() as f64;
            let r = &mut res[p * d..(p + 1) * d];
            for q in window(p) {
                r.iter_mut()
                    .zip(&x[q * d..(q + 1) * d])
                    .for_each(|(s, &v)| *s -= v as f64 / count);
            }
            r.iter_mut()
                .zip(&x[p * d..(p + 1) * d])
                .for_each(|(s, &v)| *s += v as f64);
            loss += norm * r.iter().map(|v| v * v).sum::<f64>();
            res_over[p * d..(p + 1) * d]
                .iter_mut()
                .zip(r.iter())
                .for_each(|(o, &v)| *o = v / count);
        }
        // dL/dx_q = 2·norm·(r_q − Σ_{p ∋ q} r_p/|W(p)|); the window relation is symmetric.
        let g = &mut g[d..];
        for q in 0..patches {
            let mut acc = res[q * d..(q + 1) * d].to_vec();
            for p in window(q) {
                acc.iter_mut()
                    .zip(&res_over[p * d..(p + 1) * d])
                    .for_each(|(a, &v)| *a -= v);
            }
            g[q * d..(q + 1) * d]
                .iter_mut()
                .zip(&acc)
                .for_each(|(o, &a)| *o = (2.0 * norm * a) as f32);
        }
    }
    Ok((loss, grad))
}

/// `softmax` of the values, in f64.
fn softmax(l: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let max = l.clone().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), PrivateError> {
    if expected == found {
        Ok(())
    } else {
        Err(PrivateError::Shape {
            what,
            expected,
            found,
        })
    }
}

fn check_finite(what: &'static str, v: &[f32]) -> Result<(), PrivateError> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(PrivateError::NonFinite { what })
    }
}
