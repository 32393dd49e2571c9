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
//! - `learner.json`: the model it belongs to, its codec and its id (checked on open);
//! - `tokens.store`: the ring buffer of compressed tokens, the label table and the state
//!   blob (OCW estimates, counters, the learner's id; see [`LearnerState`]);
//! - `tuned.safetensors`: the tuned block, `b` and the optimiser state, with the SHA-256 of
//!   its tensors and the learner's id, replaced atomically (write, fsync, rename).
//!
//! One process writes a learner folder at a time ([`Learner::open`] holds the store's
//! writer lock until the learner is dropped; a second writer is refused, told who holds
//! it); [`Learner::open_read_only`] reads a consistent copy beside a writer. The three files
//! must carry the same id: another learner's store or weights are refused. NaN or an
//! infinity is never saved: a learning rate that is not a finite positive number is
//! refused, and a training step that makes the loss or the weights non-finite rolls the
//! tuned weights back to the last checkpoint.
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
    decode_tokens, encode_tokens, token_weights, ReadLock, Sample, Store, StoreConfig, StoreError,
};
use crate::train::{
    choose_backend, first_non_finite, load_tuned, save_tuned, BackendChoice, Batch, TrainBackend,
    TrainConfig, TrainError, Training, TunedState,
};
use crate::typicality::{self, TypicalityMap};

/// Labels the OCW state can hold.
pub const OCW_CAPACITY: usize = 4096;
type Ocw = OcwState<OCW_CAPACITY>;

const STORE_FILE: &str = "tokens.store";
const TUNED_FILE: &str = "tuned.safetensors";
const META_FILE: &str = "learner.json";
/// Version 3 adds the learner's id, version 2 the typicality table (1 and 2 are still read).
const STATE_VERSION: u8 = 3;
/// Bytes before the OCW state in a version 3 blob.
const STATE_HEADER_LEN: usize = 29;
/// Largest state blob: header, OCW length and state, typicality table.
const STATE_MAX_LEN: usize =
    STATE_HEADER_LEN + Ocw::MAX_ENCODED_LEN + 2 + typicality::ENTRY_LEN * OCW_CAPACITY;
/// Largest learning rate accepted (AdamW steps of this size already destroy a model).
pub const MAX_LR: f32 = 1.0;
/// The answer when no label fits; no label may be named so.
pub const NONE_ANSWER: &str = "none";

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
    #[error("the sample's tokens are so large that the frozen block's output is not finite")]
    Overflow,
    #[error("learner configuration: {0}")]
    Config(String),
    #[error("{path} belongs to learner {found}, not to {expected} (the id in learner.json); the files of two learners were mixed")]
    Mismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("training diverged in {dir} ({what}); the tuned weights were rolled back to the checkpoint of step {step}{note}")]
    Diverged {
        dir: PathBuf,
        what: String,
        step: u64,
        /// What became of the sample, when it matters.
        note: &'static str,
    },
    #[error("learner {dir} was opened to read; it cannot learn or save")]
    ReadOnly { dir: PathBuf },
    #[error("{dir} is not a learner folder (no learner.json)")]
    NotALearner { dir: PathBuf },
    #[error("label {0:?} is reserved: it is the answer when no label fits")]
    ReservedLabel(String),
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
    /// The id of the learner the blob belongs to (`None` in blobs of versions 1 and 2).
    learner: Option<u64>,
}

impl LearnerState {
    fn new() -> Self {
        Self {
            learned: 0,
            checkpoint_step: 0,
            ocw: Box::new(Ocw::new()),
            typical: TypicalityMap::default(),
            learner: None,
        }
    }

