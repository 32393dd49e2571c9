//! The anytime learner's methods in the simulator: the full method (OCW mixing), the
//! tuned model alone, and the ablations of SPEC §9 (no OCW, no "other" loss, the α'
//! variant, raw tokens and other codec settings), all on top of
//! [`anytime_runtime::learner::Learner`] fed with cached trunk tokens.
//!
//! Methods that differ only in how they predict (full, tuned, no-ocw, alpha-other)
//! share one learner: it trains once per sample, and each method reads the same tuned
//! block and OCW state with its own [`Mixing`]. Methods that train differently
//! (no-other, raw, `kKbB`) get their own learner. Every learner lives in its own
//! folder, wiped at the start of a run.
//!
//! The private methods (`private`, `private-tuned`, `private-generator` and the ablations
//! of issue 15) run the learner in SPEC §7's private mode: no record is stored, and the
//! learner consolidates
//! (snapshot, generator) at the end of every stage, the task boundary of the
//! class-incremental protocol, as "Always Be Dreaming" does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use anytime_core::codec::{encoded_len, CodecParams};
use anytime_runtime::assets::ModelAssets;
use anytime_runtime::learner::{
    ConsolidationReport, DietConfig, Learner, LearnerConfig, Mixing, PrivateConfig, PrivateReplay,
};
use anytime_runtime::predict::{LabelSet, Prediction, Predictor};
use anytime_runtime::private::DreamConfig;
use anytime_runtime::train::{BackendChoice, TrainConfig};
use anytime_runtime::typicality::threshold_for_rate;

use super::method::{Features, Method, NoneSignal, OpenPick};
use super::metrics::{Consolidation, StageSteps};
use super::none_probe::NoneProbe;

/// How a learner trains: what differs between learners that cannot be shared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    /// Codec of the learner's store.
    pub codec: CodecParams,
    /// Weight `β` of the "other" term of the loss.
    pub beta_other: f32,
    /// SPEC §7's private mode, with the parts an ablation keeps (`None`: the normal
    /// learner, storing records).
    pub private: Option<PrivateParts>,
}

/// The parts of SPEC §7's private learner a method keeps (all of them for `private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateParts {
    /// Synthetic samples of the old labels in each step (off: "no replay").
    pub replay: bool,
    /// The generator's statistics-alignment loss (weight 50; off: weight 0).
    pub stats: bool,
    /// The feature distillation (`μ` = 0.1; off: `μ` = 0).
    pub distill: bool,
    /// The local CE over the current period's labels.
    pub local_ce: bool,
    /// The synthetic samples from SPEC §7's generator instead of the restyled new sample.
    pub generator: bool,
}

impl PrivateParts {
    pub const ALL: PrivateParts = PrivateParts {
        replay: true,
        stats: true,
        distill: true,
        local_ce: true,
        generator: false,
    };
}

/// The private methods (issue 15): the private learner (restyled replay), its tuned
/// block alone, the generator's replay (SPEC §7), and the ablations (no synthetic replay,
/// the generator without statistics alignment, no distillation, no local CE).
pub const PRIVATE_METHODS: [&str; 7] = [
    "private",
    "private-tuned",
    "private-generator",
    "private-no-replay",
    "private-no-stats",
    "private-no-distill",
    "private-no-local",
];

/// A learner method as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerSpec {
    pub name: String,
    pub training: Training,
    pub mixing: Mixing,
}

/// Names of the learner's methods (besides `kKbB[-plain]`, the full method storing with
/// codec `k = K`, `bits = B`, with plain instead of attention-weighted PCA for `-plain`).
pub const LEARNER_METHODS: [&str; 8] = [
    "full",
    "tuned",
    "no-ocw",
    "alpha-other",
    "alpha-hard",
    "no-other",
    "raw",
    "plain-pca",
];

/// The learner's none score at these `--none-rate`s, under these names.
pub const NONE_RATES: [(&str, f32); 3] = [
    ("none_score", 0.05),
    ("none_score@.01", 0.01),
    ("none_score@.10", 0.10),
];

