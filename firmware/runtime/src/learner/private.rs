//! SPEC §7 on the learner ("data-free privacy mode", after "Always Be Dreaming").
//!
//! A learner created with [`LearnerConfig::private`](super::LearnerConfig::private) set is
//! private for good (`learner.json`'s `mode`); opening it to write in the other mode is
//! refused before anything is written. Its `learn` checks the sample, updates OCW and the
//! "none" calibration (before the step, as always), adds the tokens to the label's
//! aggregate statistics (`stats.bin`, written in place, one label per call), stores **no
//! token record**, and takes ONE training step ([`crate::train::private_step`]) on the new
//! sample and, once a consolidation made a snapshot, class-balanced synthetic samples of
//! the old labels with published statistics ([`PrivateReplay`]: by default the new
//! sample's tokens restyled to each old label's statistics; or SPEC §7's generator's
//! token sets): local CE over the current period's labels, class-balanced
//! CE over every learned label, and `μ`-weighted feature distillation towards the snapshot
//! `θ'` through the old labels' text embeddings. The tokens are gone when `learn` returns.
//!
//! A label is *learned* when its statistics count a sample (the store's per-label record
//! counts stay 0 here). *Old* labels are those learned before the last consolidation; the
//! *current period*'s are the others and the sample's own.
//!
//! Consolidation ([`Learner::consolidate`], and every
//! [`PrivateConfig::consolidate_every`] samples): the tuned weights are checkpointed and
//! copied to `θ'` (`snapshot.safetensors`), for the generator replay the generator is
//! trained against `θ'` on the labels with published statistics ([`train_generator`]) and
//! saved (`generator.bin`; the restyled replay trains and keeps none), and a new period
//! starts (`private.json`), each file replaced atomically in that order.
//! A crash between two of them leaves a newer snapshot or generator with the older period:
//! the next consolidation catches up.
//!
//! Beside `stats.bin` (SPEC §7's statistics, pooled over the `N` tokens), `cls_stats.bin`
//! holds the same statistics of the samples' CLS tokens (token 0) alone: the same format
//! at `N = 1`, written after `stats.bin`, published from the same 8 samples. The restyled
//! replay draws each synthetic sample's CLS token from them. A folder made before it
//! existed gets it at its next open for writing; until a label's CLS statistics count 8
//! samples its synthetic samples keep the restyled CLS token.
//!
//! After a crash, `stats.bin` holds every sample whose `learn` wrote it (its write comes
//! before the step and the state blob): a cut between the two leaves a label's statistics
//! one sample ahead of the learned count, never torn; `cls_stats.bin` is at most one
//! sample behind `stats.bin`.
//!
//! Consolidation's cost (its report: wall time, generator steps, a peak-bytes estimate) is
//! not yet counted in SPEC §8's budget: a private learner cannot be a diet learner yet.
//!
//! The private step runs on the learner's training backend, chosen as for any learner
//! (on wgpu the block's forward, backward and AdamW run on the GPU and the loss at the
//! embedding on the host, see `TrainBackend::private_step`); the snapshot's forward and
//! the generator's training run on the CPU.

use std::fs;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::folder::{format_id, io_err, read_json, sync_dir, sync_file, write_atomic};
use super::{LearnError, Learner};
use crate::block::{memory_report, BlockDims, FrozenHead};
use crate::private::dream::balanced;
use crate::private::generator::GeneratorDims;
use crate::private::{
    draw_cls, restyle, train_generator, DreamConfig, DreamLabels, Generator, LossParts, Snapshot,
    StatsFile, StatsTable,
};
use crate::train::{load_block, save_block, PrivateBatch, StepStats};
use anytime_core::rng::SplitMix64;

pub(super) const STATS_FILE: &str = "stats.bin";
pub(super) const CLS_STATS_FILE: &str = "cls_stats.bin";
pub(super) const GENERATOR_FILE: &str = "generator.bin";
pub(super) const SNAPSHOT_FILE: &str = "snapshot.safetensors";
pub(super) const PRIVATE_FILE: &str = "private.json";

