//! Training engine of the tuned last block: one trait, two backends.
//!
//! [`TrainBackend`] is implemented by the CPU reference ([`cpu::CpuBackend`], always
//! available, and the fallback) and by the wgpu backend (`gpu`, behind the `gpu` feature).
//! A backend that cannot find an adapter returns [`TrainError::NoAdapter`] from its
//! constructor. [`choose_backend`] builds the one a [`BackendChoice`] asks for and says why
//! (by default wgpu only on a hardware adapter, else the CPU backend).
//!
//! One step (SPEC §4): forward of the tuned block with saved activations, the loss
//! `CE(y; Y ∪ {other}) + β·CE(other; (Y ∪ {other}) \ {y})` averaged over the batch, backward,
//! and an AdamW update of the block's parameters and the "other" bias `b`; `ln_post` and
//! `proj` stay frozen.
//!
//! [`masked`] is SPEC §8's masked-token loss `L_r` on the dense block (`gpu::GpuMasked`
//! computes the same on wgpu); [`TrainBackend::masked_step`] trains on it (both backends),
//! with the mask token, its positional table and the head in a [`MaskedState`] the caller
//! owns.
//! [`diet`] plans a time step's budget of steps (SPEC §8), [`s_star`] picks its threshold
//! `S*` by cross-validation, and [`unlabelled`] holds a time step's unlabelled token sets.
//!
//! Trait stability: this trait is implemented in two places. Changes are recorded here.
//! - v1 (07:24 UTC): initial version.
//! - v2: `step_scaled` (a learning-rate scale for one step; `step` is scale 1) and
//!   `masked_step` (SPEC §8's `L_r`; at first the CPU backend only, the others returning
//!   an error `CpuOnly`).
//! - v3: the wgpu backend runs `masked_step` too; `TrainError::CpuOnly` is gone.
//! - v4: `private_step` (SPEC §7's learner loss, [`private_step`]); at first the CPU
//!   backend only, the wgpu backend returning an error `CpuOnly`, so a private learner
//!   trained on the CPU.
//! - v5: the wgpu backend runs `private_step` too (block forward, backward and AdamW on
//!   the GPU, the loss at the embedding on the host); `TrainError::CpuOnly` is gone again.

pub mod adamw;
mod choice;
pub mod cpu;
pub mod diet;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod loss;
pub mod masked;
mod masked_state;
mod masked_step;
pub mod private_step;
pub mod s_star;
pub mod state;
pub mod unlabelled;

use crate::block::{BlockDims, BlockParams, WeightsError};

pub use adamw::AdamState;
pub use choice::{choose_backend, quiet_device_select, BackendChoice, BackendReason, Training};
pub use cpu::{CpuBackend, CpuOptions};
pub use diet::{schedule, Available, BudgetReport, PlannedStep, StepBudget, StepKind};
pub use masked::{
    mask_positions, masked_count, masked_gradients, masked_loss, MaskedGradients, MaskedHead,
    MASK_RATIO,
};
pub use masked_state::{head_is_decayed, MaskedState, MaskedStateError, HEAD_TENSORS};
pub use masked_step::{MaskedBatch, MaskedStats};
pub use private_step::{private_loss, PrivateBatch, PrivateStats};
pub use s_star::{choose_s_star, SStarChoice, SStarError, SStarScore};
pub use state::{
    first_non_finite, first_non_finite_params, load_block, load_tuned, save_block, save_tuned,
};
pub use unlabelled::UnlabelledBuffer;

/// Every hyper-parameter of a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// AdamW learning rate (SPEC: 9.375e-6).
    pub lr: f32,
    /// Decoupled weight decay, applied to every tensor of the block but not to `b`
    /// (SPEC §4; see [`crate::block::is_decayed`]).
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Weight `β` of the "other" term of the loss (0.1).
    pub beta_other: f32,
    /// Fixed logit scale `τ` (100).
    pub logit_scale: f32,
}

impl TrainConfig {
    /// This config with the learning rate times `lr_scale` (the decoupled decay
    /// `lr·wd` scales with it, as under a learning-rate schedule); `lr_scale` must be
    /// finite and positive ([`TrainError::LrScale`]). Scale 1 gives this config's bits.
    pub fn with_lr_scale(&self, lr_scale: f32) -> Result<TrainConfig, TrainError> {
        if !(lr_scale.is_finite() && lr_scale > 0.0) {
            return Err(TrainError::LrScale(lr_scale));
        }
        Ok(TrainConfig {
            lr: self.lr * lr_scale,
            ..self.clone()
        })
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 9.375e-6,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            beta_other: 0.1,
            logit_scale: 100.0,
        }
    }
}