/// The fixed α of the "no OCW" ablation (SPEC §9): an even mix for every learned label.
pub const NO_OCW_ALPHA: f32 = 0.5;

/// Parses one learner method name, or `None` when it is not one.
///
/// `codec` is the store codec of the full method (SPEC §5 by default), `tokens` the
/// model's `N` (the "raw" store keeps all `N` directions unquantised, which
/// reconstructs the tokens exactly up to f32 rounding).
pub fn parse_method(name: &str, codec: CodecParams, tokens: usize) -> Result<Option<LearnerSpec>> {
    let base = Training {
        codec,
        beta_other: TrainConfig::default().beta_other,
        private: None,
    };
    let private = |parts: PrivateParts| Training {
        private: Some(parts),
        ..base
    };
    let all = PrivateParts::ALL;
    let (training, mixing) = match name {
        "private" => (private(all), Mixing::Ocw),
        "private-tuned" => (private(all), Mixing::TunedOnly),
        "private-no-replay" => (
            private(PrivateParts {
                replay: false,
                ..all
            }),
            Mixing::Ocw,
        ),
        "private-generator" => (
            private(PrivateParts {
                generator: true,
                ..all
            }),
            Mixing::Ocw,
        ),
        "private-no-stats" => (
            private(PrivateParts {
                stats: false,
                generator: true,
                ..all
            }),
            Mixing::Ocw,
        ),
        "private-no-distill" => (
            private(PrivateParts {
                distill: false,
                ..all
            }),
            Mixing::Ocw,
        ),
        "private-no-local" => (
            private(PrivateParts {
                local_ce: false,
                ..all
            }),
            Mixing::Ocw,
        ),
        "full" => (base, Mixing::Ocw),
        "tuned" => (base, Mixing::TunedOnly),
        "no-ocw" => (base, Mixing::Fixed(NO_OCW_ALPHA)),
        "alpha-other" => (base, Mixing::OcwOther),
        "alpha-hard" => (base, Mixing::OcwHard),
        "plain-pca" => (
            Training {
                codec: CodecParams {
                    weighted: false,
                    ..codec
                },
                ..base
            },
            Mixing::Ocw,
        ),
        "no-other" => (
            Training {
                beta_other: 0.0,
                ..base
            },
            Mixing::Ocw,
        ),
        "raw" => (
            Training {
                codec: CodecParams {
                    k: u16::try_from(tokens).context("too many tokens")?,
                    bits: 32,
                    weighted: codec.weighted,
                },
                ..base
            },
            Mixing::Ocw,
        ),
        other => {
            let (kb, weighted) = match other.strip_suffix("-plain") {
                Some(kb) => (kb, false),
                None => (other, codec.weighted),
            };
            let Some(kb) = kb.strip_prefix('k') else {
                return Ok(None);
            };
            let Some((k, b)) = kb.split_once('b') else {
                return Ok(None);
            };
            let (Ok(k), Ok(bits)) = (k.parse::<u16>(), b.parse::<u8>()) else {
                return Ok(None);
            };
            ensure!(
                (1..=tokens).contains(&usize::from(k)),
                "method `{other}`: k must be 1..={tokens}"
            );
            ensure!(
                matches!(bits, 4 | 8 | 32),
                "method `{other}`: bits must be 4, 8 or 32"
            );
            (
                Training {
                    codec: CodecParams { k, bits, weighted },
                    ..base
                },
                Mixing::Ocw,
            )
        }
    };
    Ok(Some(LearnerSpec {
        name: name.to_owned(),
        training,
        mixing,
    }))
}

/// Settings shared by every learner of a run.
#[derive(Debug, Clone)]
pub struct LearnerSettings {
    /// AdamW learning rate.
    pub lr: f32,
    /// Stored samples replayed with each new one.
    pub replay: usize,
    pub seed: u64,
    /// Train with wgpu on any adapter, a software one included (else the CPU backend).
    pub gpu: bool,
    /// Upper bound of the samples a learner will learn (sizes its store so that nothing
    /// is evicted).
    pub max_samples: usize,
    /// Upper bound of the labels it will learn.
    pub max_labels: usize,
    /// Measure the candidate "none" signals of [`NoneProbe`] beside the `full` method's.
    pub none_candidates: bool,
    /// Private methods: `μ` of the feature distillation.
    pub mu: f32,
}

