//! SPEC §7's learner loss on a batch of real and synthetic token sets (the CPU path):
//!
//! `L = CE_local + CE_bal + μ · mean_b ‖τ E_old (z_b − z'_b)‖² / |old labels|`
//!
//! - `CE_local`: SPEC §4's loss of the real samples (the batch's first `real`) over the
//!   current period's labels (those learned since the last consolidation);
//! - `CE_bal`: SPEC §4's loss of every sample, real and synthetic, over every learned label
//!   (the batch is class-balanced by its caller);
//! - the feature distillation: `z_b` the tuned block's L2-normalised embedding, `τ E_old z'_b`
//!   the snapshot's logits for the old labels' text embeddings (given), so that only the
//!   directions the old labels read are held. The difference is taken on the logit scale
//!   `τ` (ABD's `‖W_old (h − h')‖²`, `W_old` the old labels' head: ours is `τ E_old`);
//!   SPEC §7 writes it on cosines, where `μ = 0.1` is 1/τ² = 10⁻⁴ of this and holds nothing
//!   (docs/perf-log.md, "The distillation on the logit scale").
//!
//! Each term is a batch mean; their gradients are summed at the embedding, then the block's
//! backward and AdamW run as in a SPEC §4 step.

use super::loss::loss_forward_backward;
use super::{check_labels, check_len, TrainConfig, TrainError};
use crate::block::BlockDims;

/// A batch of the private learner's step.
#[derive(Clone, Copy, Debug)]
pub struct PrivateBatch<'a> {
    /// `[B, N, D]`: the real samples first, then the synthetic ones.
    pub tokens: &'a [f32],
    /// Real samples: the first `real` of the batch.
    pub real: usize,
    /// `[B]`, indices into `text`: every sample's label among every learned label.
    pub labels: &'a [u32],
    /// `[K, E]`, L2-normalised: every learned label (the training label set).
    pub text: &'a [f32],
    pub n_labels: usize,
    /// `[real]`, indices into `local_text`: the real samples' labels among the current
    /// period's.
    pub local_labels: &'a [u32],
    /// `[K_cur, E]`: the current period's labels.
    pub local_text: &'a [f32],
    pub n_local: usize,
    /// `[K_old, E]`: the old labels' text embeddings (none: no distillation).
    pub old_text: &'a [f32],
    pub n_old: usize,
    /// `[B, K_old]`: `τ E_old z'_b`, the snapshot's logits for the old labels.
    pub old_target: &'a [f32],
    /// `μ` (SPEC §7: 0.1).
    pub mu: f32,
}

impl PrivateBatch<'_> {
    /// Checks every length, index and value against `dims`; returns `B`.
    pub fn check(&self, dims: &BlockDims) -> Result<usize, TrainError> {
        let b = self.labels.len();
        let e = dims.embed;
        if b == 0 {
            return Err(TrainError::Shape {
                what: "batch size",
                expected: 1,
                found: 0,
            });
        }
        if self.n_labels == 0 || (self.real > 0 && self.n_local == 0) {
            return Err(TrainError::Shape {
                what: "label set size",
                expected: 1,
                found: 0,
            });
        }
        if self.real > b {
            return Err(TrainError::Shape {
                what: "real samples (at most B)",
                expected: b,
                found: self.real,
            });
        }
        check_len("tokens (B·N·D)", b * dims.tokens_len(), self.tokens.len())?;
        check_len("text (|Y|·E)", self.n_labels * e, self.text.len())?;
        check_len("local labels", self.real, self.local_labels.len())?;
        check_len("local text", self.n_local * e, self.local_text.len())?;
        check_len("old text", self.n_old * e, self.old_text.len())?;
        check_len(
            "old targets (B·K_old)",
            b * self.n_old,
            self.old_target.len(),
        )?;
        check_labels(self.labels, self.n_labels)?;
        check_labels(self.local_labels, self.n_local)?;
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(TrainError::NonFinite { what: "μ" });
        }
        let values = [self.tokens, self.old_target, self.old_text, self.local_text];
        if values.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(TrainError::NonFinite {
                what: "private batch",
            });
        }
        Ok(b)
    }
}

