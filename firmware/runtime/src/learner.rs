//! The anytime learner (SPEC §2–§4): one update per new labelled sample, prediction over
//! any label set at any time with online class-wise weighting (OCW).
//!
//! `learn(x, y)`: encode → OCW update of both models on the new sample (before the step)
//! → compress the tokens and append them to the store → one training step on the new
//! sample and up to 31 class-balanced stored samples (decoded) → persist the OCW state
//! (every call) and the tuned weights (every `checkpoint_every` calls and on
//! [`Learner::checkpoint`]).
//!
//! A learner lives in a folder:
//! - `learner.json`: the model it belongs to and its codec (checked on open);
//! - `tokens.store`: the ring buffer of compressed tokens, the label table and the state
//!   blob (OCW estimates, counters; see [`LearnerState`]);
//! - `tuned.safetensors`: the tuned block, `b` and the optimiser state, replaced
//!   atomically (write, fsync, rename).
//!
//! The training backend ([`LearnerConfig::backend`]) is built on the first call that trains
//! or asks for it ([`Learner::training`]): a learner that only predicts never looks for a
//! GPU adapter.
//!
//! After a crash the store holds every acknowledged sample and the OCW state of the last
//! acknowledged call; the tuned weights are those of the last checkpoint (at most
//! `checkpoint_every − 1` training steps behind). Both are always readable.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anytime_core::codec::{encoded_len, CodecParams};
use anytime_core::mixing;
use anytime_core::ocw::OcwState;
use serde::{Deserialize, Serialize};

use crate::assets::{ModelAssets, LAST_BLOCK};
use crate::block::{BlockDims, FrozenHead, LastBlock, WeightsError};
use crate::encoder::{check_label, DynamicImage, EncoderError, LabelError};
use crate::predict::{dot, LabelSet, PredictError, Prediction, Predictor, LOGIT_SCALE};
use crate::store::{
    decode_tokens, encode_tokens, token_weights, Sample, Store, StoreConfig, StoreError,
};
use crate::train::{
    choose_backend, load_tuned, save_tuned, BackendChoice, Batch, TrainBackend, TrainConfig,
    TrainError, Training, TunedState,
};
use crate::typicality::{self, TypicalityMap};

/// Labels the OCW state can hold.
pub const OCW_CAPACITY: usize = 4096;
type Ocw = OcwState<OCW_CAPACITY>;

const STORE_FILE: &str = "tokens.store";
const TUNED_FILE: &str = "tuned.safetensors";
const META_FILE: &str = "learner.json";
/// Version 2 adds the typicality table (version 1 is still read).
const STATE_VERSION: u8 = 2;
/// Largest state blob: header, OCW length and state, typicality table.
const STATE_MAX_LEN: usize = 21 + Ocw::MAX_ENCODED_LEN + 2 + typicality::ENTRY_LEN * OCW_CAPACITY;

/// Errors of the learner.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Predict(#[from] PredictError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("learner folder {dir} belongs to model `{found}` (tokens {found_tokens}×{found_width}), not `{expected}`")]
    WrongModel {
        dir: PathBuf,
        expected: String,
        found: String,
        found_tokens: usize,
        found_width: usize,
    },
    #[error("learner state in {path} is unreadable: {message}")]
    State { path: PathBuf, message: String },
    #[error("the OCW state is full ({OCW_CAPACITY} labels)")]
    TooManyLabels,
    #[error("token value at index {index} is not finite")]
    NonFinite { index: usize },
}

/// How the per-label weight α of SPEC §2 is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Mixing {
    /// OCW, `α = c_t / (c_t + c_o)` (SPEC §2).
    #[default]
    Ocw,
    /// OCW with the "other" variant `α'` (SPEC §2).
    OcwOther,
    /// A hard per-label choice from the OCW estimates: `α = 1` where the tuned model's
    /// estimate beats the original's (`c_t > c_o`), else 0.
    OcwHard,
    /// The tuned model alone (`α = 1` for every label).
    TunedOnly,
    /// The original model alone (`α = 0`): zero-shot CLIP.
    OriginalOnly,
    /// A fixed α for labels the tuned model was trained on, 0 for the others (the
    /// "no OCW" ablation uses 0.5).
    Fixed(f32),
}