/// SPEC §7's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateConfig {
    /// Consolidate every this many learned samples (0: only when asked). 500 by default:
    /// a consolidation costs about [`DreamConfig::steps`] (200) generator steps of 32, each
    /// a forward and backward of the snapshot, so every 500 samples keeps it below the
    /// cost of the 500 learner steps between.
    pub consolidate_every: u32,
    /// The generator's training.
    pub dream: DreamConfig,
    /// `μ`, the weight of the feature distillation of the old labels' logits (0.1).
    pub mu: f32,
    /// Synthetic samples in each step (31: with the real one, SPEC §4's batch of 32).
    pub synthetic: usize,
    /// Take the local CE over the current period's labels (on; off only to measure what
    /// it brings: the real sample is then learned through the class-balanced CE alone).
    pub local_ce: bool,
    /// Where a step's synthetic samples of the old labels come from.
    pub replay: PrivateReplay,
}

/// The source of the private step's synthetic samples of an old label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrivateReplay {
    /// The new sample's tokens restyled to the old label's published statistics
    /// ([`crate::private::restyle`]), each copy's CLS token drawn from the label's CLS
    /// statistics ([`crate::private::draw_cls`]): the default, the one that holds the old
    /// labels on real images (BENCHMARKS.md, "Data-free class-incremental").
    #[default]
    Restyle,
    /// SPEC §7's class-conditional generator `G(z, y)`, trained at each consolidation
    /// (its sets replayed once one is trained).
    Generator,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        PrivateConfig {
            consolidate_every: 500,
            dream: DreamConfig::default(),
            mu: 0.1,
            synthetic: 31,
            local_ce: true,
            replay: PrivateReplay::default(),
        }
    }
}

impl PrivateConfig {
    fn check(&self) -> Result<(), LearnError> {
        let bad = |m: String| Err(LearnError::Config(format!("private: {m}")));
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return bad(format!("μ = {} is not a finite number ≥ 0", self.mu));
        }
        if self.synthetic > 4096 {
            return bad(format!("{} synthetic samples a step", self.synthetic));
        }
        if self.dream.batch == 0 || self.dream.batch > 4096 {
            return bad(format!("generator batch {}", self.dream.batch));
        }
        Ok(())
    }
}

/// The four generator losses of a batch ([`LossParts`]), for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSummary {
    pub confidence: f64,
    pub diversity: f64,
    pub stats: f64,
    pub smooth: f64,
    pub total: f64,
}

impl From<LossParts> for LossSummary {
    fn from(p: LossParts) -> Self {
        LossSummary {
            confidence: p.confidence,
            diversity: p.diversity,
            stats: p.stats,
            smooth: p.smooth,
            total: p.total,
        }
    }
}

/// What one consolidation did and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsolidationReport {
    /// Its index (the first is 0).
    pub index: u64,
    /// Samples learned when it ran.
    pub learned: u64,
    /// Learned labels (old from now on), and those of them with published statistics
    /// (the generator's).
    pub labels: usize,
    pub published: usize,
    /// Generator updates (0 when no label had published statistics).
    pub generator_steps: usize,
    /// Generator losses of the first and last step's batches, before their updates.
    pub loss_first: LossSummary,
    pub loss_last: LossSummary,
    /// Wall-clock seconds in all (snapshot, generator, saves) and in the generator's
    /// training alone.
    pub seconds: f64,
    pub generator_seconds: f64,
    /// An estimate of the peak bytes it took beyond what the learner holds
    /// ([`consolidation_peak_bytes`]).
    pub peak_bytes: u64,
}

/// The parts of a private step's loss (before its update; their sum is the report's
/// `loss`) and its synthetic samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivateStepParts {
    /// CE of the new sample over the current period's labels (0 with `local_ce` off).
    pub local: f32,
    /// Class-balanced CE of the batch (real and synthetic) over every learned label.
    pub balanced: f32,
    /// `μ`-weighted feature distillation towards the snapshot (0 before there are old
    /// labels).
    pub distill: f32,
    pub synthetic: usize,
}

/// `private.json`: consolidations done, where the current period began, the old labels
/// and the last consolidation's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrivateRecord {
    pub consolidations: u64,
    /// Samples learned at the last consolidation.
    pub learned_at: u64,
    /// Labels learned before the last consolidation.
    pub old_labels: Vec<u16>,
    pub last: Option<ConsolidationReport>,
}

impl PrivateRecord {
    /// Reads `private.json` of the learner folder `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<PrivateRecord>, LearnError> {
        read_json(&dir.join(PRIVATE_FILE))
    }
}

