//! The generator's training against a frozen snapshot `θ'` (SPEC §7): each step draws a
//! class-balanced batch of the labels whose statistics are published, generates a token
//! set for each, and takes one AdamW step of the generator on
//! `w_c·confidence + w_d·diversity + w_s·alignment + w_m·smoothness` ([`super::losses`]).
//! The snapshot is never changed.

use std::time::{Duration, Instant};

use anytime_core::rng::SplitMix64;
use anytime_linalg::Gemm;

use super::generator::{Generator, GeneratorParams};
use super::losses::{confidence, diversity, patch_grid, smoothness, stats_alignment, Snapshot};
use super::{PrivateError, StatsTable};
use crate::train::TrainConfig;

/// The settings of [`train_generator`].
#[derive(Clone, Debug, PartialEq)]
pub struct DreamConfig {
    /// Generator updates.
    pub steps: usize,
    /// Token sets per step.
    pub batch: usize,
    /// Temperature `T` of the confidence loss `CE(θ'(x̂)/T, y)`.
    pub temperature: f32,
    /// Loss weights (SPEC §7: 1, 1, 50, 1e-3).
    pub w_confidence: f32,
    pub w_diversity: f32,
    pub w_stats: f32,
    pub w_smooth: f32,
    /// AdamW of the generator: learning rate, decoupled decay (of the weights only),
    /// betas, eps.
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Seed of the label draws and the noise.
    pub seed: u64,
}

impl Default for DreamConfig {
    /// SPEC §7's weights and temperature; the generator's AdamW at Adam's usual 1e-3,
    /// without decay (the generator restarts from its stored parameters at each
    /// consolidation, and the alignment loss already bounds its output); 200 steps of 32.
    fn default() -> Self {
        DreamConfig {
            steps: 200,
            batch: 32,
            temperature: 1.0,
            w_confidence: 1.0,
            w_diversity: 1.0,
            w_stats: 50.0,
            w_smooth: 1e-3,
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 0,
        }
    }
}

impl DreamConfig {
    fn check(&self) -> Result<(), PrivateError> {
        let setting = |what, value: f32, why| {
            Err(PrivateError::Setting {
                what,
                value: value as f64,
                why,
            })
        };
        if self.batch == 0 {
            return setting("batch", 0.0, "at least 1");
        }
        for (what, v) in [("temperature", self.temperature), ("lr", self.lr)] {
            if !(v.is_finite() && v > 0.0) {
                return setting(what, v, "finite and above 0");
            }
        }
        for (what, v) in [
            ("w_confidence", self.w_confidence),
            ("w_diversity", self.w_diversity),
            ("w_stats", self.w_stats),
            ("w_smooth", self.w_smooth),
            ("weight_decay", self.weight_decay),
            ("eps", self.eps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return setting(what, v, "finite and at least 0");
            }
        }
        for (what, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return setting(what, v, "in [0, 1)");
            }
        }
        Ok(())
    }

    /// The generator's optimiser settings as the AdamW rule takes them.
    fn optimiser(&self) -> TrainConfig {
        TrainConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            ..TrainConfig::default()
        }
    }
}

/// The four losses of one batch (each unweighted, a batch mean) and their weighted sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    pub confidence: f64,
    pub diversity: f64,
    /// The statistics-alignment KL.
    pub stats: f64,
    pub smooth: f64,
    /// `w_c·confidence + w_d·diversity + w_s·stats + w_m·smooth`.
    pub total: f64,
}

/// What [`train_generator`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct DreamReport {
    /// Updates applied.
    pub steps: usize,
    /// The losses of the first step's batch and of the last one's, each before its update
    /// (zero without a step).
    pub first: LossParts,
    pub last: LossParts,
    pub wall: Duration,
}

/// The seen label set: label ids and their L2-normalised text embeddings, in one order.
/// The confidence and diversity losses are over all of them, so that a generated sample
/// is scored against every label the snapshot knows; with `L` of the `K` labels generated
/// (those with published statistics), the diversity loss cannot go below
/// `1 − ln L / ln K`.
#[derive(Clone, Copy, Debug)]
pub struct DreamLabels<'a> {
    /// `[K]`, distinct.
    pub ids: &'a [u16],
    /// `[K, E]`.
    pub text: &'a [f32],
}