/// One learner and what its methods need to share it.
pub struct SharedLearner {
    learner: Learner,
    /// The training backend ("cpu" or "wgpu").
    backend: &'static str,
    /// Labels learned so far, in order (methods sharing the learner must feed the same
    /// stream; the first to reach a sample trains on it).
    stream: Vec<u16>,
    /// `learn_s[i]`: seconds spent learning the first `i + 1` samples.
    learn_s: Vec<f64>,
    /// `store_bytes[i]`: record bytes stored for the first `i + 1` samples.
    store_bytes: Vec<u64>,
    dims: (usize, usize),
    /// The learner's folder.
    dir: PathBuf,
    /// Private mode: the stream position of the last consolidation, and its report.
    consolidated: Option<(usize, ConsolidationReport)>,
}

impl std::fmt::Debug for SharedLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLearner")
            .field("learned", &self.stream.len())
            .finish()
    }
}

impl SharedLearner {
    /// Creates a fresh learner in `dir` (whatever was there is removed).
    pub fn create(
        assets: &ModelAssets,
        dir: &Path,
        training: Training,
        settings: &LearnerSettings,
    ) -> Result<Self> {
        let cfg = learner_config(assets, training, settings, None);
        let (learner, backend) = create_learner(assets, dir, cfg)?;
        let dims = assets.dims().block();
        Ok(Self {
            learner,
            backend,
            stream: Vec::new(),
            learn_s: Vec::new(),
            store_bytes: Vec::new(),
            dims: (dims.tokens, dims.width),
            dir: dir.to_path_buf(),
            consolidated: None,
        })
    }

    /// Private mode: consolidates at the stream position `at` (the end of a stage) unless
    /// it was done there already (methods sharing the learner end the same stages), and
    /// adds its time to the learning time. Returns the consolidation of position `at`.
    fn end_stage(&mut self, at: usize) -> Result<Option<ConsolidationReport>> {
        if !self.learner.is_private() || at == 0 {
            return Ok(None);
        }
        ensure!(
            at == self.stream.len(),
            "a stage ended at sample {at} of a stream of {}",
            self.stream.len()
        );
        if let Some((pos, report)) = &self.consolidated {
            if *pos == at {
                return Ok(Some(report.clone()));
            }
        }
        let t = Instant::now();
        let report = self.learner.consolidate()?;
        if let Some(s) = self.learn_s.last_mut() {
            *s += t.elapsed().as_secs_f64();
        }
        self.consolidated = Some((at, report.clone()));
        Ok(Some(report))
    }

