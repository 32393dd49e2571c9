//! The CPU backend: the reference of the training engine and the fallback without a GPU.

use super::adamw::adamw_update;
use super::loss::{loss_forward_backward, LossOutput};
use super::{Batch, Gradients, StepStats, TrainBackend, TrainConfig, TrainError, TunedState};
use crate::block::{backward, forward, BlockDims, FrozenHead, Saved};

/// Trains the tuned block on the CPU (f32, GEMMs through `matrixmultiply`).
/// Deterministic: the same state and batches give bit-identical results.
#[derive(Debug)]
pub struct CpuBackend {
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
    grads: Gradients,
}

impl CpuBackend {
    /// A backend training from `state` (e.g. [`TunedState::fresh`] of the original block).
    pub fn new(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Result<Self, TrainError> {
        state.check(&dims)?;
        if head.ln_post_w.len() != dims.width || head.proj.len() != dims.width * dims.embed {
            return Err(TrainError::StateDims(dims));
        }
        let grads = Gradients {
            params: crate::block::BlockParams::zeros(&dims),
            other_bias: 0.0,
            tokens: Vec::new(),
        };
        Ok(CpuBackend {
            dims,
            cfg,
            head,
            state,
            grads,
        })
    }

    /// The current state, without a copy.
    pub fn state_ref(&self) -> &TunedState {
        &self.state
    }

    /// The frozen head.
    pub fn head(&self) -> &FrozenHead {
        &self.head
    }

    fn forward_loss(&self, batch: &Batch<'_>) -> Result<(Saved, LossOutput), TrainError> {
        let b = batch.check(&self.dims)?;
        let saved = forward(&self.dims, &self.state.params, &self.head, batch.tokens, b);
        let mut out = loss_forward_backward(
            &self.cfg,
            &saved.embed,
            self.dims.embed,
            batch.labels,
            batch.text,
            batch.n_labels,
            self.state.other_bias,
        );
        out.stats.step = self.state.optim.step;
        Ok((saved, out))
    }

    /// Fills `self.grads` for `batch`; returns the stats.
    fn compute_gradients(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        let (saved, out) = self.forward_loss(batch)?;
        let g = &mut self.grads;
        g.tokens.resize(batch.tokens.len(), 0.0);
        backward(
            &self.dims,
            &self.state.params,
            &self.head,
            &saved,
            &out.d_embed,
            &mut g.params,
            &mut g.tokens,
        );
        g.other_bias = out.d_bias;
        Ok(out.stats)
    }
}

impl TrainBackend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn dims(&self) -> BlockDims {
        self.dims
    }

    fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    fn step(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        let mut stats = self.compute_gradients(batch)?;
        let s = &mut self.state;
        adamw_update(
            &self.dims,
            &self.cfg,
            &mut s.optim,
            &mut s.params,
            &mut s.other_bias,
            &self.grads.params,
            self.grads.other_bias,
        );
        stats.step = s.optim.step;
        Ok(stats)
    }

    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        Ok(self.forward_loss(batch)?.1.stats)
    }

    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError> {
        let stats = self.compute_gradients(batch)?;
        Ok((stats, self.grads.clone()))
    }

    fn state(&mut self) -> Result<TunedState, TrainError> {
        Ok(self.state.clone())
    }

    fn set_state(&mut self, state: &TunedState) -> Result<(), TrainError> {
        state.check(&self.dims)?;
        self.state = state.clone();
        Ok(())
    }
}