/// The labels a generator is trained on: the seen label set with its text embeddings,
/// and the published statistics of those that have them.
struct Labels<'a> {
    text: &'a [f32],
    n_labels: usize,
    /// Indices into the label set of the labels with published statistics.
    published: Vec<u32>,
    /// Their published mean and variance, in the order of `published`.
    targets: Vec<(Vec<f32>, Vec<f32>)>,
}

impl<'a> Labels<'a> {
    /// Checks every shape against the generator and snapshot.
    fn new(
        gen: &Generator,
        snapshot: &Snapshot,
        set: &DreamLabels<'a>,
        stats: &StatsTable,
    ) -> Result<Self, PrivateError> {
        let (labels, text) = (set.ids, set.text);
        let (g, b) = (gen.dims(), snapshot.dims());
        for (field, expected, found) in [
            ("snapshot width", g.width, b.width),
            ("snapshot tokens per image", g.tokens, b.tokens),
            ("snapshot embedding width", g.embed, b.embed),
            ("statistics width", g.width, stats.width()),
            (
                "statistics tokens per sample",
                g.tokens,
                stats.tokens_per_sample(),
            ),
        ] {
            if expected != found {
                return Err(PrivateError::Dims {
                    what: "generator training",
                    field,
                    expected,
                    found: found as u64,
                });
            }
        }
        patch_grid(g.tokens)?;
        if text.len() != labels.len() * g.embed {
            return Err(PrivateError::Shape {
                what: "text (K·E)",
                expected: labels.len() * g.embed,
                found: text.len(),
            });
        }
        let mut sorted = labels.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(PrivateError::Invalid {
                what: "label set",
                why: "a label listed twice",
            });
        }
        let mut published = vec![];
        let mut targets = vec![];
        for (i, &l) in labels.iter().enumerate() {
            if let Some(t) = stats.published(l) {
                published.push(i as u32);
                targets.push(t);
            }
        }
        if published.is_empty() {
            return Err(PrivateError::NoPublishedLabel);
        }
        Ok(Labels {
            text,
            n_labels: labels.len(),
            published,
            targets,
        })
    }
}

/// The losses of one batch and, when `grad`, the generator's gradients.
struct Objective<'a> {
    gen: &'a Generator,
    snapshot: &'a Snapshot,
    labels: &'a Labels<'a>,
    cfg: &'a DreamConfig,
    gemm: &'a Gemm,
}

impl Objective<'_> {
    /// The batch whose sample `b` is of published label `picks[b]` (an index into
    /// `labels.published`) with noise `z`.
    fn run(
        &self,
        picks: &[usize],
        z: &[f32],
        grad: bool,
    ) -> Result<(LossParts, Option<GeneratorParams>), PrivateError> {
        let (cfg, labels) = (self.cfg, self.labels);
        let dims = self.gen.dims();
        let (e, n, d, batch) = (dims.embed, dims.tokens, dims.width, picks.len());
        let rows: Vec<u32> = picks.iter().map(|&p| labels.published[p]).collect();
        let targets: Vec<u32> = picks.iter().map(|&p| p as u32).collect();
        let mut cond = Vec::with_capacity(batch * e);
        for &r in &rows {
            cond.extend_from_slice(&labels.text[r as usize * e..(r as usize + 1) * e]);
        }
        let saved = self.gen.forward(self.gemm, z, &cond, batch)?;
        let fwd = self
            .snapshot
            .logits(&saved.tokens, batch, labels.text, labels.n_labels)?;
        let k = labels.n_labels;
        let (l_conf, d_conf) = confidence(&fwd.logits, k, &rows, cfg.temperature as f64)?;
        let (l_div, d_div) = diversity(&fwd.logits, k)?;
        let (l_stats, d_stats) = stats_alignment(&saved.tokens, n, d, &targets, &labels.targets)?;
        let (l_smooth, d_smooth) = smoothness(&saved.tokens, n, d)?;
        let (wc, wd, ws, wm) = (
            cfg.w_confidence as f64,
            cfg.w_diversity as f64,
            cfg.w_stats as f64,
            cfg.w_smooth as f64,
        );
        let parts = LossParts {
            confidence: l_conf,
            diversity: l_div,
            stats: l_stats,
            smooth: l_smooth,
            total: wc * l_conf + wd * l_div + ws * l_stats + wm * l_smooth,
        };
        if !grad {
            return Ok((parts, None));
        }
        let d_logits: Vec<f64> = d_conf
            .iter()
            .zip(&d_div)
            .map(|(a, b)| wc * a + wd * b)
            .collect();
        let mut d_tokens = self.snapshot.tokens_grad(&fwd, &d_logits);
        for ((g, &a), &b) in d_tokens.iter_mut().zip(&d_stats).zip(&d_smooth) {
            *g += (ws * a as f64 + wm * b as f64) as f32;
        }
        Ok((parts, Some(self.gen.backward(self.gemm, &saved, &d_tokens))))
    }
}