    /// Private mode: the bytes of what replaces the store (per-label statistics, pooled and
    /// of the CLS tokens, and the generator; the snapshot is a copy of the block, as the
    /// tuned block itself).
    fn private_bytes(&self) -> u64 {
        ["stats.bin", "cls_stats.bin", "generator.bin"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Learns the sample at position `at` of the stream unless it was learned already.
    fn learn(&mut self, at: usize, tokens: &[f32], label: u16, name: &str) -> Result<()> {
        if at < self.stream.len() {
            ensure!(
                self.stream[at] == label,
                "methods sharing a learner were fed different streams"
            );
            return Ok(());
        }
        ensure!(
            at == self.stream.len(),
            "a sample of the stream was skipped"
        );
        let t = Instant::now();
        let report = self.learner.learn_tokens(tokens, name)?;
        let total_s = self.learn_s.last().copied().unwrap_or(0.0);
        self.learn_s.push(total_s + t.elapsed().as_secs_f64());
        let total_b = self.store_bytes.last().copied().unwrap_or(0);
        self.store_bytes.push(total_b + report.record_bytes as u64);
        self.stream.push(label);
        let stored = self.learner.store().len();
        ensure!(
            self.learner.is_private() || stored == self.stream.len(),
            "the learner's store evicted samples ({stored} kept of {})",
            self.stream.len()
        );
        Ok(())
    }
}

/// The configuration of a simulation learner: `training` with `settings`, a store that
/// never evicts, nothing synced to disk, and SPEC §8's budget when `diet` is given.
pub(crate) fn learner_config(
    assets: &ModelAssets,
    training: Training,
    settings: &LearnerSettings,
    diet: Option<DietConfig>,
) -> LearnerConfig {
    let dims = assets.dims().block();
    let train = TrainConfig {
        lr: settings.lr,
        beta_other: training.beta_other,
        ..TrainConfig::default()
    };
    // Room for every record and every state blob written on the way (the ring
    // keeps dead state copies until it wraps), so the store never evicts.
    let record = encoded_len(dims.tokens, dims.width, &training.codec) as u64 + 64;
    // the state blob: OCW (≤ 16 bytes a label) and typicality (14) per label
    let state = 64 + 32 * settings.max_labels as u64;
    let capacity = (settings.max_samples as u64 + 1) * (record + state) * 5 / 4 + (4 << 20);
    LearnerConfig {
        store_capacity: capacity,
        codec: training.codec,
        train,
        replay: settings.replay,
        checkpoint_every: 0,
        seed: settings.seed,
        backend: if settings.gpu {
            BackendChoice::Gpu
        } else {
            BackendChoice::Cpu
        },
        // a simulation's learners are rebuilt from scratch on every run
        durable: false,
        diet,
        private: training
            .private
            .map(|parts| private_config(parts, settings)),
    }
}

/// SPEC §7's settings of a simulation's private learner with `parts`: it consolidates at
/// the end of each stage only (not every N samples), and takes as many synthetic samples
/// a step as the normal learner replays stored ones.
fn private_config(parts: PrivateParts, settings: &LearnerSettings) -> PrivateConfig {
    let base = PrivateConfig::default();
    PrivateConfig {
        consolidate_every: 0,
        dream: DreamConfig {
            w_stats: if parts.stats { base.dream.w_stats } else { 0.0 },
            seed: settings.seed ^ 0x4452_4541_4d00,
            ..base.dream
        },
        mu: if parts.distill { settings.mu } else { 0.0 },
        synthetic: if parts.replay { settings.replay } else { 0 },
        local_ce: parts.local_ce,
        replay: if parts.generator {
            PrivateReplay::Generator
        } else {
            PrivateReplay::Restyle
        },
    }
}

/// Creates a fresh learner of `cfg` in `dir` (whatever was there is removed) with its
/// training backend built; returns it and the backend's name ("cpu" or "wgpu").
pub(crate) fn create_learner(
    assets: &ModelAssets,
    dir: &Path,
    cfg: LearnerConfig,
) -> Result<(Learner, &'static str)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the old learner {}", dir.display()))?;
    }
    let predictor = Predictor::from_assets(assets)
        .with_context(|| format!("loading {}", assets.dir.display()))?;
    let (codec, beta) = (cfg.codec, cfg.train.beta_other);
    let mut learner = Learner::with_predictor(predictor, assets, dir, cfg)
        .with_context(|| format!("creating the learner in {}", dir.display()))?;
    let chosen = learner
        .training()
        .with_context(|| format!("building the training backend of {}", dir.display()))?;
    log::info!(
        "learner {} trains on {chosen} (codec k{} b{}, β {beta})",
        dir.display(),
        codec.k,
        codec.bits,
    );
    Ok((learner, chosen.backend))
}

/// One of the learner's methods (see the module documentation).
pub struct LearnerMethod {
    name: String,
    mixing: Mixing,
    shared: Rc<RefCell<SharedLearner>>,
    /// Global label → label name (the prompt's class name).
    names: Arc<Vec<String>>,
    sets: HashMap<Vec<u16>, LabelSet>,
    observed: usize,
    /// Candidate "none" signals measured beside the learner's (the `full` method only).
    probe: Option<NoneProbe>,
    /// Private mode: the consolidation at the end of the last stage.
    consolidation: Option<ConsolidationReport>,
}

impl std::fmt::Debug for LearnerMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnerMethod")
            .field("name", &self.name)
            .field("mixing", &self.mixing)
            .finish()
    }
}

