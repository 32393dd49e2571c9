//! The CPU backend: the reference of the training engine and the fallback without a GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// Whether [`on_pool`] keeps the pool's other workers awake (see [`set_keep_awake`]).
static KEEP_AWAKE: AtomicBool = AtomicBool::new(true);

/// Turns on or off (for the whole process; on by default) keeping the rayon pool's idle
/// workers awake during a CPU training step, so that a benchmark can compare both in one
/// run.
///
/// A step is some fifty parallel sections (GEMM parts, per-image and per-head loops, the
/// AdamW chunks) with short serial stretches between them. A rayon worker that finds no
/// work for a few tens of microseconds goes to sleep, and waking it costs the next
/// section 35–150 µs on the 2-core VM the benchmarks ran on (a `join` of two 20 µs
/// halves after a 50 µs pause took 56 µs at the median, 158 µs at the 90th percentile,
/// against 22 µs without the pause). Kept awake, the other workers spin (running any
/// work that appears) until the step ends: the step is faster and uses more CPU time in
/// its serial stretches.
pub fn set_keep_awake(on: bool) {
    KEEP_AWAKE.store(on, Ordering::Relaxed);
}

/// How long a kept-awake worker spins without finding work before it goes back to
/// rayon's own waiting: well above the serial stretches of a ViT-B/32 step (under 1 ms
/// each in a temporary probe).
const KEEP_AWAKE_IDLE: Duration = Duration::from_millis(2);

/// Runs `f` on a worker of the rayon pool, so that the many parallel sections of a step
/// start from inside the pool rather than each being handed to it from outside; the
/// pool's other workers are kept awake while it runs (see [`set_keep_awake`]).
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let mut out = None;
    rayon::scope(|s| {
        if KEEP_AWAKE.load(Ordering::Relaxed) {
            for _ in 1..rayon::current_num_threads() {
                s.spawn(|_| keep_awake(&done));
            }
        }
        // Set even if `f` panics, so that the keepers end and the panic propagates.
        let _end = SetOnDrop(&done);
        out = Some(f());
    });
    out.expect("the scope ran its body")
}

/// Sets the flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Until `done`, runs the pool's pending work as it appears, spinning in between instead
/// of sleeping; returns after [`KEEP_AWAKE_IDLE`] without work. The limit also bounds
/// the wait where this job was picked up by a worker that is itself waiting for part of
/// the step (it cannot return before the step ends otherwise): that part goes on once
/// the keeper gives up.
fn keep_awake(done: &AtomicBool) {
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = Instant::now();
        } else if idle_since.elapsed() > KEEP_AWAKE_IDLE {
            return;
        } else {
            std::hint::spin_loop();
        }
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
