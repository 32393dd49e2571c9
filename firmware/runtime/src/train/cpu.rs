//! The CPU backend: the reference of the training engine and the fallback without a GPU.

use super::adamw::adamw_update;
use super::loss::{loss_forward_backward, LossOutput};
use super::{Batch, Gradients, StepStats, TrainBackend, TrainConfig, TrainError, TunedState};
use crate::block::{backward, forward_into, BlockDims, FrozenHead, Saved};

/// Trains the tuned block on the CPU (f32, GEMMs through `matrixmultiply` and, on x86-64
/// with AVX2 and FMA, the thin kernel of `block::thin`).
/// Deterministic: the same state and batches give bit-identical results.
#[derive(Debug)]
pub struct CpuBackend {
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
    grads: Gradients,
    /// The forward's activations, kept to reuse their buffers from step to step.
    saved: Saved,
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
            saved: Saved::default(),
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

    /// Forward into `self.saved`, then the loss and its gradient by the embeddings.
    fn forward_loss(&mut self, batch: &Batch<'_>) -> Result<LossOutput, TrainError> {
        let b = batch.check(&self.dims)?;
        let p = &self.state.params;
        forward_into(&self.dims, p, &self.head, batch.tokens, b, &mut self.saved);
        let mut out = loss_forward_backward(
            &self.cfg,
            &self.saved.embed,
            self.dims.embed,
            batch.labels,
            batch.text,
            batch.n_labels,
            self.state.other_bias,
        );
        out.stats.step = self.state.optim.step;
        Ok(out)
    }

    /// Fills `self.grads` for `batch` (the input tokens' gradient only when `tokens`);
    /// returns the stats.
    fn compute_gradients(
        &mut self,
        batch: &Batch<'_>,
        tokens: bool,
    ) -> Result<StepStats, TrainError> {
        let out = self.forward_loss(batch)?;
        let g = &mut self.grads;
        let d_tokens = if tokens {
            g.tokens.resize(batch.tokens.len(), 0.0);
            Some(&mut g.tokens[..])
        } else {
            g.tokens.clear();
            None
        };
        backward(
            &self.dims,
            &self.state.params,
            &self.head,
            &self.saved,
            &out.d_embed,
            &mut g.params,
            d_tokens,
        );
        g.other_bias = out.d_bias;
        Ok(out.stats)
    }

    /// Forward, loss, backward (no input-token gradient) and the AdamW update.
    fn step_here(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        let mut stats = self.compute_gradients(batch, false)?;
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
}

/// Runs `f` on a worker of the rayon pool, so that the many parallel sections of a step
/// start from inside the pool rather than each being handed to it from outside.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran its body")
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
        on_pool(|| self.step_here(batch))
    }

    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        on_pool(|| Ok(self.forward_loss(batch)?.stats))
    }

    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError> {
        let stats = on_pool(|| self.compute_gradients(batch, true))?;
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