impl LearnerMethod {
    pub fn new(
        name: &str,
        mixing: Mixing,
        shared: Rc<RefCell<SharedLearner>>,
        names: Arc<Vec<String>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            mixing,
            shared,
            names,
            sets: HashMap::new(),
            observed: 0,
            probe: Some(NoneProbe::default()),
            consolidation: None,
        }
    }

    /// The training backend of the learner ("cpu" or "wgpu").
    pub fn backend_name(&self) -> &'static str {
        self.shared.borrow().backend
    }

    /// The learner's prediction of one image over `candidates` with this method's mixing.
    fn prediction(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<Prediction> {
        let Some(tokens) = x.tokens else {
            bail!("the learner needs the sample's tokens");
        };
        let mut shared = self.shared.borrow_mut();
        if !self.sets.contains_key(candidates) {
            let names = candidates
                .iter()
                .map(|&l| self.name_of(l).map(str::to_owned))
                .collect::<Result<Vec<_>>>()?;
            let set = shared.learner.label_set(&names)?;
            self.sets.insert(candidates.to_vec(), set);
        }
        let set = &self.sets[candidates];
        let (n, d) = shared.dims;
        ensure!(tokens.len() == n * d, "tokens are not [{n}, {d}]");
        let mut p = shared.learner.predict_tokens(tokens, set, self.mixing)?;
        Ok(p.remove(0))
    }

    fn name_of(&self, label: u16) -> Result<&str> {
        self.names
            .get(usize::from(label))
            .map(String::as_str)
            .with_context(|| format!("no name for label {label}"))
    }
}

impl Method for LearnerMethod {
    fn name(&self) -> &str {
        &self.name
    }

    fn observe(&mut self, x: &Features<'_>, label: u16) -> Result<()> {
        let Some(tokens) = x.tokens else {
            bail!("the learner needs the sample's tokens");
        };
        let name = self.name_of(label)?.to_owned();
        let mut shared = self.shared.borrow_mut();
        if let Some(probe) = &mut self.probe {
            // only while this method is the one that trains (before the step)
            if shared.stream.len() == self.observed {
                // the query's statistic on this sample, asked over the labels learned
                // so far and this one
                let mut labels = probe.learned.clone();
                if let Err(i) = labels.binary_search(&label) {
                    labels.insert(i, label);
                }
                let names = labels
                    .iter()
                    .map(|&l| self.names[usize::from(l)].clone())
                    .collect::<Vec<_>>();
                let set = shared.learner.label_set(&names)?;
                let p = shared.learner.predict_tokens(tokens, &set, self.mixing)?;
                let b = p[0].best();
                let e = x.embedding.len();
                probe.observe_pick(labels[b], x.embedding, &set.text[b * e..(b + 1) * e]);
                let z_t = shared.learner.tuned_embeddings(tokens)?;
                let set = shared.learner.label_set(&[&name])?;
                probe.observe(label, x.embedding, &z_t, &set.text);
            }
        }
        shared.learn(self.observed, tokens, label, &name)?;
        drop(shared);
        self.observed += 1;
        Ok(())
    }