/// One training batch: `B` token sets and their labels, and the label set `Y`.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// `[B, N, D]` input tokens of the last block.
    pub tokens: &'a [f32],
    /// `[B]`, each an index into the rows of `text` (`< n_labels`).
    pub labels: &'a [u32],
    /// `[|Y|, E]` L2-normalised text embeddings of the training label set.
    pub text: &'a [f32],
    /// `|Y|`.
    pub n_labels: usize,
}

impl Batch<'_> {
    /// Batch size `B`.
    pub fn size(&self) -> usize {
        self.labels.len()
    }

    /// Checks every length against `dims`; returns `B`.
    pub fn check(&self, dims: &BlockDims) -> Result<usize, TrainError> {
        let b = self.labels.len();
        if b == 0 {
            return Err(TrainError::Shape {
                what: "batch size",
                expected: 1,
                found: 0,
            });
        }
        if self.n_labels == 0 {
            return Err(TrainError::Shape {
                what: "label set size",
                expected: 1,
                found: 0,
            });
        }
        check_len("tokens (B·N·D)", b * dims.tokens_len(), self.tokens.len())?;
        check_len("text (|Y|·E)", self.n_labels * dims.embed, self.text.len())?;
        check_labels(self.labels, self.n_labels)?;
        Ok(b)
    }
}

/// `Ok` when a slice's length `found` is the `expected` one; otherwise a shape error naming
/// `what`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), TrainError> {
    if expected == found {
        Ok(())
    } else {
        Err(TrainError::Shape {
            what,
            expected,
            found,
        })
    }
}

/// `Ok` when every label indexes one of `n_labels` rows; otherwise the first that does not.
pub(crate) fn check_labels(labels: &[u32], n_labels: usize) -> Result<(), TrainError> {
    match labels.iter().find(|&&l| l as usize >= n_labels) {
        Some(&label) => Err(TrainError::Label { label, n_labels }),
        None => Ok(()),
    }
}

/// What one forward (and step) measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Total loss, mean over the batch.
    pub loss: f32,
    /// Mean of `CE(y; Y ∪ {other})`.
    pub loss_label: f32,
    /// Mean of `CE(other; (Y ∪ {other}) \ {y})` (before the factor β).
    pub loss_other: f32,
    /// Samples whose argmax over `Y` (without "other") is their label, before the update.
    pub correct: usize,
    /// Batch size.
    pub batch: usize,
    /// Optimiser step count after this call (unchanged by forward-only calls).
    pub step: u64,
}

/// Gradients of the mean loss (for checks and for the data-free generator).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// Same layout as the parameters.
    pub params: BlockParams,
    /// d loss / d b.
    pub other_bias: f32,
    /// d loss / d tokens, `[B, N, D]`.
    pub tokens: Vec<f32>,
}

/// Everything a tuned run is: parameters, `b`, optimiser state. Saving and reloading it
/// continues a run bit-for-bit on the CPU path.
#[derive(Clone, Debug, PartialEq)]
pub struct TunedState {
    pub params: BlockParams,
    /// The "other" logit `b`.
    pub other_bias: f32,
    pub optim: AdamState,
}

impl TunedState {
    /// Refuses a state whose tensors do not have the shapes of `dims` (both backends).
    pub(crate) fn check(&self, dims: &BlockDims) -> Result<(), TrainError> {
        if !dims.is_valid()
            || !self.params.matches(dims)
            || !self.optim.m.matches(dims)
            || !self.optim.v.matches(dims)
        {
            return Err(TrainError::StateDims(*dims));
        }
        Ok(())
    }

    /// A fresh run from the shipped block: `b = 0`, zero moments, step 0.
    pub fn fresh(dims: &BlockDims, params: BlockParams) -> Self {
        TunedState {
            params,
            other_bias: 0.0,
            optim: AdamState::zeros(dims),
        }
    }
}