/// Where a private learner stands.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateStatus {
    pub config: PrivateConfig,
    pub consolidations: u64,
    /// Samples learned since the last consolidation.
    pub since: u64,
    /// Per label id with statistics, the samples they count and whether they are
    /// published.
    pub labels: Vec<(u16, u64, bool)>,
    pub generator: bool,
    pub last: Option<ConsolidationReport>,
}

/// A private learner's statistics, period, generator and snapshot.
pub(super) struct PrivateRun {
    cfg: PrivateConfig,
    /// `None` when opened to read.
    file: Option<StatsFile>,
    table: StatsTable,
    /// The CLS tokens' statistics (`cls_stats.bin`); `None` when opened to read.
    cls_file: Option<StatsFile>,
    cls_table: StatsTable,
    record: PrivateRecord,
    generator: Option<Generator>,
    snapshot: Option<Snapshot>,
}

impl PrivateRun {
    /// The run of the learner folder `dir`: a damaged `generator.bin`, `snapshot.safetensors`,
    /// `stats.bin` or `cls_stats.bin` header is refused with the file's name.
    pub(super) fn open(
        cfg: PrivateConfig,
        dir: &Path,
        dims: &BlockDims,
        logit_scale: f32,
        write: bool,
        durable: bool,
    ) -> Result<Self, LearnError> {
        cfg.check()?;
        let open = |name: &str, tokens: usize| -> Result<_, LearnError> {
            let path = dir.join(name);
            Ok(if write {
                let _ = fs::remove_file(dir.join(format!("{name}.tmp")));
                let mut f = StatsFile::open_or_create(&path, dims.width, tokens)?;
                f.set_durable(durable);
                let t = f.table().clone();
                (Some(f), t)
            } else if path.exists() {
                (None, StatsFile::read(&path, dims.width, tokens)?)
            } else {
                (None, StatsTable::new(dims.width, tokens)?)
            })
        };
        let (file, table) = open(STATS_FILE, dims.tokens)?;
        let (cls_file, cls_table) = open(CLS_STATS_FILE, 1)?;
        let state = |path: &Path, message: String| LearnError::State {
            path: path.to_path_buf(),
            message,
        };
        let gen_path = dir.join(GENERATOR_FILE);
        let generator = match fs::read(&gen_path) {
            Ok(bytes) => Some(
                Generator::from_bytes(&bytes, &GeneratorDims::for_block(dims))
                    .map_err(|e| state(&gen_path, format!("corrupt generator: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(io_err(&gen_path, source)),
        };
        let snap_path = dir.join(SNAPSHOT_FILE);
        let snapshot = if snap_path.is_file() {
            let (params, head, _) = load_block(&snap_path, dims)
                .map_err(|e| state(&snap_path, format!("corrupt snapshot: {e}")))?;
            Some(
                Snapshot::new(*dims, params, head, logit_scale)
                    .map_err(|e| state(&snap_path, format!("snapshot: {e}")))?,
            )
        } else {
            None
        };
        Ok(PrivateRun {
            cfg,
            file,
            table,
            cls_file,
            cls_table,
            record: PrivateRecord::read(dir)?.unwrap_or_default(),
            generator,
            snapshot,
        })
    }
}

/// An estimate of the peak bytes a consolidation takes beyond what the learner holds: the
/// snapshot (weights, and every parameter's gradient in its backward), the generator
/// (parameters, two moments) and its gradients, and one generator step for a batch of
/// `batch` over `labels` labels: the generator's forward and backward buffers and
/// tokens, the snapshot's saved activations and backward scratch ([`memory_report`]),
/// four token-sized gradients (statistics, smoothness, the block's rows and its input)
/// and the logits with their three gradients (f64).
pub fn consolidation_peak_bytes(
    dims: &BlockDims,
    gen: &GeneratorDims,
    batch: usize,
    labels: usize,
) -> u64 {
    let block = memory_report(dims, batch);
    let snapshot = block.weights + block.gradients + block.weight_gradients;
    let generator = 4 * 4 * gen.params();
    let tokens = batch * gen.tokens_len();
    let generator_step = 4 * batch * (gen.input() + 3 * gen.hidden + 2 * gen.record()) + 4 * tokens;
    let gradients = 4 * 4 * tokens;
    let logits = 8 * 4 * batch * labels;
    (snapshot
        + generator
        + generator_step
        + block.activations
        + block.backward_scratch
        + gradients
        + logits) as u64
}

/// An estimate of the peak bytes a consolidation without a generator takes beyond what
/// the learner holds, its checkpoint's: the tuned state (parameters and two moments) read
/// back, its values as bytes, and the file's buffer (up to twice the bytes as it grows).
pub fn snapshot_peak_bytes(dims: &BlockDims) -> u64 {
    let state = 3 * memory_report(dims, 1).weights;
    (4 * state) as u64
}

impl Learner {
    fn not_private(&self) -> LearnError {
        LearnError::Config(format!(
            "learner {} is not a private (SPEC §7) learner",
            self.dir.display()
        ))
    }

    /// Whether this learner is in private mode.
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// The private mode's settings and where it stands (`None`: not a private learner).
    pub fn private_status(&self) -> Option<PrivateStatus> {
        let run = self.private.as_ref()?;
        Some(PrivateStatus {
            config: run.cfg.clone(),
            consolidations: run.record.consolidations,
            since: self.state.learned.saturating_sub(run.record.learned_at),
            labels: run
                .table
                .iter()
                .map(|(l, s)| (l, s.samples(), s.published().is_some()))
                .collect(),
            generator: run.generator.is_some(),
            last: run.record.last.clone(),
        })
    }

    /// Whether label `id` was learned in private mode: OCW observed a sample of it (its
    /// statistics may not say so: those of fewer than 8 samples live in memory only, and a
    /// restart loses them), or it has statistics (the state blob may be older than
    /// `stats.bin`). Both have an entry for a label only once a sample of it came.
    pub(super) fn learned_privately(&self, id: u16) -> bool {
        let Some(run) = self.private.as_ref() else {
            return false;
        };
        self.state.ocw.get(id).is_some() || run.table.get(id).is_some()
    }

    /// Adds a sample's tokens to its label's statistics and its CLS token to the label's
    /// CLS statistics, and writes them (`stats.bin`, then `cls_stats.bin`).
    pub(super) fn observe_private(&mut self, label: u16, tokens: &[f32]) -> Result<(), LearnError> {
        let d = self.dims.width;
        let run = self.private.as_mut().expect("a private learner");
        let file = run.file.as_mut().expect("a writer");
        file.observe(label, tokens)?;
        run.table = file.table().clone();
        let cls_file = run.cls_file.as_mut().expect("a writer");
        cls_file.observe(label, &tokens[..d])?;
        run.cls_table = cls_file.table().clone();
        Ok(())
    }

    /// The private step on the new sample `tokens` (label index `y` among `ids`, the
    /// learned labels, whose text embeddings are the first rows of `text`, `[K, E]`) and
    /// class-balanced synthetic samples of the old labels with published statistics.
    pub(super) fn private_train(
        &mut self,
        tokens: &[f32],
        y: usize,
        ids: &[u16],
        text: &[f32],
    ) -> Result<(StepStats, PrivateStepParts), LearnError> {
        let e = self.dims.embed;
        let per = self.dims.tokens_len();
        let n_labels = text.len() / e;
        let run = self.private.as_ref().expect("a private learner");
        let is_old = |i: usize| {
            ids.get(i)
                .is_some_and(|l| run.record.old_labels.contains(l))
        };
        let old: Vec<usize> = (0..ids.len()).filter(|&i| is_old(i)).collect();
        let current: Vec<usize> = (0..n_labels).filter(|&i| !is_old(i) || i == y).collect();
        let rows = |idx: &[usize]| -> Vec<f32> {
            idx.iter()
                .flat_map(|&i| text[i * e..(i + 1) * e].iter().copied())
                .collect()
        };
        let local_text = rows(&current);
        let local_y = current.iter().position(|&i| i == y).expect("y is current") as u32;

        let mut batch_tokens = anytime_linalg::AlignedVec::with_capacity(per);
        batch_tokens.extend_from_slice(tokens);
        let mut labels = vec![y as u32];
        // Synthetic samples once a consolidation made a snapshot (and, for the generator
        // replay, trained the generator).
        let source = match (run.cfg.replay, &run.generator) {
            (PrivateReplay::Generator, Some(gen)) => Some(Some(gen)),
            (PrivateReplay::Generator, None) => None,
            (PrivateReplay::Restyle, _) => Some(None),
        };
        if let (Some(gen), Some(_)) = (source, &run.snapshot) {
            let published: Vec<usize> = old
                .iter()
                .copied()
                .filter(|&i| run.table.published(ids[i]).is_some())
                .collect();
            // (`synthetic` = 0 draws no pick: every count is 0 and generates nothing.)
            if !published.is_empty() {
                let seed = synthetic_seed(self.cfg.seed, self.state.learned);
                let mut rng = anytime_core::rng::SplitMix64::new(seed);
                let picks = balanced(published.len(), run.cfg.synthetic, &mut rng);
                for (j, &label) in published.iter().enumerate() {
                    let count = picks.iter().filter(|&&p| p == j).count();
                    let row = &text[label * e..(label + 1) * e];
                    let noise = rng.next_u64();
                    let t = match gen {
                        Some(gen) => gen.generate(row, count, noise)?,
                        None => {
                            let l = ids[label];
                            let (mean, var) = run.table.published(l).expect("filtered above");
                            let one = restyle(tokens, &mean, &var)?;
                            let mut t = one.repeat(count);
                            // Each copy's CLS token its own draw (a folder older than
                            // `cls_stats.bin` keeps the restyled one until 8 samples).
                            if let Some((cls_mean, cls_var)) = run.cls_table.published(l) {
                                let mut draws = SplitMix64::new(noise);
                                for copy in t.chunks_exact_mut(one.len()) {
                                    draw_cls(copy, &cls_mean, &cls_var, &mut draws)?;
                                }
                            }
                            t
                        }
                    };
                    if t.iter().any(|v| !v.is_finite()) {
                        log::warn!(
                            "non-finite synthetic tokens; no synthetic sample of label {}",
                            ids[label]
                        );
                        continue;
                    }
                    batch_tokens.extend_from_slice(&t);
                    labels.extend(std::iter::repeat_n(label as u32, count));
                }
            }
        }
        let b = labels.len();
        // The distillation's old labels, their text and the snapshot's logits (none
        // before a snapshot or an old label).
        let (n_old, old_text, old_target) = match &run.snapshot {
            Some(snap) if !old.is_empty() => {
                let old_text = rows(&old);
                let fwd = snap.logits(&batch_tokens, b, &old_text, old.len())?;
                let target = fwd.logits.iter().map(|&l| l as f32).collect();
                (old.len(), old_text, target)
            }
            _ => (0, Vec::new(), Vec::new()),
        };
        let mu = run.cfg.mu;
        // Without the local CE the batch has no "real" sample: the new one is learned
        // through the class-balanced CE alone.
        let local = run.cfg.local_ce;
        let local_labels = [local_y];
        let batch = PrivateBatch {
            tokens: &batch_tokens,
            real: usize::from(local),
            labels: &labels,
            text,
            n_labels,
            local_labels: if local { &local_labels } else { &[] },
            local_text: if local { &local_text } else { &[] },
            n_local: if local { current.len() } else { 0 },
            old_text: &old_text,
            n_old,
            old_target: &old_target,
            mu,
        };
        let stats = self.backend()?.private_step(&batch, 1.0)?;
        self.tuned = None;
        log::debug!("private step: {stats:?}");
        Ok((
            StepStats {
                loss: stats.loss as f32,
                loss_label: stats.local as f32,
                loss_other: stats.balanced as f32,
                correct: stats.correct,
                batch: b,
                step: stats.step,
            },
            PrivateStepParts {
                local: stats.local as f32,
                balanced: stats.balanced as f32,
                distill: stats.distill as f32,
                synthetic: b - 1,
            },
        ))
    }

    /// `count` synthetic token sets `[count, N, D]` of the learned label `name` from the
    /// current generator and the noise of `seed` (audits, the simulator); `None` when
    /// there is no generator yet or the label has no published statistics.
    pub fn synthetic_tokens(
        &mut self,
        name: &str,
        count: usize,
        seed: u64,
    ) -> Result<Option<Vec<f32>>, LearnError> {
        let Some(id) = self.store.find_label(name)? else {
            return Ok(None);
        };
        let run = self.private.as_ref().ok_or_else(|| self.not_private())?;
        let (Some(_), Some(_)) = (&run.generator, run.table.published(id)) else {
            return Ok(None);
        };
        let text = self.predictor.encoder.encode_texts(&[name])?;
        let run = self.private.as_ref().expect("checked above");
        let gen = run.generator.as_ref().expect("checked above");
        Ok(Some(gen.generate(&text, count, seed)?))
    }

    /// Consolidates when [`PrivateConfig::consolidate_every`] samples were learned since
    /// the last consolidation.
    pub(super) fn consolidate_if_due(&mut self) -> Result<Option<ConsolidationReport>, LearnError> {
        let Some(run) = &self.private else {
            return Ok(None);
        };
        let every = u64::from(run.cfg.consolidate_every);
        if every > 0 && self.state.learned.saturating_sub(run.record.learned_at) >= every {
            return self.consolidate().map(Some);
        }
        Ok(None)
    }

    /// SPEC §7's consolidation: checkpoint the tuned weights, copy them to the snapshot
    /// `θ'` (saved), train the generator against it on the labels with published
    /// statistics (saved), and start a new period (saved). Private learners only.
    pub fn consolidate(&mut self) -> Result<ConsolidationReport, LearnError> {
        self.writer()?;
        if self.private.is_none() {
            return Err(self.not_private());
        }
        let t0 = Instant::now();
        self.checkpoint()?;
        let tuned = self.tuned_state()?;
        let head: FrozenHead = self.predictor.original.head.clone();
        let dims = self.dims;
        let snap_path = self.dir.join(SNAPSHOT_FILE);
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let id = self.id.map(format_id);
        let saved = save_block(&tmp, &dims, &tuned.params, &head, id.as_deref())
            .map_err(LearnError::from)
            .and_then(|()| sync_file(&tmp))
            .and_then(|()| fs::rename(&tmp, &snap_path).map_err(|s| io_err(&snap_path, s)));
        if let Err(e) = saved {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir);
        let snapshot = Snapshot::new(dims, tuned.params, head, self.cfg.train.logit_scale)?;

        // The learned labels with their names (a label whose name was lost is left out).
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for info in self.store.labels()? {
            if let (Some(name), true) = (info.name, self.learned_privately(info.id)) {
                ids.push(info.id);
                names.push(name);
            }
        }
        let learned = self.state.learned;
        let seed = self.cfg.seed;
        let run = self.private.as_mut().expect("checked above");
        let generator = run.cfg.replay == PrivateReplay::Generator;
        let published = ids
            .iter()
            .filter(|&&l| run.table.published(l).is_some())
            .count();
        let gen_dims = GeneratorDims::for_block(&dims);
        let mut report = ConsolidationReport {
            index: run.record.consolidations,
            learned,
            labels: ids.len(),
            published,
            generator_steps: 0,
            loss_first: LossSummary::default(),
            loss_last: LossSummary::default(),
            seconds: 0.0,
            generator_seconds: 0.0,
            peak_bytes: if generator {
                consolidation_peak_bytes(&dims, &gen_dims, run.cfg.dream.batch, ids.len())
            } else {
                snapshot_peak_bytes(&dims)
            },
        };
        if !generator {
            log::info!("consolidation: the restyled replay needs no generator; none is trained");
        } else if published > 0 {
            let text = self.predictor.encoder.encode_texts(&names)?;
            let mut gen = match &run.generator {
                Some(g) => g.clone(),
                None => Generator::new(gen_dims, generator_seed(seed))?,
            };
            let mut dream = run.cfg.dream.clone();
            dream.seed = dream_seed(dream.seed, run.record.consolidations);
            let labels = DreamLabels {
                ids: &ids,
                text: &text,
            };
            let r = train_generator(&mut gen, &snapshot, &labels, &run.table, &dream)?;
            if gen
                .params
                .tensors()
                .iter()
                .any(|t| t.iter().any(|v| !v.is_finite()))
            {
                return Err(LearnError::Config(
                    "the generator's training diverged (non-finite parameters); the old generator is kept".into(),
                ));
            }
            write_atomic(&self.dir.join(GENERATOR_FILE), &gen.to_bytes())?;
            report.generator_steps = r.steps;
            report.loss_first = r.first.into();
            report.loss_last = r.last.into();
            report.generator_seconds = r.wall.as_secs_f64();
            run.generator = Some(gen);
        } else {
            log::info!(
                "consolidation: no label has published statistics; the generator is not trained"
            );
        }
        run.snapshot = Some(snapshot);
        report.seconds = t0.elapsed().as_secs_f64();
        let record = PrivateRecord {
            consolidations: run.record.consolidations + 1,
            learned_at: learned,
            old_labels: ids,
            last: Some(report.clone()),
        };
        let json = serde_json::to_vec_pretty(&record).expect("plain struct");
        write_atomic(&self.dir.join(PRIVATE_FILE), &json)?;
        run.record = record;
        log::info!(
            "consolidation {}: {} generator steps in {:.2} s ({:.2} s in all), peak ≈ {} bytes",
            report.index,
            report.generator_steps,
            report.generator_seconds,
            report.seconds,
            report.peak_bytes
        );
        Ok(report)
    }
}

/// The seed of a new generator's initial weights, from the learner's.
fn generator_seed(seed: u64) -> u64 {
    seed ^ 0x4745_4E00
}

/// The seed of a private step's synthetic draw (labels and noise): a learn's replay seed
/// ([`super::replay_seed`]) in a stream of its own.
fn synthetic_seed(seed: u64, learned: u64) -> u64 {
    super::replay_seed(seed, learned, 0) ^ 0x5359_4E54
}

/// The generator training's seed at consolidation `index` (the first is 0) from the
/// configured one: each consolidation draws differently.
fn dream_seed(seed: u64, index: u64) -> u64 {
    seed ^ (index + 1).wrapping_mul(0xA24B_AED4_963E_E407)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_settings_are_checked_at_their_bounds() {
        assert!(PrivateConfig::default().check().is_ok());
        let with = |f: fn(&mut PrivateConfig)| {
            let mut c = PrivateConfig::default();
            f(&mut c);
            c.check()
        };
        assert!(with(|c| c.mu = 0.0).is_ok());
        for mu in [-0.1, f32::NAN, f32::INFINITY] {
            let c = PrivateConfig {
                mu,
                ..PrivateConfig::default()
            };
            assert!(c.check().unwrap_err().to_string().contains("μ"), "{mu}");
        }
        assert!(with(|c| c.synthetic = 4096).is_ok());
        assert!(with(|c| c.synthetic = 4097).is_err());
        assert!(with(|c| c.dream.batch = 1).is_ok());
        assert!(with(|c| c.dream.batch = 4096).is_ok());
        assert!(with(|c| c.dream.batch = 0).is_err());
        assert!(with(|c| c.dream.batch = 4097).is_err());
    }

    #[test]
    fn private_seeds_differ_by_seed_count_and_consolidation() {
        let mut synthetic = std::collections::HashSet::new();
        let mut dream = std::collections::HashSet::new();
        for seed in [0, 1, 2, 7, u64::MAX] {
            for i in 0..9 {
                assert!(synthetic.insert(synthetic_seed(seed, i)), "{seed} {i}");
                assert!(dream.insert(dream_seed(seed, i)), "{seed} {i}");
            }
        }
        // Pinned, so that a run draws the same across versions; the synthetic stream is
        // not the replay's.
        assert_eq!(
            synthetic_seed(5, 3),
            super::super::replay_seed(5, 3, 0) ^ 0x5359_4E54
        );
        assert_ne!(synthetic_seed(5, 3), super::super::replay_seed(5, 3, 0));
        assert_eq!(dream_seed(5, 0), 5 ^ 0xA24B_AED4_963E_E407);
        assert_eq!(
            dream_seed(5, 2),
            5 ^ 3u64.wrapping_mul(0xA24B_AED4_963E_E407)
        );
        assert_eq!(generator_seed(0x4745_4E01), 1, "bits in common cancel");
    }

    /// The estimate's terms on small dims where no two of them coincide, worked out apart
    /// (bytes): snapshot 2848, generator 18368, generator step 2736, the block's saved
    /// activations 1740 and backward scratch 1620, token gradients 1440, logits 1056.
    /// `tests/consolidation_memory.rs` checks the estimate against a counted heap.
    #[test]
    fn the_peak_estimate_adds_up_its_terms() {
        let dims = BlockDims {
            width: 6,
            heads: 3,
            mlp: 10,
            tokens: 5,
            embed: 7,
        };
        let gen = GeneratorDims {
            width: 6,
            tokens: 5,
            embed: 7,
            hidden: 9,
            components: 4,
        };
        assert_eq!(consolidation_peak_bytes(&dims, &gen, 3, 11), 29808);
        assert_eq!(
            consolidation_peak_bytes(&dims, &gen, 3, 12) - 29808,
            8 * 4 * 3,
            "a label more: four f64 logits a sample"
        );
    }
}