/// `batch` indices into `0..labels`, class-balanced as SPEC §4 balances a batch:
/// `⌊batch/labels⌋` of each, the rest distinct labels at random; with more labels than
/// `batch`, `batch` distinct labels at random.
pub(crate) fn balanced(labels: usize, batch: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut out: Vec<usize> = (0..labels)
        .flat_map(|l| std::iter::repeat_n(l, batch / labels))
        .collect();
    let mut pool: Vec<usize> = (0..labels).collect();
    for i in 0..batch % labels {
        let j = i + rng.below((labels - i) as u64) as usize;
        pool.swap(i, j);
        out.push(pool[i]);
    }
    out
}

/// Trains `gen` for `cfg.steps` updates against `snapshot` on the label set `labels`,
/// generating the labels whose statistics in `stats` are published. Refused, changing nothing, when a shape or
/// setting is wrong or no label of `labels` has published statistics.
pub fn train_generator(
    gen: &mut Generator,
    snapshot: &Snapshot,
    labels: &DreamLabels<'_>,
    stats: &StatsTable,
    cfg: &DreamConfig,
) -> Result<DreamReport, PrivateError> {
    let start = Instant::now();
    cfg.check()?;
    let set = Labels::new(gen, snapshot, labels, stats)?;
    let optim = cfg.optimiser();
    let gemm = Gemm::default();
    let mut rng = SplitMix64::new(cfg.seed);
    let (mut first, mut last) = (LossParts::default(), LossParts::default());
    for step in 0..cfg.steps {
        let picks = balanced(set.published.len(), cfg.batch, &mut rng);
        let z = Generator::noise(cfg.batch, rng.next_u64());
        let objective = Objective {
            gen,
            snapshot,
            labels: &set,
            cfg,
            gemm: &gemm,
        };
        let (parts, grads) = objective.run(&picks, &z, true)?;
        let grads = grads.expect("asked for");
        if step == 0 {
            first = parts;
        }
        last = parts;
        log::debug!("generator step {step}: {parts:?}");
        gen.update(&optim, &grads);
    }
    let report = DreamReport {
        steps: cfg.steps,
        first,
        last,
        wall: start.elapsed(),
    };
    log::info!(
        "generator: {} steps in {:.2?}, loss {:.4} -> {:.4}",
        report.steps,
        report.wall,
        report.first.total,
        report.last.total
    );
    Ok(report)
}

/// The losses ([`LossParts`], with `cfg`'s weights and temperature) of the batch of one
/// token set per entry of `batch` (label ids, each with published statistics in `stats`),
/// generated from the noise of `seed`; `labels` as [`train_generator`] takes them.
/// Changes nothing.
pub fn generator_losses(
    gen: &Generator,
    snapshot: &Snapshot,
    labels: &DreamLabels<'_>,
    stats: &StatsTable,
    batch: &[u16],
    seed: u64,
    cfg: &DreamConfig,
) -> Result<LossParts, PrivateError> {
    cfg.check()?;
    let set = Labels::new(gen, snapshot, labels, stats)?;
    let mut picks = Vec::with_capacity(batch.len());
    for &l in batch {
        let published = set
            .published
            .iter()
            .position(|&i| labels.ids[i as usize] == l);
        picks.push(published.ok_or(PrivateError::Unpublished { label: l })?);
    }
    let gemm = Gemm::default();
    let objective = Objective {
        gen,
        snapshot,
        labels: &set,
        cfg,
        gemm: &gemm,
    };
    let z = Generator::noise(batch.len(), seed);
    Ok(objective.run(&picks, &z, false)?.0)
}