/// Everything a learner is configured with.
#[derive(Debug, Clone)]
pub struct LearnerConfig {
    /// Bytes of compressed tokens kept (the store's capacity).
    pub store_capacity: u64,
    /// Token compression (SPEC §5).
    pub codec: CodecParams,
    /// Training hyper-parameters (SPEC §4).
    pub train: TrainConfig,
    /// Stored samples replayed with each new one (31 for a batch of 32).
    pub replay: usize,
    /// Save the tuned weights every this many learned samples (0: only when asked).
    pub checkpoint_every: u32,
    /// Seed of the replay sampling.
    pub seed: u64,
    /// Which backend trains (default: wgpu on a hardware adapter, else the CPU path).
    pub backend: BackendChoice,
    /// Sync the store to disk before each `learn` returns (see [`Store::set_durable`]);
    /// `false` only where nothing must survive a crash (simulations).
    pub durable: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            store_capacity: 64 << 20,
            codec: CodecParams::DEFAULT,
            train: TrainConfig::default(),
            replay: 31,
            checkpoint_every: 20,
            seed: 0,
            backend: BackendChoice::Auto,
            durable: true,
        }
    }
}

/// What one `learn` call did.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnReport {
    pub label: String,
    pub label_id: u16,
    /// Store sequence number of the new sample.
    pub seq: u32,
    /// Whether each model was right on the new sample before the step (OCW inputs).
    pub tuned_correct: bool,
    pub original_correct: bool,
    /// Loss of the training batch before the update.
    pub loss: f32,
    /// Samples in the training batch (1 new + replayed).
    pub batch: usize,
    /// Labels in the training label set.
    pub labels: usize,
    /// Bytes of the compressed record.
    pub record_bytes: usize,
    /// Samples learned so far (this one included).
    pub learned: u64,
}

/// Persisted in the store's state blob.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerState {
    /// Samples learned.
    pub learned: u64,
    /// Optimiser step of the newest tuned checkpoint.
    pub checkpoint_step: u64,
    ocw: Box<Ocw>,
    /// Per label, the cosines of its new samples (the "none" calibration).
    typical: TypicalityMap,
}

impl LearnerState {
    fn new() -> Self {
        Self {
            learned: 0,
            checkpoint_step: 0,
            ocw: Box::new(Ocw::new()),
            typical: TypicalityMap::default(),
        }
    }