    fn predict(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<usize> {
        Ok(self.prediction(x, candidates)?.best())
    }

    /// `P_t(other|x)` (the tuned model's "other" over the candidates and "other"), the
    /// mixture's maximum probability's complement, and the calibrated none score of
    /// `anytime_runtime::typicality` at the CLI's `--none-rate` 0.05, 0.01 and 0.10.
    fn predict_open(&mut self, x: &Features<'_>, candidates: &[u16]) -> Result<Option<OpenPick>> {
        let p = self.prediction(x, candidates)?;
        let best = p.best();
        let max_p = f64::from(p.probs[best]);
        let mut extra = Vec::new();
        if let (Some(probe), Some(tokens)) = (&mut self.probe, x.tokens) {
            let z_t = self.shared.borrow_mut().learner.tuned_embeddings(tokens)?;
            let text = &self.sets[candidates].text;
            extra = probe.signals(candidates, text, x.embedding, &z_t, best, &p.probs);
        }
        Ok(Some(OpenPick {
            pick: best,
            signals: vec![
                NoneSignal {
                    name: "p_other",
                    value: f64::from(p.other.unwrap_or(0.0)),
                    threshold: 0.5,
                },
                NoneSignal {
                    name: "1-max_p",
                    value: 1.0 - max_p,
                    threshold: 0.5,
                },
            ]
            .into_iter()
            .chain(NONE_RATES.iter().map(|&(name, rate)| NoneSignal {
                name,
                // a label without a calibration yet is never refused
                value: p.none_score.map_or(-1e9, f64::from),
                threshold: f64::from(threshold_for_rate(rate).unwrap_or(f32::INFINITY)),
            }))
            .chain(extra)
            .collect(),
        }))
    }

    /// Bytes of the records in the learner's store (payloads, without the ring's
    /// record headers) for the samples this method observed; in private mode the bytes
    /// of the statistics and the generator now.
    fn stored_bytes(&self) -> u64 {
        let s = self.shared.borrow();
        if s.learner.is_private() {
            return s.private_bytes();
        }
        self.observed.checked_sub(1).map_or(0, |i| s.store_bytes[i])
    }

    /// Private mode: consolidates (once per learner and stage).
    fn end_stage(&mut self) -> Result<Option<StageSteps>> {
        self.consolidation = self.shared.borrow_mut().end_stage(self.observed)?;
        Ok(None)
    }

    fn consolidation(&self) -> Option<Consolidation> {
        self.consolidation.as_ref().map(Consolidation::from)
    }

    fn synthetic_tokens(
        &mut self,
        label: u16,
        count: usize,
        seed: u64,
    ) -> Result<Option<Vec<f32>>> {
        let name = self.name_of(label)?.to_owned();
        let mut s = self.shared.borrow_mut();
        if !s.learner.is_private() {
            return Ok(None);
        }
        Ok(s.learner.synthetic_tokens(&name, count, seed)?)
    }

    /// One step per observed sample (SPEC §4).
    fn train_steps(&self) -> u64 {
        self.observed as u64
    }

    fn needs_tokens(&self) -> bool {
        true
    }

    /// The shared learner's time on the samples this method observed, so every
    /// method of one learner reports the same time per update.
    fn update_seconds(&self) -> Option<f64> {
        let s = self.shared.borrow();
        Some(self.observed.checked_sub(1).map_or(0.0, |i| s.learn_s[i]))
    }
}

/// Builds the learner methods of `specs`, one learner per distinct [`Training`], each in
/// `<root>/<name of its first method>`.
pub fn build(
    specs: &[LearnerSpec],
    assets: &ModelAssets,
    root: &Path,
    settings: &LearnerSettings,
    names: Arc<Vec<String>>,
) -> Result<Vec<LearnerMethod>> {
    let mut learners: Vec<(Training, Rc<RefCell<SharedLearner>>, PathBuf)> = Vec::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let shared = match learners.iter().find(|(t, _, _)| *t == spec.training) {
            Some((_, s, _)) => s.clone(),
            None => {
                let dir = root.join(&spec.name);
                let s = Rc::new(RefCell::new(SharedLearner::create(
                    assets,
                    &dir,
                    spec.training,
                    settings,
                )?));
                learners.push((spec.training, s.clone(), dir));
                s
            }
        };
        let mut method = LearnerMethod::new(&spec.name, spec.mixing, shared, names.clone());
        if !(settings.none_candidates && spec.name == "full") {
            method.probe = None;
        }
        out.push(method);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_parse_into_trainings_and_mixings() {
        let c = CodecParams::DEFAULT;
        let full = parse_method("full", c, 50).unwrap().unwrap();
        assert_eq!(full.mixing, Mixing::Ocw);
        assert_eq!(full.training.codec, c);
        // f32 against f32: 0.1 as an f64 differs from 0.1f32 by 1.5e-9.
        assert!(anytime_testkit::close(
            full.training.beta_other,
            0.1f32,
            1e-9,
            0.0
        ));
        let tuned = parse_method("tuned", c, 50).unwrap().unwrap();
        assert_eq!(
            tuned.training, full.training,
            "tuned shares the full learner"
        );
        assert_eq!(tuned.mixing, Mixing::TunedOnly);
        assert_eq!(
            parse_method("no-ocw", c, 50).unwrap().unwrap().mixing,
            Mixing::Fixed(0.5)
        );
        let no_other = parse_method("no-other", c, 50).unwrap().unwrap();
        assert_eq!(no_other.training.beta_other, 0.0);
        let raw = parse_method("raw", c, 50).unwrap().unwrap();
        assert_eq!((raw.training.codec.k, raw.training.codec.bits), (50, 32));
        let k2 = parse_method("k2b4", c, 50).unwrap().unwrap();
        assert_eq!((k2.training.codec.k, k2.training.codec.bits), (2, 4));
        assert!(k2.training.codec.weighted);
        let plain = parse_method("k3b8-plain", c, 50).unwrap().unwrap();
        assert_eq!(
            plain.training.codec,
            CodecParams {
                k: 3,
                bits: 8,
                weighted: false
            }
        );
        let plain = parse_method("plain-pca", c, 50).unwrap().unwrap();
        assert_eq!(
            plain.training.codec,
            CodecParams {
                weighted: false,
                ..c
            }
        );
        assert_eq!(
            parse_method("alpha-hard", c, 50).unwrap().unwrap().mixing,
            Mixing::OcwHard
        );
        // the private methods: one learner for private and private-tuned, each
        // ablation its own, differing from the private learner's settings in one part
        let private = parse_method("private", c, 50).unwrap().unwrap();
        assert_eq!(private.training.private, Some(PrivateParts::ALL));
        let tuned = parse_method("private-tuned", c, 50).unwrap().unwrap();
        assert_eq!(
            (tuned.training, tuned.mixing),
            (private.training, Mixing::TunedOnly)
        );
        let settings = LearnerSettings {
            lr: 1e-3,
            replay: 7,
            seed: 3,
            gpu: false,
            max_samples: 10,
            max_labels: 2,
            none_candidates: false,
            mu: 0.1,
        };
        let cfg = |m: &str| {
            let spec = parse_method(m, c, 50).unwrap().unwrap();
            assert_eq!(spec.mixing, Mixing::Ocw, "{m}");
            private_config(spec.training.private.unwrap(), &settings)
        };
        let all = cfg("private");
        assert_eq!(all.consolidate_every, 0, "at stage ends only");
        assert_eq!(
            (
                all.synthetic,
                all.mu,
                all.dream.w_stats,
                all.local_ce,
                all.replay
            ),
            (7, 0.1, 50.0, true, PrivateReplay::Restyle)
        );
        let ablated = [
            (
                "private-no-replay",
                PrivateConfig {
                    synthetic: 0,
                    ..all.clone()
                },
            ),
            (
                "private-no-distill",
                PrivateConfig {
                    mu: 0.0,
                    ..all.clone()
                },
            ),
            (
                "private-no-local",
                PrivateConfig {
                    local_ce: false,
                    ..all.clone()
                },
            ),
            (
                "private-generator",
                PrivateConfig {
                    replay: PrivateReplay::Generator,
                    ..all.clone()
                },
            ),
            (
                "private-no-stats",
                PrivateConfig {
                    dream: DreamConfig {
                        w_stats: 0.0,
                        ..all.dream.clone()
                    },
                    replay: PrivateReplay::Generator,
                    ..all.clone()
                },
            ),
        ];
        for (m, expected) in ablated {
            assert_eq!(cfg(m), expected, "{m}");
        }
        assert!(parse_method("k99b8", c, 50).is_err());
        assert!(parse_method("k2b5", c, 50).is_err());
        assert!(parse_method("ncm", c, 50).unwrap().is_none());
        assert!(parse_method("kx", c, 50).unwrap().is_none());
    }
}