/// What one private step measured (each term before the update).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrivateStats {
    /// `CE_local + CE_bal + distillation`.
    pub loss: f64,
    pub local: f64,
    pub balanced: f64,
    /// `μ · mean_b ‖τ E_old (z_b − z'_b)‖² / |old labels|`.
    pub distill: f64,
    /// Real samples whose argmax over every learned label is their label.
    pub correct: usize,
    pub batch: usize,
    /// The optimiser's step count after this call.
    pub step: u64,
}

/// The loss of the embeddings `embed` (`[B, E]`, unnormalised) and its gradients by them
/// and by the "other" bias. Lengths are the caller's (checked by
/// [`PrivateBatch::check`]).
pub fn private_loss(
    cfg: &TrainConfig,
    embed: &[f32],
    e: usize,
    batch: &PrivateBatch<'_>,
    other_bias: f32,
) -> (PrivateStats, Vec<f32>, f32) {
    let b = batch.labels.len();
    let bal = loss_forward_backward(
        cfg,
        embed,
        e,
        batch.labels,
        batch.text,
        batch.n_labels,
        other_bias,
    );
    let mut d_embed = bal.d_embed;
    let mut d_bias = bal.d_bias;
    let mut stats = PrivateStats {
        balanced: f64::from(bal.stats.loss),
        batch: b,
        ..PrivateStats::default()
    };
    if batch.real > 0 {
        let real = &embed[..batch.real * e];
        let all = loss_forward_backward(
            cfg,
            real,
            e,
            &batch.labels[..batch.real],
            batch.text,
            batch.n_labels,
            other_bias,
        );
        stats.correct = all.stats.correct;
        let local = loss_forward_backward(
            cfg,
            real,
            e,
            batch.local_labels,
            batch.local_text,
            batch.n_local,
            other_bias,
        );
        stats.local = f64::from(local.stats.loss);
        d_embed
            .iter_mut()
            .zip(&local.d_embed)
            .for_each(|(g, &l)| *g += l);
        d_bias += local.d_bias;
    }
    if batch.n_old > 0 && batch.mu > 0.0 {
        let k = batch.n_old;
        let scale = f64::from(batch.mu) / (k * b) as f64;
        let tau = f64::from(cfg.logit_scale);
        let mut sum = 0.0f64;
        for (i, (er, de)) in embed
            .chunks_exact(e)
            .zip(d_embed.chunks_exact_mut(e))
            .enumerate()
        {
            let norm = er
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let z: Vec<f64> = er.iter().map(|&v| f64::from(v) / norm).collect();
            let mut dz = vec![0.0f64; e];
            for (t, &target) in batch
                .old_text
                .chunks_exact(e)
                .zip(&batch.old_target[i * k..(i + 1) * k])
            {
                let c: f64 = t.iter().zip(&z).map(|(&a, &b)| f64::from(a) * b).sum();
                let diff = tau * c - f64::from(target);
                sum += diff * diff;
                dz.iter_mut()
                    .zip(t)
                    .for_each(|(g, &x)| *g += 2.0 * scale * tau * diff * f64::from(x));
            }
            let dot: f64 = z.iter().zip(&dz).map(|(a, b)| a * b).sum();
            for ((o, &g), &zv) in de.iter_mut().zip(&dz).zip(&z) {
                *o += ((g - zv * dot) / norm) as f32;
            }
        }
        stats.distill = scale * sum;
    }
    stats.loss = stats.local + stats.balanced + stats.distill;
    (stats, d_embed, d_bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_testkit::assert_close;

    const E: usize = 4;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// Every term's gradient, by the embeddings and `b`, against central differences of
    /// the loss in f64 (a batch of 2 real and 2 synthetic samples, 3 learned labels of
    /// which 2 are current and 2 old).
    #[test]
    fn private_loss_gradient_matches_finite_differences() {
        let cfg = TrainConfig {
            logit_scale: 3.0,
            ..TrainConfig::default()
        };
        let text: Vec<f32> = [
            unit(&[1.0, 0.2, -0.3, 0.1]),
            unit(&[-0.2, 1.0, 0.4, 0.0]),
            unit(&[0.3, -0.1, 1.0, 0.5]),
        ]
        .concat();
        let local_text = text[E..].to_vec();
        let old_text: Vec<f32> = [&text[..E], &text[2 * E..]].concat();
        let embed: Vec<f32> = (0..4 * E)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + 0.1)
            .collect();
        let old_target = [0.2f32, -0.4, 0.5, 0.1, -0.3, 0.7, 0.0, 0.25];
        let labels = [1u32, 2, 0, 2];
        let batch = PrivateBatch {
            tokens: &[],
            real: 2,
            labels: &labels,
            text: &text,
            n_labels: 3,
            local_labels: &[0, 1],
            local_text: &local_text,
            n_local: 2,
            old_text: &old_text,
            n_old: 2,
            old_target: &old_target,
            mu: 0.7,
        };
        let bias = 0.3f32;
        let (stats, d_embed, d_bias) = private_loss(&cfg, &embed, E, &batch, bias);
        assert!(stats.local > 0.0 && stats.balanced > 0.0 && stats.distill > 0.0);
        assert_close(
            "total",
            &[stats.loss],
            &[stats.local + stats.balanced + stats.distill],
            0.0,
            1e-12,
        );
        // The distillation on the logit scale: μ Σ_b Σ_j (τ e_j · z_b − target_bj)² / (K_old B).
        let (tau, k_old) = (cfg.logit_scale, batch.n_old);
        let mut want = 0.0f64;
        for (i, row) in embed.chunks_exact(E).enumerate() {
            let z = unit(row);
            for (j, t) in old_text.chunks_exact(E).enumerate() {
                let c: f32 = t.iter().zip(&z).map(|(a, b)| a * b).sum();
                want += f64::from(tau * c - old_target[i * k_old + j]).powi(2);
            }
        }
        want *= f64::from(batch.mu) / (k_old * labels.len()) as f64;
        assert_close("distill", &[stats.distill], &[want], 1e-5, 1e-5);
        let loss = |x: &[f32], b: f32| private_loss(&cfg, x, E, &batch, b).0.loss;
        let h = 1e-3f32;
        let mut fd = Vec::with_capacity(embed.len());
        for i in 0..embed.len() {
            let (mut p, mut m) = (embed.clone(), embed.clone());
            p[i] += h;
            m[i] -= h;
            fd.push(((loss(&p, bias) - loss(&m, bias)) / (2.0 * f64::from(h))) as f32);
        }
        assert_close("d embed", &d_embed, &fd, 2e-3, 2e-3);
        let fd_b = (loss(&embed, bias + h) - loss(&embed, bias - h)) / (2.0 * f64::from(h));
        assert_close("d b", &[d_bias], &[fd_b as f32], 2e-3, 2e-3);
        // μ = 0 or no old label: no distillation term.
        let plain = PrivateBatch { mu: 0.0, ..batch };
        assert_eq!(private_loss(&cfg, &embed, E, &plain, bias).0.distill, 0.0);
    }

    #[test]
    fn private_batches_of_wrong_shapes_or_values_are_refused() {
        let dims = BlockDims {
            width: 2,
            heads: 1,
            mlp: 4,
            tokens: 2,
            embed: E,
        };
        let text = unit(&[1.0, 0.0, 0.0, 1.0]);
        let tokens = [0.5f32; 8];
        let good = PrivateBatch {
            tokens: &tokens,
            real: 1,
            labels: &[0, 0],
            text: &text,
            n_labels: 1,
            local_labels: &[0],
            local_text: &text,
            n_local: 1,
            old_text: &text,
            n_old: 1,
            old_target: &[0.1, 0.2],
            mu: 0.1,
        };
        assert_eq!(good.check(&dims).unwrap(), 2);
        let bad_tokens = [f32::NAN; 8];
        for bad in [
            PrivateBatch { real: 3, ..good },
            PrivateBatch {
                labels: &[0, 1],
                ..good
            },
            PrivateBatch {
                old_target: &[0.1],
                ..good
            },
            PrivateBatch {
                tokens: &bad_tokens,
                ..good
            },
            PrivateBatch {
                mu: f32::NAN,
                ..good
            },
            PrivateBatch {
                local_labels: &[],
                ..good
            },
        ] {
            assert!(bad.check(&dims).is_err(), "{bad:?}");
        }
    }
}