    /// Version 2: version byte, learned (u64), checkpoint step (u64), the OCW state's
    /// length (u32) and bytes, then the typicality table; all little-endian. At most
    /// `max_len` bytes: typicality entries that do not fit are left out.
    fn encode(&self, max_len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 21 + Ocw::MAX_ENCODED_LEN];
        buf[0] = STATE_VERSION;
        buf[1..9].copy_from_slice(&self.learned.to_le_bytes());
        buf[9..17].copy_from_slice(&self.checkpoint_step.to_le_bytes());
        // MAX_ENCODED_LEN always suffices (see OcwState::to_slice).
        let n = self.ocw.to_slice(&mut buf[21..]).unwrap_or(0);
        buf[17..21].copy_from_slice(&(n as u32).to_le_bytes());
        buf.truncate(21 + n);
        let table = self.typical.encode(max_len.saturating_sub(buf.len()));
        buf.extend_from_slice(&table);
        buf
    }

    /// Reads version 2, or version 1 (learned, checkpoint step, then the OCW state to the
    /// end; no typicality table).
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 17 {
            return Err(format!("state blob of {} bytes is too short", bytes.len()));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let (ocw_bytes, table) = match bytes[0] {
            1 => (&bytes[17..], None),
            2 => {
                let len = bytes
                    .get(17..21)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or("state blob too short for its OCW length")?;
                let end = 21usize
                    .checked_add(len)
                    .filter(|&e| e <= bytes.len())
                    .ok_or_else(|| format!("OCW state of {len} bytes overruns the blob"))?;
                (&bytes[21..end], Some(&bytes[end..]))
            }
            v => {
                return Err(format!(
                    "state version {v} (this build reads 1 and {STATE_VERSION})"
                ))
            }
        };
        let ocw = Ocw::from_bytes(ocw_bytes).map_err(|e| format!("OCW state: {e}"))?;
        let typical = match table {
            Some(t) => TypicalityMap::decode(t)?,
            None => TypicalityMap::default(),
        };
        Ok(Self {
            learned: u64_at(1),
            checkpoint_step: u64_at(9),
            ocw: Box::new(ocw),
            typical,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Meta {
    model: String,
    tokens: usize,
    width: usize,
    embed: usize,
    codec_k: u16,
    codec_bits: u8,
    codec_weighted: bool,
}

/// The anytime learner: a frozen encoder and original block, a tuned block that trains
/// one sample at a time, a store of compressed tokens and the OCW state.
pub struct Learner {
    predictor: Predictor,
    trainer: Trainer,
    store: Store,
    state: LearnerState,
    cfg: LearnerConfig,
    dir: PathBuf,
    dims: BlockDims,
    /// The tuned block for inference, refreshed lazily after training.
    tuned: Option<(LastBlock, f32)>,
    since_checkpoint: u32,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("dir", &self.dir)
            .field("training", &self.trainer.training())
            .field("learned", &self.state.learned)
            .finish()
    }
}

impl Learner {
    /// Opens (or creates) the learner folder `dir` for the model `model` (name or path).
    pub fn open(model: &str, dir: &Path, cfg: LearnerConfig) -> Result<Self, LearnError> {
        let assets = ModelAssets::find(model).map_err(PredictError::from)?;
        let predictor = Predictor::from_assets(&assets)?;
        Self::with_predictor(predictor, &assets, dir, cfg)
    }

    /// As [`Learner::open`], reusing an already loaded predictor of `assets`.
    pub fn with_predictor(
        predictor: Predictor,
        assets: &ModelAssets,
        dir: &Path,
        cfg: LearnerConfig,
    ) -> Result<Self, LearnError> {
        let dims = assets.dims().block();
        fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
        check_meta(dir, &assets.manifest.name, &dims, &cfg.codec)?;

        let record_max = encoded_len(dims.tokens, dims.width, &cfg.codec);
        let max_payload = (record_max.max(STATE_MAX_LEN)) as u32;
        let store_path = dir.join(STORE_FILE);
        let mut store = Store::open_or_create(
            &store_path,
            StoreConfig::new(cfg.store_capacity, max_payload),
        )?;
        store.set_durable(cfg.durable);
        let state = match store.state()? {
            Some(blob) => LearnerState::decode(&blob).map_err(|message| LearnError::State {
                path: store_path.clone(),
                message,
            })?,
            None => LearnerState::new(),
        };

        let tuned_path = dir.join(TUNED_FILE);
        let (tuned, head) = if tuned_path.is_file() {
            load_tuned(&tuned_path, &dims)?
        } else {
            let original = &predictor.original;
            (
                TunedState::fresh(&dims, original.params.clone()),
                original.head.clone(),
            )
        };
        if tuned.optim.step != state.checkpoint_step {
            log::info!(
                "learner {}: tuned checkpoint at step {}, state blob says {} (the steps between were lost; their samples stay in the store)",
                dir.display(),
                tuned.optim.step,
                state.checkpoint_step
            );
        }
        Ok(Self {
            predictor,
            trainer: Trainer::Pending {
                state: Box::new(tuned),
                head,
            },
            store,
            state,
            cfg,
            dir: dir.to_path_buf(),
            dims,
            tuned: None,
            since_checkpoint: 0,
        })
    }

    /// The backend that trains and why it was chosen; builds it (looking for a GPU adapter
    /// unless the CPU is asked for) if no call has trained yet.
    pub fn training(&mut self) -> Result<Training, LearnError> {
        self.backend()?;
        Ok(self
            .trainer
            .training()
            .cloned()
            .expect("the backend was just built"))
    }

    /// The training backend, built on first use from the pending state.
    fn backend(&mut self) -> Result<&mut (dyn TrainBackend + Send), LearnError> {
        if let Trainer::Pending { state, head } = &self.trainer {
            // Cloned, so that a failed build leaves the learner as it was.
            let (backend, training) = choose_backend(
                self.cfg.backend,
                self.dims,
                self.cfg.train.clone(),
                head.clone(),
                TunedState::clone(state),
            )?;
            log::info!("learner {}: training on {training}", self.dir.display());
            self.trainer = Trainer::Built { backend, training };
        }
        match &mut self.trainer {
            Trainer::Built { backend, .. } => Ok(backend.as_mut()),
            Trainer::Pending { .. } => unreachable!("built above"),
        }
    }

    /// The tuned parameters, `b` and optimiser state (read back from the backend once built).
    fn tuned_state(&mut self) -> Result<TunedState, LearnError> {
        Ok(match &mut self.trainer {
            Trainer::Pending { state, .. } => TunedState::clone(state),
            Trainer::Built { backend, .. } => backend.state()?,
        })
    }

    pub fn predictor(&self) -> &Predictor {
        &self.predictor
    }

    pub fn predictor_mut(&mut self) -> &mut Predictor {
        &mut self.predictor
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Samples learned so far.
    pub fn learned(&self) -> u64 {
        self.state.learned
    }

    /// The OCW estimates `(c_tuned, c_original, n)` of a label, if it was ever learned.
    pub fn ocw(&mut self, label: &str) -> Result<Option<(f32, f32, u32)>, LearnError> {
        let Some(id) = self.store.find_label(label)? else {
            return Ok(None);
        };
        Ok(self
            .state
            .ocw
            .get(id)
            .map(|s| (s.c_tuned, s.c_original, s.n)))
    }

    /// Learns one labelled image.
    pub fn learn_image(
        &mut self,
        image: &DynamicImage,
        label: &str,
    ) -> Result<LearnReport, LearnError> {
        self.learn_image_in(image, label, &[] as &[&str])
    }

    /// [`Learner::learn_image`] within a task whose other labels are `context` (see
    /// [`Learner::learn_tokens_in`]).
    pub fn learn_image_in<S: AsRef<str>>(
        &mut self,
        image: &DynamicImage,
        label: &str,
        context: &[S],
    ) -> Result<LearnReport, LearnError> {
        let tokens = self
            .predictor
            .encoder
            .encode_images(std::slice::from_ref(image))?;
        self.learn_tokens_in(&tokens, label, context)
    }

    /// Learns one labelled sample given as trunk tokens `[N, D]`.
    pub fn learn_tokens(&mut self, tokens: &[f32], label: &str) -> Result<LearnReport, LearnError> {
        self.learn_tokens_in(tokens, label, &[] as &[&str])
    }

    /// [`Learner::learn_tokens`] within a task whose other labels are `context`: they join
    /// the training label set (the stored labels and `label`) as candidates the sample is
    /// not, in the step's softmax and in OCW's argmax, as the reference implementation
    /// puts a whole task's labels in its softmax. Labels of `context` are not stored.
    pub fn learn_tokens_in<S: AsRef<str>>(
        &mut self,
        tokens: &[f32],
        label: &str,
        context: &[S],
    ) -> Result<LearnReport, LearnError> {
        let per = self.dims.tokens_len();
        if tokens.len() != per {
            return Err(PredictError::Tokens {
                found: tokens.len(),
                tokens: self.dims.tokens,
                width: self.dims.width,
            }
            .into());
        }
        if let Some(index) = tokens.iter().position(|v| !v.is_finite()) {
            return Err(LearnError::NonFinite { index });
        }
        let label = check_label(0, label)?.to_string();
        for (i, c) in context.iter().enumerate() {
            check_label(i, c.as_ref())?;
        }
        // The backend first: when it cannot be built, the store is left untouched.
        self.backend()?;

        // The training label set: labels in storage, this one, then the context.
        let y_id = self.store.label_id(&label)?;
        let (ids, names) = self.training_labels(Some((y_id, &label)), context)?;
        let y = ids.iter().position(|&i| i == y_id).unwrap_or_default();
        let text = self.predictor.encoder.encode_texts(&names)?;

        // OCW update on the new sample, before the step (SPEC §3), and the "none"
        // calibration: the tuned model's cosine to the sample's own label.
        let z_o = self.predictor.original.forward_embeddings(tokens, 1);
        let original_correct = argmax_rows(&z_o, &text) == y;
        let probe = Batch {
            tokens,
            labels: &[y as u32],
            text: &text,
            n_labels: names.len(),
        };
        let (probe_stats, mut z_t) = self.backend()?.loss_embed(&probe)?;
        let tuned_correct = probe_stats.correct == 1;
        self.state
            .ocw
            .observe(y_id, tuned_correct, original_correct)
            .map_err(|_| LearnError::TooManyLabels)?;
        crate::block::l2_normalise(&mut z_t, self.dims.embed);
        let e = self.dims.embed;
        self.state
            .typical
            .observe(y_id, dot(&z_t, &text[y * e..(y + 1) * e]));

        // Compress and append.
        let w = token_weights(&self.predictor.original, tokens, 1);
        let record = encode_tokens(
            tokens,
            &w,
            self.dims.tokens,
            self.dims.width,
            &self.cfg.codec,
        )
        .map_err(|e| LearnError::State {
            path: self.dir.join(STORE_FILE),
            message: format!("codec: {e}"),
        })?;
        let seq = self.store.append(y_id, &record)?;

        // One step on the new sample and class-balanced stored ones.
        let seed = self.cfg.seed ^ self.state.learned.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let replay = self
            .store
            .sample_balanced(self.cfg.replay, seed, Some(seq))?;
        let mut batch_tokens = Vec::with_capacity((1 + replay.len()) * per);
        batch_tokens.extend_from_slice(tokens);
        let mut labels = vec![y as u32];
        self.push_replayed(&replay, &ids, &mut batch_tokens, &mut labels);
        let stats = self.backend()?.step(&Batch {
            tokens: &batch_tokens,
            labels: &labels,
            text: &text,
            n_labels: names.len(),
        })?;
        self.tuned = None;
        self.state.learned += 1;
        self.since_checkpoint += 1;
        if self.cfg.checkpoint_every > 0 && self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint()?;
        } else {
            self.save_state()?;
        }
        Ok(LearnReport {
            label,
            label_id: y_id,
            seq,
            tuned_correct,
            original_correct,
            loss: stats.loss,
            batch: labels.len(),
            labels: names.len(),
            record_bytes: record.len(),
            learned: self.state.learned,
        })
    }

    /// `steps` extra training steps, each on a class-balanced batch of stored samples alone
    /// (the stored-sample term `L_b` of SPEC §8's budget), over the stored labels and
    /// `context`. Nothing is stored and OCW is not updated (replayed samples never are,
    /// SPEC §3). Returns the batches' mean loss before their updates, or `None` when the
    /// store is empty or `steps` is 0.
    pub fn rehearse<S: AsRef<str>>(
        &mut self,
        steps: u32,
        context: &[S],
    ) -> Result<Option<f32>, LearnError> {
        if steps == 0 || self.store.is_empty() {
            return Ok(None);
        }
        self.backend()?;
        let (ids, names) = self.training_labels(None, context)?;
        let text = self.predictor.encoder.encode_texts(&names)?;
        let per = self.dims.tokens_len();
        let mut loss = 0.0f64;
        for step in 0..steps {
            let seed = self.cfg.seed
                ^ self.state.learned.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (u64::from(step) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            let replay = self
                .store
                .sample_balanced(self.cfg.replay + 1, seed, None)?;
            let mut batch_tokens = Vec::with_capacity(replay.len() * per);
            let mut labels = Vec::with_capacity(replay.len());
            self.push_replayed(&replay, &ids, &mut batch_tokens, &mut labels);
            if labels.is_empty() {
                return Ok(None);
            }
            let stats = self.backend()?.step(&Batch {
                tokens: &batch_tokens,
                labels: &labels,
                text: &text,
                n_labels: names.len(),
            })?;
            loss += f64::from(stats.loss);
            self.tuned = None;
        }
        self.since_checkpoint += 1;
        if self.cfg.checkpoint_every > 0 && self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint()?;
        }
        Ok(Some((loss / f64::from(steps)) as f32))
    }

    /// The training label set: the stored labels with samples, `new` (id and name) if not
    /// among them, then the labels of `context` that are neither. Ids of the stored ones.
    fn training_labels<S: AsRef<str>>(
        &mut self,
        new: Option<(u16, &str)>,
        context: &[S],
    ) -> Result<(Vec<u16>, Vec<String>), LearnError> {
        let mut ids: Vec<u16> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for info in self.store.labels()? {
            if let Some(name) = info.name {
                if info.count > 0 || new.is_some_and(|(id, _)| id == info.id) {
                    ids.push(info.id);
                    names.push(name);
                }
            }
        }
        if let Some((id, name)) = new {
            if !ids.contains(&id) {
                ids.push(id);
                names.push(name.to_string());
            }
        }
        for (i, c) in context.iter().enumerate() {
            let c = check_label(i, c.as_ref())?;
            if !names.iter().any(|n| n == c) {
                names.push(c.to_string());
            }
        }
        Ok((ids, names))
    }

    /// Appends the decodable records of `replay` whose label is in `ids` to a batch.
    fn push_replayed(
        &self,
        replay: &[Sample],
        ids: &[u16],
        batch_tokens: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) {
        for s in replay {
            let Some(li) = ids.iter().position(|&i| i == s.label) else {
                continue; // a record whose label name was lost
            };
            let decoded = decode_tokens(&s.payload).ok().filter(|(t, n, d)| {
                *n == self.dims.tokens && *d == self.dims.width && t.iter().all(|v| v.is_finite())
            });
            match decoded {
                Some((t, _, _)) => {
                    batch_tokens.extend_from_slice(&t);
                    labels.push(li as u32);
                }
                None => log::warn!("store record {} does not decode to tokens; skipped", s.seq),
            }
        }
    }

    /// Saves the tuned weights atomically, then the state blob that names them.
    pub fn checkpoint(&mut self) -> Result<(), LearnError> {
        let tuned = self.tuned_state()?;
        let path = self.dir.join(TUNED_FILE);
        let tmp = self.dir.join(format!("{TUNED_FILE}.tmp"));
        let head = &self.predictor.original.head;
        save_tuned(&tmp, &self.dims, &tuned, head)?;
        sync_file(&tmp)?;
        fs::rename(&tmp, &path).map_err(|source| io_err(&path, source))?;
        sync_dir(&self.dir);
        self.state.checkpoint_step = tuned.optim.step;
        self.save_state()?;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Writes the state blob, as large as the store's records may be.
    fn save_state(&mut self) -> Result<(), LearnError> {
        let max_record = self.store.geometry().max_record;
        let mut max_len = max_record as usize;
        while max_len > 0 && anytime_core::ring::layout::record_size(max_len as u32) > max_record {
            max_len -= 1;
        }
        let blob = self.state.encode(max_len);
        self.store.set_state(&blob)?;
        Ok(())
    }

    /// The "none" calibration of a label (see [`crate::typicality`]), if it was learned.
    pub fn typicality(
        &mut self,
        label: &str,
    ) -> Result<Option<typicality::Typicality>, LearnError> {
        let Some(id) = self.store.find_label(label)? else {
            return Ok(None);
        };
        Ok(self.state.typical.get(id).copied())
    }

    /// Checks labels and embeds their prompts (cached).
    pub fn label_set<S: AsRef<str>>(&mut self, labels: &[S]) -> Result<LabelSet, LearnError> {
        Ok(self.predictor.label_set(labels)?)
    }

    /// Predicts images over any label set (SPEC §2) with the chosen mixing.
    pub fn predict_images(
        &mut self,
        images: &[DynamicImage],
        set: &LabelSet,
        mixing: Mixing,
    ) -> Result<Vec<Prediction>, LearnError> {
        let tokens = self.predictor.encoder.encode_images(images)?;
        self.predict_tokens(&tokens, set, mixing)
    }

    /// Predicts trunk tokens `[B, N, D]` over any label set (SPEC §2).
    pub fn predict_tokens(
        &mut self,
        tokens: &[f32],
        set: &LabelSet,
        mixing: Mixing,
    ) -> Result<Vec<Prediction>, LearnError> {
        let z_o = self.predictor.embed(tokens)?;
        if mixing == Mixing::OriginalOnly {
            return Ok(self.predictor.predict_tokens(tokens, set)?);
        }
        let batch = tokens.len() / self.dims.tokens_len();
        let (z_t, b) = {
            let (tuned, b) = self.tuned_block()?;
            (tuned.forward_embeddings(tokens, batch), *b)
        };
        // Store ids of the query's labels (none for labels never learned: α = 0).
        let mut known: Vec<Option<u16>> = Vec::with_capacity(set.len());
        for l in &set.labels {
            known.push(self.store.find_label(l)?);
        }
        let e = self.dims.embed;
        let k = set.len();
        let mut out = Vec::with_capacity(batch);
        for (zo, zt) in z_o.chunks(e).zip(z_t.chunks(e)) {
            let original = crate::predict::zero_shot_probs(zo, &set.text, LOGIT_SCALE);
            let mut logits: Vec<f32> = set
                .text
                .chunks(e)
                .map(|t| LOGIT_SCALE * dot(zt, t))
                .collect();
            logits.push(b);
            let mut tuned = vec![0f32; k];
            let p_other = mixing::tuned_probabilities(&logits, &mut tuned).unwrap_or(0.0);
            let alphas: Vec<f32> = known
                .iter()
                .map(|id| match (mixing, id) {
                    (Mixing::TunedOnly, _) => 1.0,
                    (_, None) => 0.0,
                    (Mixing::Ocw, Some(id)) => self.state.ocw.alpha(*id),
                    (Mixing::OcwOther, Some(id)) => self.state.ocw.alpha_with_other(*id, p_other),
                    (Mixing::OcwHard, Some(id)) => match self.state.ocw.get(*id) {
                        Some(s) if s.c_tuned > s.c_original => 1.0,
                        _ => 0.0,
                    },
                    (Mixing::Fixed(a), Some(id)) => {
                        if self.state.ocw.get(*id).is_some() {
                            a
                        } else {
                            0.0
                        }
                    }
                    (Mixing::OriginalOnly, _) => 0.0,
                })
                .collect();
            let mut mixed = vec![0f32; k];
            // Lengths agree by construction.
            let _ = mixing::mix(&tuned, &original, &alphas, &mut mixed);
            let name = if mixing == Mixing::TunedOnly {
                "tuned"
            } else {
                "mixed"
            };
            let mut p = Prediction::new(name, mixed, &set.labels, Some(p_other));
            let best = p.best();
            p.none_score = known[best]
                .and_then(|id| self.state.typical.get(id))
                .and_then(|t| t.score(dot(zt, &set.text[best * e..(best + 1) * e])));
            out.push(p);
        }
        Ok(out)
    }

    fn tuned_block(&mut self) -> Result<&(LastBlock, f32), LearnError> {
        if self.tuned.is_none() {
            let (params, other_bias) = match &mut self.trainer {
                Trainer::Pending { state, .. } => (state.params.clone(), state.other_bias),
                Trainer::Built { backend, .. } => {
                    let s = backend.state()?;
                    (s.params, s.other_bias)
                }
            };
            let block = LastBlock {
                dims: self.dims,
                params,
                head: self.predictor.original.head.clone(),
            };
            self.tuned = Some((block, other_bias));
        }
        Ok(self.tuned.as_ref().expect("set above"))
    }
}

/// The training backend of a learner, built when first needed.
enum Trainer {
    /// Not built yet: what it will train from.
    Pending {
        state: Box<TunedState>,
        head: FrozenHead,
    },
    Built {
        backend: Box<dyn TrainBackend + Send>,
        training: Training,
    },
}

impl Trainer {
    /// The chosen backend and why, once built.
    fn training(&self) -> Option<&Training> {
        match self {
            Trainer::Pending { .. } => None,
            Trainer::Built { training, .. } => Some(training),
        }
    }
}

/// Index of the row of `text` (`[k, E]`) with the largest dot product with `z` (`[E]`).
fn argmax_rows(z: &[f32], text: &[f32]) -> usize {
    let scores: Vec<f32> = text.chunks(z.len()).map(|t| dot(z, t)).collect();
    crate::predict::argmax(&scores)
}

fn check_meta(
    dir: &Path,
    model: &str,
    dims: &BlockDims,
    codec: &CodecParams,
) -> Result<(), LearnError> {
    let path = dir.join(META_FILE);
    let meta = Meta {
        model: model.to_string(),
        tokens: dims.tokens,
        width: dims.width,
        embed: dims.embed,
        codec_k: codec.k,
        codec_bits: codec.bits,
        codec_weighted: codec.weighted,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let found: Meta = serde_json::from_slice(&bytes).map_err(|e| LearnError::State {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if found.model != meta.model || found.tokens != meta.tokens || found.width != meta.width
            {
                return Err(LearnError::WrongModel {
                    dir: dir.to_path_buf(),
                    expected: meta.model,
                    found: found.model,
                    found_tokens: found.tokens,
                    found_width: found.width,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_vec_pretty(&meta).expect("plain struct");
            let mut f = fs::File::create(&path).map_err(|source| io_err(&path, source))?;
            f.write_all(&text)
                .and_then(|()| f.sync_all())
                .map_err(|source| io_err(&path, source))
        }
        Err(source) => Err(io_err(&path, source)),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> LearnError {
    LearnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_file(path: &Path) -> Result<(), LearnError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_err(path, source))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The original block's file of a model folder (for tools that only need the block).
pub fn original_block_path(assets: &ModelAssets) -> PathBuf {
    assets.file(LAST_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_blob_round_trips_and_rejects_garbage() {
        let mut s = LearnerState::new();
        s.learned = 42;
        s.checkpoint_step = 40;
        s.ocw.observe(3, true, false).unwrap();
        s.typical.observe(3, 0.25);
        let bytes = s.encode(usize::MAX);
        assert_eq!(LearnerState::decode(&bytes).unwrap(), s);
        assert!(LearnerState::decode(&bytes[..5]).is_err());
        assert!(LearnerState::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(LearnerState::decode(&bad).unwrap_err().contains("version"));
        // a blob with no room for the table keeps everything else
        let small = s.encode(bytes.len() - 1);
        let back = LearnerState::decode(&small).unwrap();
        assert_eq!((back.learned, back.checkpoint_step), (42, 40));
        assert!(back.typical.0.is_empty());
        // version 1 (no OCW length, no table) is still read
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&bytes[1..17]);
        let ocw_len = u32::from_le_bytes(bytes[17..21].try_into().unwrap()) as usize;
        v1.extend_from_slice(&bytes[21..21 + ocw_len]);
        let old = LearnerState::decode(&v1).unwrap();
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
    }

    /// Golden blobs of versions 1 and 2 (`tests/data/learner_state_v{1,2}.bin`, written by
    /// this test under `ANYTIME_EDGE_WRITE_GOLDEN=1` only where absent) decode to the state
    /// they were written from, and version 2 is what this build writes: a format change
    /// that breaks reading a learner saved by an earlier build fails here.
    #[test]
    fn learner_state_golden_files_of_versions_1_and_2_read() {
        let mut s = LearnerState::new();
        (s.learned, s.checkpoint_step) = (1234, 1200);
        for (label, t, o) in [(3, true, false), (3, false, false), (7, true, true)] {
            s.ocw.observe(label, t, o).unwrap();
        }
        for (label, cos) in [(3, 0.25), (3, 0.5), (7, -0.125)] {
            s.typical.observe(label, cos);
        }
        let v2 = s.encode(usize::MAX);
        let ocw_len = u32::from_le_bytes(v2[17..21].try_into().unwrap()) as usize;
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&v2[1..17]);
        v1.extend_from_slice(&v2[21..21 + ocw_len]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let golden = |name: &str, fresh: &[u8]| {
            let path = dir.join(name);
            if std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1") && !path.exists()
            {
                std::fs::write(&path, fresh).unwrap();
            }
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (g1, g2) = (
            golden("learner_state_v1.bin", &v1),
            golden("learner_state_v2.bin", &v2),
        );
        assert_eq!((g1[0], g2[0]), (1, 2), "version bytes");
        assert_eq!(STATE_VERSION, 2, "a new version needs a new golden file");
        assert_eq!(LearnerState::decode(&g2).unwrap(), s);
        assert_eq!(g2, v2, "this build writes other bytes than version 2's");
        let old = LearnerState::decode(&g1).unwrap();
        assert_eq!((old.learned, old.checkpoint_step), (1234, 1200));
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
        let t3 = s.typical.get(3).unwrap();
        assert_eq!(t3.n, 2);
    }
}