/// Errors of the training engine.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No GPU adapter: the caller falls back to the CPU backend.
    #[error("no GPU adapter available")]
    NoAdapter,
    /// The GPU was asked for in a build without the `gpu` feature.
    #[error("this build trains on the CPU only (built without the `gpu` feature)")]
    GpuNotBuilt,
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("label index {label} out of range for a label set of {n_labels}")]
    Label { label: u32, n_labels: usize },
    #[error("state does not match the block dims {0:?}")]
    StateDims(BlockDims),
    #[error("masked-head state does not match the block dims {0:?}")]
    MaskedStateDims(BlockDims),
    #[error("learning-rate scale {0} is not a finite number above 0")]
    LrScale(f32),
    /// Input values that are NaN or infinite.
    #[error("{what} holds NaN or an infinity")]
    NonFinite { what: &'static str },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A GPU failure, with the kernel (or operation) it happened in.
    #[error("GPU error in {kernel}: {message}")]
    Gpu { kernel: String, message: String },
}

/// A training backend of the tuned block. The frozen head (`ln_post`, `proj`) and the
/// dims are given to the backend's constructor.
///
/// Numeric contract (tested on the CPU path, and against it for other backends):
/// `loss`, `gradients` and `step` compute the same loss; `gradients` is the exact gradient
/// of that loss; `step` applies AdamW with the backend's [`TrainConfig`] and returns the
/// stats of the forward pass before the update. A step refused for its input (shapes,
/// labels, values, learning-rate scale, state dims) changes nothing.
pub trait TrainBackend {
    /// Short name for logs and tables ("cpu", "wgpu").
    fn name(&self) -> &'static str;
    /// Shapes of the block being trained.
    fn dims(&self) -> BlockDims;
    /// The hyper-parameters in use.
    fn config(&self) -> &TrainConfig;
    /// One training step: forward, loss, backward, AdamW update
    /// ([`Self::step_scaled`] at scale 1).
    fn step(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        self.step_scaled(batch, 1.0)
    }
    /// [`Self::step`] with the learning rate times `lr_scale` for this step alone, as
    /// [`TrainConfig::with_lr_scale`] says (SPEC §8: 0.1 beyond `S*`).
    fn step_scaled(&mut self, batch: &Batch<'_>, lr_scale: f32) -> Result<StepStats, TrainError>;
    /// One step of SPEC §8's `L_r` on `batch`: its positions masked
    /// ([`mask_positions`] of its seed), the dense block's forward and backward, and
    /// AdamW (learning rate times `lr_scale`) of the block's tensors (counted as a step
    /// of the block's optimiser; `b`, without a gradient here, is left alone) and of the
    /// mask token, positional table and head of `masked` (their own moments and step
    /// count). A step refused for its input (shapes, values, learning-rate scale, `masked`
    /// of other dims) changes neither state.
    fn masked_step(
        &mut self,
        batch: &MaskedBatch<'_>,
        masked: &mut MaskedState,
        lr_scale: f32,
    ) -> Result<MaskedStats, TrainError>;
    /// One step of SPEC §7's private learner ([`private_step`]) on `batch`: forward, the
    /// three terms' gradients summed at the embedding, backward, AdamW (learning rate
    /// times `lr_scale`) of the block and `b`. A step refused for its input changes
    /// nothing.
    fn private_step(
        &mut self,
        batch: &PrivateBatch<'_>,
        lr_scale: f32,
    ) -> Result<PrivateStats, TrainError>;
    /// Forward and loss only; no update.
    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError>;
    /// [`TrainBackend::loss`], and the batch's unnormalised embeddings `[B, E]` (the
    /// tuned block's output after `ln_post` and `proj`).
    fn loss_embed(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Vec<f32>), TrainError>;
    /// Forward, loss and backward, no update: the gradients of the mean loss.
    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError>;
    /// Reads the current parameters, `b` and optimiser state back.
    fn state(&mut self) -> Result<TunedState, TrainError>;
    /// Reads the current parameters and `b` back, without the optimiser state (what
    /// prediction needs).
    fn params(&mut self) -> Result<(BlockParams, f32), TrainError> {
        self.state().map(|s| (s.params, s.other_bias))
    }
    /// Replaces parameters, `b` and optimiser state (resume, or reset to the original block).
    fn set_state(&mut self, state: &TunedState) -> Result<(), TrainError>;
    /// Buffers created so far on the backend's GPU context (a diagnostic: calls whose batch
    /// shapes all have a kept plan create none), or `None` for a backend without one.
    fn gpu_buffers_created(&self) -> Option<u64> {
        None
    }
}