    /// Version 3: version byte, learned (u64), checkpoint step (u64), learner id (u64), the
    /// OCW state's length (u32) and bytes, then the typicality table; all little-endian. At
    /// most `max_len` bytes: typicality entries that do not fit are left out.
    fn encode(&self, max_len: usize) -> Vec<u8> {
        let h = STATE_HEADER_LEN;
        let mut buf = vec![0u8; h + Ocw::MAX_ENCODED_LEN];
        buf[0] = STATE_VERSION;
        buf[1..9].copy_from_slice(&self.learned.to_le_bytes());
        buf[9..17].copy_from_slice(&self.checkpoint_step.to_le_bytes());
        buf[17..25].copy_from_slice(&self.learner.unwrap_or(0).to_le_bytes());
        // MAX_ENCODED_LEN always suffices (see OcwState::to_slice).
        let n = self.ocw.to_slice(&mut buf[h..]).unwrap_or(0);
        buf[25..29].copy_from_slice(&(n as u32).to_le_bytes());
        buf.truncate(h + n);
        let table = self.typical.encode(max_len.saturating_sub(buf.len()));
        buf.extend_from_slice(&table);
        buf
    }

    /// Reads version 3, 2 (no learner id) or 1 (learned, checkpoint step, then the OCW
    /// state to the end; no typicality table).
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 17 {
            return Err(format!("state blob of {} bytes is too short", bytes.len()));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut learner = None;
        let (ocw_bytes, table) = match bytes[0] {
            1 => (&bytes[17..], None),
            v @ (2 | 3) => {
                let at = if v == 3 {
                    if bytes.len() < 25 {
                        return Err("state blob too short for its learner id".into());
                    }
                    learner = Some(u64_at(17)).filter(|&id| id != 0);
                    25
                } else {
                    17
                };
                let len = bytes
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or("state blob too short for its OCW length")?;
                let end = (at + 4)
                    .checked_add(len)
                    .filter(|&e| e <= bytes.len())
                    .ok_or_else(|| format!("OCW state of {len} bytes overruns the blob"))?;
                (&bytes[at + 4..end], Some(&bytes[end..]))
            }
            v => {
                return Err(format!(
                    "state version {v} (this build reads 1 to {STATE_VERSION})"
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
            learner,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Meta {
    /// The learner's id (hex u64); absent in folders made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
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
    /// The learner's id (learner.json), carried by the state blob and the tuned weights.
    id: Option<u64>,
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
    /// Opens (or creates) the learner folder `dir` for the model `model` (name or path), to
    /// learn: holds the folder's writer lock until dropped.
    pub fn open(model: &str, dir: &Path, cfg: LearnerConfig) -> Result<Self, LearnError> {
        let assets = ModelAssets::find(model).map_err(PredictError::from)?;
        let predictor = Predictor::from_assets(&assets)?;
        Self::with_predictor(predictor, &assets, dir, cfg)
    }

    /// Opens the existing learner folder `dir` to predict: reads a consistent copy of its
    /// store and weights (beside a writer, if one runs), writes nothing, never trains.
    pub fn open_read_only(model: &str, dir: &Path, cfg: LearnerConfig) -> Result<Self, LearnError> {
        let assets = ModelAssets::find(model).map_err(PredictError::from)?;
        let predictor = Predictor::from_assets(&assets)?;
        Self::build(predictor, &assets, dir, cfg, false)
    }

    /// As [`Learner::open`], reusing an already loaded predictor of `assets`.
    pub fn with_predictor(
        predictor: Predictor,
        assets: &ModelAssets,
        dir: &Path,
        cfg: LearnerConfig,
    ) -> Result<Self, LearnError> {
        Self::build(predictor, assets, dir, cfg, true)
    }

    fn build(
        predictor: Predictor,
        assets: &ModelAssets,
        dir: &Path,
        cfg: LearnerConfig,
        write: bool,
    ) -> Result<Self, LearnError> {
        let dims = assets.dims().block();
        check_train(&cfg.train)?;
        let record_max = encoded_len(dims.tokens, dims.width, &cfg.codec);
        let max_payload = (record_max.max(STATE_MAX_LEN)) as u32;
        let store_path = dir.join(STORE_FILE);
        let tuned_path = dir.join(TUNED_FILE);
        let meta_path = dir.join(META_FILE);
        let (store, meta, tuned) = if write {
            if !store_path.exists() {
                check_capacity(cfg.store_capacity, record_max, STATE_MAX_LEN)?;
            }
            fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
            // The store's writer lock is the folder's: nothing is written before it is held.
            let mut store = Store::open_or_create(
                &store_path,
                StoreConfig::new(cfg.store_capacity, max_payload),
            )?;
            store.set_durable(cfg.durable);
            let meta = check_meta(dir, &assets.manifest.name, &dims, &cfg.codec, true)?;
            // A checkpoint or a learner.json write cut short leaves its temporary file.
            let _ = fs::remove_file(dir.join(format!("{TUNED_FILE}.tmp")));
            let _ = fs::remove_file(dir.join(format!("{META_FILE}.tmp")));
            let tuned = read_tuned(&tuned_path, &dims)?;
            (store, meta, tuned)
        } else {
            if !meta_path.is_file() {
                return Err(LearnError::NotALearner {
                    dir: dir.to_path_buf(),
                });
            }
            let meta = check_meta(dir, &assets.manifest.name, &dims, &cfg.codec, false)?;
            if store_path.exists() {
                // The store and the weights are read under one shared lock: a checkpoint
                // (new weights, then the state blob naming them) is seen whole or not at all.
                let lock = ReadLock::acquire(&store_path)?;
                let bytes = crate::store::read_locked_by(&lock, &store_path)?;
                let tuned = read_tuned(&tuned_path, &dims)?;
                drop(lock);
                (Store::from_bytes(&store_path, bytes)?, meta, tuned)
            } else {
                let tuned = read_tuned(&tuned_path, &dims)?;
                (Store::empty_in_memory(&store_path)?, meta, tuned)
            }
        };
        let mut store = store;
        let id = meta.id.as_deref().and_then(parse_id);
        let state = match store.state()? {
            Some(blob) => LearnerState::decode(&blob).map_err(|message| LearnError::State {
                path: store_path.clone(),
                message,
            })?,
            None => LearnerState::new(),
        };
        if let (Some(found), Some(expected)) = (state.learner, id) {
            if found != expected {
                return Err(LearnError::Mismatch {
                    path: store_path,
                    found: format_id(found),
                    expected: format_id(expected),
                });
            }
        }
        let mut state = state;
        state.learner = id;
        let (tuned, head) = match tuned {
            Some((tuned, head, owner)) => {
                if let (Some(found), Some(expected)) = (owner, id) {
                    if parse_id(&found) != Some(expected) {
                        return Err(LearnError::Mismatch {
                            path: tuned_path,
                            found,
                            expected: format_id(expected),
                        });
                    }
                }
                (tuned, head)
            }
            None => {
                let original = &predictor.original;
                (
                    TunedState::fresh(&dims, original.params.clone()),
                    original.head.clone(),
                )
            }
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
            id,
            tuned: None,
            since_checkpoint: 0,
        })
    }

    /// The learner's id (from `learner.json`; `None` for a folder read before it had one).
    pub fn id(&self) -> Option<String> {
        self.id.map(format_id)
    }

    /// Whether this learner may learn and save (else it was opened read-only).
    pub fn is_writer(&self) -> bool {
        self.store.is_writer()
    }

    fn writer(&self) -> Result<(), LearnError> {
        if self.store.is_writer() {
            Ok(())
        } else {
            Err(LearnError::ReadOnly {
                dir: self.dir.clone(),
            })
        }
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
        self.writer()?;
        let label = check_label(0, label)?.to_string();
        for (i, c) in context.iter().enumerate() {
            check_label(i, c.as_ref())?;
        }
        if label.eq_ignore_ascii_case(NONE_ANSWER) {
            return Err(LearnError::ReservedLabel(label));
        }
        // A label differing only in case is the stored one (label sets ignore case).
        let label = match self
            .store
            .labels()?
            .into_iter()
            .filter_map(|l| l.name)
            .find(|n| n.to_lowercase() == label.to_lowercase())
        {
            Some(stored) => stored,
            None => label,
        };
        // The backend first: when it cannot be built, the store is left untouched.
        self.backend()?;

        // The training label set: labels in storage, this one, then the context. The text
        // embeddings and the probe below pass before a new label is stored, so a refused
        // sample leaves no label record behind.
        let known = self.store.find_label(&label)?;
        let (mut ids, names) = self.training_labels(Some((known, &label)), context)?;
        let text = self.predictor.encoder.encode_texts(&names)?;
        // A new label comes right after the stored ones; it is stored once the probe passed.
        let y = match known {
            Some(id) => ids.iter().position(|&i| i == id).unwrap_or(ids.len()),
            None => ids.len(),
        };

        // OCW update on the new sample, before the step (SPEC §3), and the "none"
        // calibration: the tuned model's cosine to the sample's own label.
        let z_o = self.predictor.original.forward_embeddings(tokens, 1);
        if z_o.iter().any(|v| !v.is_finite()) {
            // Finite tokens the frozen block overflows on: the sample, not the weights.
            return Err(LearnError::Overflow);
        }
        let original_correct = argmax_rows(&z_o, &text) == y;
        let probe = Batch {
            tokens,
            labels: &[y as u32],
            text: &text,
            n_labels: names.len(),
        };
        let (probe_stats, mut z_t) = self.backend()?.loss_embed(&probe)?;
        if !probe_stats.loss.is_finite() || z_t.iter().any(|v| !v.is_finite()) {
            // The weights went bad in an earlier step: back to the checkpoint, before the
            // sample touches the store.
            let step = self.roll_back("the tuned model's loss on the new sample is not finite")?;
            return Err(LearnError::Diverged {
                dir: self.dir.clone(),
                what: "the loss on the new sample is not finite".into(),
                step,
                note: "; the sample was not learned, try again",
            });
        }
        let y_id = match known {
            Some(id) => id,
            None => {
                let id = self.store.label_id(&label)?;
                ids.push(id);
                id
            }
        };
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
        const KEPT: &str = " (the sample is kept in the store and counted)";
        if !stats.loss.is_finite() {
            self.save_state()?;
            let step = self.roll_back("the training batch's loss is not finite")?;
            return Err(LearnError::Diverged {
                dir: self.dir.clone(),
                what: "the training batch's loss is not finite".into(),
                step,
                note: KEPT,
            });
        }
        if self.cfg.checkpoint_every > 0 && self.since_checkpoint >= self.cfg.checkpoint_every {
            if let Err(e) = self.checkpoint() {
                // The sample is stored: the counters that say so are saved all the same.
                self.save_state()?;
                return Err(match e {
                    LearnError::Diverged {
                        dir, what, step, ..
                    } => LearnError::Diverged {
                        dir,
                        what,
                        step,
                        note: KEPT,
                    },
                    e => e,
                });
            }
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
        self.writer()?;
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
            self.tuned = None;
            if !stats.loss.is_finite() {
                let step = self.roll_back("a rehearsal batch's loss is not finite")?;
                return Err(LearnError::Diverged {
                    dir: self.dir.clone(),
                    what: "a rehearsal batch's loss is not finite".into(),
                    step,
                    note: "",
                });
            }
            loss += f64::from(stats.loss);
        }
        self.since_checkpoint += 1;
        if self.cfg.checkpoint_every > 0 && self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint()?;
        }
        Ok(Some((loss / f64::from(steps)) as f32))
    }

    /// The training label set: the stored labels with samples, `new` (its id when stored,
    /// and name) if not among them, then the labels of `context` that are neither (label
    /// sets ignore case). Returns the ids of the stored ones, which come first in the names;
    /// a `new` label not yet stored is the name right after them.
    fn training_labels<S: AsRef<str>>(
        &mut self,
        new: Option<(Option<u16>, &str)>,
        context: &[S],
    ) -> Result<(Vec<u16>, Vec<String>), LearnError> {
        let mut ids: Vec<u16> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let new_id = new.and_then(|(id, _)| id);
        for info in self.store.labels()? {
            if let Some(name) = info.name {
                if info.count > 0 || Some(info.id) == new_id {
                    ids.push(info.id);
                    names.push(name);
                }
            }
        }
        match new {
            Some((Some(id), name)) if !ids.contains(&id) => {
                ids.push(id);
                names.push(name.to_string());
            }
            Some((None, name)) => names.push(name.to_string()),
            _ => {}
        }
        for (i, c) in context.iter().enumerate() {
            let c = check_label(i, c.as_ref())?;
            if !names.iter().any(|n| n.to_lowercase() == c.to_lowercase()) {
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

    /// Saves the tuned weights atomically, then the state blob that names them (readers see
    /// both or neither). Weights holding NaN or an infinity are never saved: they are
    /// rolled back to the last checkpoint and the call fails.
    pub fn checkpoint(&mut self) -> Result<(), LearnError> {
        self.writer()?;
        let tuned = self.tuned_state()?;
        if let Some(name) = first_non_finite(&tuned) {
            let step = self.roll_back(&format!("`{name}` is not finite"))?;
            return Err(LearnError::Diverged {
                dir: self.dir.clone(),
                what: format!("`{name}` holds values that are not finite"),
                step,
                note: "; nothing was saved",
            });
        }
        let path = self.dir.join(TUNED_FILE);
        let tmp = self.dir.join(format!("{TUNED_FILE}.tmp"));
        let head = &self.predictor.original.head;
        let id = self.id.map(format_id);
        let saved = save_tuned(&tmp, &self.dims, &tuned, head, id.as_deref())
            .map_err(LearnError::from)
            .and_then(|()| sync_file(&tmp));
        if let Err(e) = saved {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut state = self.state.clone();
        state.checkpoint_step = tuned.optim.step;
        let blob = state.encode(self.max_state_len());
        let dir = self.dir.clone();
        self.store.changing(|store| -> Result<(), LearnError> {
            fs::rename(&tmp, &path).map_err(|source| io_err(&path, source))?;
            sync_dir(&dir);
            store.set_state(&blob)?;
            Ok(())
        })?;
        self.state = state;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Puts the tuned weights back to the last checkpoint (the original block's when none
    /// was saved); returns its optimiser step. The samples stay in the store.
    fn roll_back(&mut self, why: &str) -> Result<u64, LearnError> {
        let (state, head) = match read_tuned(&self.dir.join(TUNED_FILE), &self.dims)? {
            Some((state, head, _)) => (state, head),
            None => (
                TunedState::fresh(&self.dims, self.predictor.original.params.clone()),
                self.predictor.original.head.clone(),
            ),
        };
        let step = state.optim.step;
        log::error!(
            "learner {}: {why}; the tuned weights are rolled back to the checkpoint of step {step}",
            self.dir.display()
        );
        self.trainer = Trainer::Pending {
            state: Box::new(state),
            head,
        };
        self.tuned = None;
        self.since_checkpoint = 0;
        Ok(step)
    }

    /// The largest state blob the store's records take.
    fn max_state_len(&self) -> usize {
        let max_record = self.store.geometry().max_record;
        let mut max_len = max_record as usize;
        while max_len > 0 && anytime_core::ring::layout::record_size(max_len as u32) > max_record {
            max_len -= 1;
        }
        max_len
    }

    /// Writes the state blob, as large as the store's records may be.
    fn save_state(&mut self) -> Result<(), LearnError> {
        let blob = self.state.encode(self.max_state_len());
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
    pub fn label_set<S: AsRef<str>>(&self, labels: &[S]) -> Result<LabelSet, LearnError> {
        Ok(self.predictor.label_set(labels)?)
    }

    /// The frozen encoder, shared: encode images ([`Encoder::encode_images`]) and label sets
    /// ([`LabelSet::embed`]) with it outside a lock that guards the learner, then hand the
    /// tokens to [`Learner::learn_tokens_in`] or [`Learner::predict_tokens`].
    pub fn encoder(&self) -> std::sync::Arc<crate::encoder::Encoder> {
        std::sync::Arc::clone(&self.predictor.encoder)
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
            let mut trained = match &mut self.trainer {
                Trainer::Pending { state, .. } => TunedState::clone(state),
                Trainer::Built { backend, .. } => backend.state()?,
            };
            if let Some(name) = first_non_finite(&trained) {
                self.roll_back(&format!("`{name}` is not finite"))?;
                if let Trainer::Pending { state, .. } = &self.trainer {
                    trained = TunedState::clone(state);
                }
            }
            let (params, other_bias) = (trained.params, trained.other_bias);
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

/// Refuses a training configuration that can make the weights non-finite: a learning rate
/// outside `(0, MAX_LR]`, and any other hyper-parameter that is not finite or is outside
/// its range (AdamW's betas in `[0, 1)`, a positive epsilon, a weight decay whose step
/// `lr · wd` stays below 1, a positive logit scale of at most 1000).
fn check_train(t: &TrainConfig) -> Result<(), LearnError> {
    let bad = |what: &str, v: f32, range: &str| {
        Err(LearnError::Config(format!(
            "{what} {v} is not a finite number in {range}"
        )))
    };
    if !(t.lr.is_finite() && t.lr > 0.0 && t.lr <= MAX_LR) {
        return bad("learning rate", t.lr, &format!("(0, {MAX_LR}]"));
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0 && t.lr * t.weight_decay < 1.0) {
        return bad("weight decay", t.weight_decay, "[0, 1 / learning rate)");
    }
    for (what, v) in [("beta1", t.beta1), ("beta2", t.beta2)] {
        if !(v.is_finite() && (0.0..1.0).contains(&v)) {
            return bad(what, v, "[0, 1)");
        }
    }
    if !(t.eps.is_finite() && t.eps > 0.0) {
        return bad("epsilon", t.eps, "(0, ∞)");
    }
    if !(t.beta_other.is_finite() && t.beta_other >= 0.0) {
        return bad("the \"other\" term's weight", t.beta_other, "[0, ∞)");
    }
    if !(t.logit_scale.is_finite() && t.logit_scale > 0.0 && t.logit_scale <= 1000.0) {
        return bad("logit scale", t.logit_scale, "(0, 1000]");
    }
    Ok(())
}

/// The smallest store capacity a learner can use: the largest state blob and four samples.
pub fn min_capacity(record_max: usize, state_max: usize) -> u64 {
    use anytime_core::ring::layout::record_size;
    4 * record_size(record_max as u32) as u64 + record_size(state_max as u32) as u64
}

fn check_capacity(capacity: u64, record_max: usize, state_max: usize) -> Result<(), LearnError> {
    let min = min_capacity(record_max, state_max);
    if capacity < min {
        return Err(LearnError::Config(format!(
            "a store capacity of {capacity} bytes is below the {min} this model needs (the largest state blob and four samples)"
        )));
    }
    Ok(())
}

/// The tuned weights at `path`, if the file exists (checksum and values checked).
fn read_tuned(
    path: &Path,
    dims: &BlockDims,
) -> Result<Option<(TunedState, FrozenHead, Option<String>)>, LearnError> {
    if path.is_file() {
        Ok(Some(load_tuned(path, dims)?))
    } else {
        Ok(None)
    }
}

fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// Checks `learner.json` against the model and codec and returns it. A writer (`write`)
/// creates it, with a new id, or gives an older one its id.
fn check_meta(
    dir: &Path,
    model: &str,
    dims: &BlockDims,
    codec: &CodecParams,
    write: bool,
) -> Result<Meta, LearnError> {
    let path = dir.join(META_FILE);
    let meta = Meta {
        id: Some(format_id(rand::random::<u64>() | 1)),
        model: model.to_string(),
        tokens: dims.tokens,
        width: dims.width,
        embed: dims.embed,
        codec_k: codec.k,
        codec_bits: codec.bits,
        codec_weighted: codec.weighted,
    };
    let bytes = match fs::File::open(&path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            // A learner.json is a few hundred bytes; more is not one.
            std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 * 1024), &mut bytes)
                .map_err(|source| io_err(&path, source))?;
            Some(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(io_err(&path, source)),
    };
    let Some(bytes) = bytes else {
        if !write {
            return Err(LearnError::NotALearner {
                dir: dir.to_path_buf(),
            });
        }
        write_meta(&path, &meta)?;
        return Ok(meta);
    };
    let mut found: Meta = serde_json::from_slice(&bytes).map_err(|e| LearnError::State {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if found.model != meta.model || found.tokens != meta.tokens || found.width != meta.width {
        return Err(LearnError::WrongModel {
            dir: dir.to_path_buf(),
            expected: meta.model,
            found: found.model,
            found_tokens: found.tokens,
            found_width: found.width,
        });
    }
    if found.id.as_deref().and_then(parse_id).is_none() && write {
        found.id = meta.id;
        write_meta(&path, &found)?;
    }
    Ok(found)
}

/// Writes `learner.json` atomically (temporary file, fsync, rename).
fn write_meta(path: &Path, meta: &Meta) -> Result<(), LearnError> {
    let text = serde_json::to_vec_pretty(meta).expect("plain struct");
    let tmp = path.with_extension("json.tmp");
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, source));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
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
        // the learner id round-trips; 0 reads as none
        s.learner = Some(0xabc);
        assert_eq!(LearnerState::decode(&s.encode(usize::MAX)).unwrap(), s);
        s.learner = None;
        // version 2 (no learner id) is still read
        let ocw_len = u32::from_le_bytes(bytes[25..29].try_into().unwrap()) as usize;
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&bytes[1..17]);
        v2.extend_from_slice(&bytes[25..]);
        let two = LearnerState::decode(&v2).unwrap();
        assert_eq!(two, s);
        // version 1 (no OCW length, no table) is still read
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&bytes[1..17]);
        v1.extend_from_slice(&bytes[29..29 + ocw_len]);
        let old = LearnerState::decode(&v1).unwrap();
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
    }

    /// Golden blobs of versions 1, 2 and 3 (`tests/data/learner_state_v{1,2,3}.bin`,
    /// written by this test under `ANYTIME_EDGE_WRITE_GOLDEN=1` only where absent) decode
    /// to the state they were written from, and version 3 is what this build writes: a
    /// format change that breaks reading a learner saved by an earlier build fails here.
    #[test]
    fn learner_state_golden_files_of_versions_1_to_3_read() {
        let mut s = LearnerState::new();
        (s.learned, s.checkpoint_step) = (1234, 1200);
        for (label, t, o) in [(3, true, false), (3, false, false), (7, true, true)] {
            s.ocw.observe(label, t, o).unwrap();
        }
        for (label, cos) in [(3, 0.25), (3, 0.5), (7, -0.125)] {
            s.typical.observe(label, cos);
        }
        let mut with_id = s.clone();
        with_id.learner = Some(0x0123_4567_89ab_cdef);
        let v3 = with_id.encode(usize::MAX);
        // Versions 2 and 1 as earlier builds wrote them: no learner id; v1 no OCW length
        // and no typicality table.
        let ocw_len = u32::from_le_bytes(v3[25..29].try_into().unwrap()) as usize;
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&v3[1..17]);
        v2.extend_from_slice(&v3[25..]);
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&v3[1..17]);
        v1.extend_from_slice(&v3[29..29 + ocw_len]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let golden = |name: &str, fresh: &[u8]| {
            let path = dir.join(name);
            if std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1") && !path.exists()
            {
                std::fs::write(&path, fresh).unwrap();
            }
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (g1, g2, g3) = (
            golden("learner_state_v1.bin", &v1),
            golden("learner_state_v2.bin", &v2),
            golden("learner_state_v3.bin", &v3),
        );
        assert_eq!((g1[0], g2[0], g3[0]), (1, 2, 3), "version bytes");
        assert_eq!(STATE_VERSION, 3, "a new version needs a new golden file");
        assert_eq!(LearnerState::decode(&g3).unwrap(), with_id);
        assert_eq!(g3, v3, "this build writes other bytes than version 3's");
        assert_eq!(LearnerState::decode(&g2).unwrap(), s);
        assert_eq!(g2, v2, "version 2's layout, as this build derives it");
        let old = LearnerState::decode(&g1).unwrap();
        assert_eq!((old.learned, old.checkpoint_step), (1234, 1200));
        assert_eq!(old.ocw, s.ocw);
        assert!(old.typical.0.is_empty());
        let t3 = s.typical.get(3).unwrap();
        assert_eq!(t3.n, 2);
    }
}
