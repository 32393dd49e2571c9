//! The CPU backend: the reference of the training engine and the fallback without a GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anytime_linalg::{Gemm, GemmOptions, Placement};

use super::adamw::{next_step, update_bias, update_tensors, AdamState};
use super::loss::{loss_forward_backward, LossOutput};
use super::masked_step::{masked_step, MaskedBatch, MaskedStats};
use super::private_step::{private_loss, PrivateBatch, PrivateStats};
use super::{
    Batch, Gradients, MaskedState, StepStats, TrainBackend, TrainConfig, TrainError, TunedState,
};
use crate::block::{
    backward, backward_update, forward_into, BlockDims, FrozenHead, Saved, FUSED_TENSORS,
};

/// How a [`CpuBackend`] runs its step. Every choice gives the same bits but
/// `gemm.thin_avx512` (the AVX-512 thin kernels sum in another lane order); the defaults
/// are the fastest measured (`bench-train` compares each against its alternative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// The GEMM kernels.
    pub gemm: GemmOptions,
    /// The four weight matrices' AdamW update fused into backward, a strip of rows at a
    /// time while its gradient is in cache (else every gradient is written, then read
    /// back by AdamW).
    pub fused_update: bool,
    /// AdamW's software prefetch of the weights and moments ahead of the update.
    pub update_prefetch: bool,
    /// Transparent huge pages asked for under the weights, gradients and moments (Linux;
    /// advice only), when the backend is made or given a state.
    pub huge_pages: bool,
    /// The rayon pool's other workers kept spinning through a step (at most 2 ms without
    /// work) instead of sleeping between its parallel sections: faster, and more CPU
    /// time burnt in the step's serial stretches.
    pub keep_awake: bool,
}

impl Default for CpuOptions {
    /// Everything on.
    fn default() -> Self {
        CpuOptions {
            gemm: GemmOptions::default(),
            fused_update: true,
            update_prefetch: true,
            huge_pages: true,
            keep_awake: true,
        }
    }
}

impl CpuOptions {
    /// The defaults, with [`Self::keep_awake`] off when the machine runs on a battery
    /// (Linux: a power supply of type `Battery` that is discharging), where spinning
    /// workers cost charge for a few milliseconds a step.
    pub fn for_this_machine() -> Self {
        CpuOptions {
            keep_awake: !on_battery(),
            ..Self::default()
        }
    }
}

/// Whether a battery is discharging (`/sys/class/power_supply/*/{type,status}`).
fn on_battery() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/class/power_supply") else {
        return false;
    };
    dir.flatten().any(|e| {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
        read("type").trim() == "Battery" && read("status").trim() == "Discharging"
    })
}

/// Trains the tuned block on the CPU (f32, GEMMs through `anytime_linalg`), as its
/// [`CpuOptions`] say. Deterministic: the same state and batches give bit-identical
/// results.
#[derive(Debug)]
pub struct CpuBackend {
    options: CpuOptions,
    gemm: Gemm,
    dims: BlockDims,
    cfg: TrainConfig,
    head: FrozenHead,
    state: TunedState,
    /// The gradients of the last backward; the four weight matrices' are empty until
    /// they are asked for (a fused step never holds them).
    grads: Gradients,
    /// The forward's activations, kept to reuse their buffers from step to step.
    saved: Saved,
}

impl CpuBackend {
    /// A backend training from `state` (e.g. [`TunedState::fresh`] of the original
    /// block), with [`CpuOptions::for_this_machine`].
    pub fn new(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Result<Self, TrainError> {
        Self::with_options(dims, cfg, head, state, CpuOptions::for_this_machine())
    }

    /// [`Self::new`] with these options.
    pub fn with_options(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
        options: CpuOptions,
    ) -> Result<Self, TrainError> {
        state.check(&dims)?;
        if head.ln_post_w.len() != dims.width || head.proj.len() != dims.width * dims.embed {
            return Err(TrainError::StateDims(dims));
        }
        let placement = options.gemm.placement;
        let (state, head) = (placed(state, placement), placed_head(head, placement));
        // The weight matrices' gradients only when asked for (`gradients`, or a step
        // without the fused update): a fused step never holds them.
        let grads = Gradients {
            params: crate::block::BlockParams::vectors_only(&dims).placed(placement),
            other_bias: 0.0,
            tokens: Vec::new(),
        };
        let mut cpu = CpuBackend {
            options,
            gemm: Gemm::new(options.gemm),
            dims,
            cfg,
            head,
            state,
            grads,
            saved: Saved::placed(placement),
        };
        cpu.advise_state_huge_pages();
        Ok(cpu)
    }

    /// Asks for huge pages under the weights and moments (when the options say so); the
    /// weight matrices' gradients get them when they are made.
    fn advise_state_huge_pages(&mut self) {
        let s = &mut self.state;
        for set in [&mut s.params, &mut s.optim.m, &mut s.optim.v] {
            advise_huge_pages(set, self.options.huge_pages);
        }
    }

    /// The options.
    pub fn options(&self) -> CpuOptions {
        self.options
    }

    /// Runs later steps with `options` (same-run comparisons). Huge pages and the
    /// placement of the state already held change only for buffers made later (a new
    /// state, the step's temporaries): compare those with a second backend.
    pub fn set_options(&mut self, options: CpuOptions) {
        if options.gemm != self.options.gemm {
            self.gemm = Gemm::new(options.gemm);
        }
        self.options = options;
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
        forward_into(
            &self.gemm,
            &self.dims,
            p,
            &self.head,
            batch.tokens,
            b,
            &mut self.saved,
        );
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
        if !self.grads.params.matches(&self.dims) {
            let zeros = crate::block::BlockParams::zeros(&self.dims);
            self.grads.params = zeros.placed(self.options.gemm.placement);
            advise_huge_pages(&mut self.grads.params, self.options.huge_pages);
        }
        let g = &mut self.grads;
        let d_tokens = if tokens {
            g.tokens.resize(batch.tokens.len(), 0.0);
            Some(&mut g.tokens[..])
        } else {
            g.tokens.clear();
            None
        };
        backward(
            &self.gemm,
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

    /// Forward, loss, backward (no input-token gradient) and the AdamW update at `cfg`'s
    /// learning rate: fused into backward for the weight matrices (unless the options say
    /// otherwise), then the rest.
    fn step_here(&mut self, batch: &Batch<'_>, cfg: &TrainConfig) -> Result<StepStats, TrainError> {
        if !self.options.fused_update {
            return self.step_unfused(batch, cfg);
        }
        let out = self.forward_loss(batch)?;
        let mut stats = out.stats;
        stats.step = self.update_from(&out.d_embed, out.d_bias, cfg);
        Ok(stats)
    }

    /// Backward of the forward in `self.saved` from the gradient `d_embed` at the
    /// embedding and `d_bias` at `b`, and the AdamW update at `cfg`'s learning rate (fused
    /// into backward for the weight matrices unless the options say otherwise); returns
    /// the optimiser's step count.
    fn update_from(&mut self, d_embed: &[f32], d_bias: f32, cfg: &TrainConfig) -> u64 {
        let s = &mut self.state;
        let k = next_step(cfg, &mut s.optim).prefetching(self.options.update_prefetch);
        let g = &mut self.grads;
        if self.options.fused_update {
            let rule =
                |name: &'static str, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                    k.update(name, w, g, m, v)
                };
            backward_update(
                &self.gemm,
                &self.dims,
                &mut s.params,
                &self.head,
                &self.saved,
                d_embed,
                &mut g.params,
                (&mut s.optim.m, &mut s.optim.v),
                &rule,
            );
            let rest = |name: &str| !FUSED_TENSORS.contains(&name);
            update_tensors(&self.dims, k, &mut s.optim, &mut s.params, &g.params, rest);
        } else {
            if !g.params.matches(&self.dims) {
                let zeros = crate::block::BlockParams::zeros(&self.dims);
                g.params = zeros.placed(self.options.gemm.placement);
                advise_huge_pages(&mut g.params, self.options.huge_pages);
            }
            backward(
                &self.gemm,
                &self.dims,
                &s.params,
                &self.head,
                &self.saved,
                d_embed,
                &mut g.params,
                None,
            );
            let all = |_: &str| true;
            update_tensors(&self.dims, k, &mut s.optim, &mut s.params, &g.params, all);
        }
        g.other_bias = d_bias;
        update_bias(k, &mut s.optim, &mut s.other_bias, d_bias);
        s.optim.step
    }

    /// SPEC §7's private step: forward, [`private_loss`], then [`Self::update_from`].
    fn private_here(
        &mut self,
        batch: &PrivateBatch<'_>,
        cfg: &TrainConfig,
    ) -> Result<PrivateStats, TrainError> {
        let b = batch.check(&self.dims)?;
        forward_into(
            &self.gemm,
            &self.dims,
            &self.state.params,
            &self.head,
            batch.tokens,
            b,
            &mut self.saved,
        );
        let e = self.dims.embed;
        let embed = &self.saved.embed[..b * e];
        let (mut stats, d_embed, d_bias) =
            private_loss(&self.cfg, embed, e, batch, self.state.other_bias);
        stats.step = self.update_from(&d_embed, d_bias, cfg);
        Ok(stats)
    }

    /// [`Self::step_here`] with backward writing every gradient, then AdamW over all.
    fn step_unfused(
        &mut self,
        batch: &Batch<'_>,
        cfg: &TrainConfig,
    ) -> Result<StepStats, TrainError> {
        let mut stats = self.compute_gradients(batch, false)?;
        let (s, g) = (&mut self.state, &self.grads);
        let k = next_step(cfg, &mut s.optim).prefetching(self.options.update_prefetch);
        let all = |_: &str| true;
        update_tensors(&self.dims, k, &mut s.optim, &mut s.params, &g.params, all);
        update_bias(k, &mut s.optim, &mut s.other_bias, g.other_bias);
        stats.step = s.optim.step;
        Ok(stats)
    }
}

/// `state` with every tensor placed as `placement` says.
fn placed(state: TunedState, placement: Placement) -> TunedState {
    let TunedState {
        params,
        other_bias,
        optim,
    } = state;
    TunedState {
        params: params.placed(placement),
        other_bias,
        optim: AdamState {
            m: optim.m.placed(placement),
            v: optim.v.placed(placement),
            ..optim
        },
    }
}

/// `head` with every tensor placed as `placement` says.
fn placed_head(mut head: FrozenHead, placement: Placement) -> FrozenHead {
    for t in head.tensors_mut() {
        *t = std::mem::take(t).placed(placement);
    }
    head
}

/// [`huge_pages`] for every tensor of `set` when `on`.
fn advise_huge_pages(set: &mut crate::block::BlockParams, on: bool) {
    if on {
        set.tensors_mut().into_iter().for_each(|t| huge_pages(t));
    }
}

/// Asks Linux to back the whole 2 MiB pages inside `v` with transparent huge pages:
/// `MADV_HUGEPAGE`, then `MADV_COLLAPSE` (Linux 6.1 and later) to move the pages already
/// there at once rather than whenever `khugepaged` gets to them. Advice only: it never
/// changes the contents, and its errors (an older kernel, huge pages off or exhausted)
/// leave the pages as they were.
fn huge_pages(v: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        /// `MADV_COLLAPSE` of `include/uapi/asm-generic/mman-common.h` (not in `libc` yet).
        const MADV_COLLAPSE: libc::c_int = 25;
        let start = v.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(v);
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi > lo {
            let ptr = lo as *mut libc::c_void;
            // SAFETY: `[lo, hi)` lies inside `v`, which is borrowed mutably, so no other
            // reference sees its pages change backing; the advice keeps their contents.
            unsafe {
                libc::madvise(ptr, hi - lo, libc::MADV_HUGEPAGE);
                libc::madvise(ptr, hi - lo, MADV_COLLAPSE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// How long a kept-awake worker spins without finding work before it goes back to
/// rayon's own waiting: longer than a step's serial stretches.
const KEEP_AWAKE_IDLE: Duration = Duration::from_millis(2);

/// Runs `f` on a worker of the rayon pool, so that the many parallel sections of a step
/// start from inside the pool rather than each being handed to it from outside; the
/// pool's other workers are kept awake while it runs when `keep_awake`.
fn on_pool<R: Send>(awake: bool, f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let mut out = None;
    rayon::scope(|s| {
        if awake {
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

    fn step_scaled(&mut self, batch: &Batch<'_>, lr_scale: f32) -> Result<StepStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        on_pool(self.options.keep_awake, || self.step_here(batch, &cfg))
    }

    fn masked_step(
        &mut self,
        batch: &MaskedBatch<'_>,
        masked: &mut MaskedState,
        lr_scale: f32,
    ) -> Result<MaskedStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        let prefetch = self.options.update_prefetch;
        on_pool(self.options.keep_awake, || {
            let (gemm, dims, state) = (&self.gemm, &self.dims, &mut self.state);
            masked_step(gemm, dims, &cfg, state, masked, batch, prefetch)
        })
    }

    fn private_step(
        &mut self,
        batch: &PrivateBatch<'_>,
        lr_scale: f32,
    ) -> Result<PrivateStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        on_pool(self.options.keep_awake, || self.private_here(batch, &cfg))
    }

    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        on_pool(self.options.keep_awake, || {
            Ok(self.forward_loss(batch)?.stats)
        })
    }

    fn loss_embed(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Vec<f32>), TrainError> {
        on_pool(self.options.keep_awake, || {
            let stats = self.forward_loss(batch)?.stats;
            let len = batch.size() * self.dims.embed;
            Ok((stats, self.saved.embed[..len].to_vec()))
        })
    }

    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError> {
        let stats = on_pool(self.options.keep_awake, || {
            self.compute_gradients(batch, true)
        })?;
        Ok((stats, self.grads.clone()))
    }

    fn state(&mut self) -> Result<TunedState, TrainError> {
        Ok(self.state.clone())
    }

    fn params(&mut self) -> Result<(crate::block::BlockParams, f32), TrainError> {
        Ok((self.state.params.clone(), self.state.other_bias))
    }

    fn set_state(&mut self, state: &TunedState) -> Result<(), TrainError> {
        state.check(&self.dims)?;
        self.state = placed(state.clone(), self.options.gemm.placement);
        self.advise_state_huge_pages();
        Ok(())
    }
}

#[cfg(test)]
mod fused_tests {
    use super::*;
    use crate::block::{BlockParams, FUSED_TENSORS};
    use crate::train::TrainConfig;

    /// A fused step holds no weight-matrix gradient; `gradients` fills them.
    #[test]
    fn a_fused_step_holds_no_weight_matrix_gradient() {
        let dims = BlockDims {
            width: 8,
            heads: 2,
            mlp: 16,
            tokens: 3,
            embed: 4,
        };
        let state = TunedState::fresh(&dims, BlockParams::random(&dims, 1));
        let head = FrozenHead::random(&dims, 2);
        let mut be = CpuBackend::new(dims, TrainConfig::default(), head, state).unwrap();
        let tokens = vec![0.5f32; 2 * dims.tokens * dims.width];
        let text = [0.6f32, 0.8, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8];
        let batch = Batch {
            tokens: &tokens,
            labels: &[0, 1],
            text: &text,
            n_labels: 2,
        };
        let held = |be: &CpuBackend| -> Vec<usize> {
            let names = crate::block::block_tensor_shapes(&dims);
            let g = be.grads.params.tensors();
            let pick = names
                .iter()
                .zip(g)
                .filter(|((n, _), _)| FUSED_TENSORS.contains(n));
            pick.map(|(_, t)| t.len()).collect()
        };
        be.step(&batch).unwrap();
        assert_eq!(held(&be), [0, 0, 0, 0]);
        be.gradients(&batch).unwrap();
        assert!(held(&be).iter().all(|&n| n > 0));
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;
    use crate::block::BlockParams;

    /// A refused private batch changes nothing; a good one takes one step, the same bits
    /// with the update fused into backward or not.
    #[test]
    fn a_private_step_refused_changes_nothing_and_fused_equals_unfused() {
        let dims = BlockDims {
            width: 8,
            heads: 2,
            mlp: 16,
            tokens: 3,
            embed: 4,
        };
        let state = TunedState::fresh(&dims, BlockParams::random(&dims, 3));
        let head = FrozenHead::random(&dims, 4);
        let opts = |fused_update| CpuOptions {
            fused_update,
            ..CpuOptions::default()
        };
        let make = |fused| {
            let (s, h) = (state.clone(), head.clone());
            CpuBackend::with_options(dims, TrainConfig::default(), h, s, opts(fused)).unwrap()
        };
        let tokens: Vec<f32> = (0..2 * 3 * 8)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.2)
            .collect();
        let text = [0.6f32, 0.8, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8];
        let good = PrivateBatch {
            tokens: &tokens,
            real: 1,
            labels: &[0, 1],
            text: &text,
            n_labels: 2,
            local_labels: &[0],
            local_text: &text[..4],
            n_local: 1,
            old_text: &text[4..],
            n_old: 1,
            old_target: &[0.3, -0.2],
            mu: 0.1,
        };
        let mut be = make(true);
        let nan = [f32::NAN; 2];
        for bad in [
            PrivateBatch {
                old_target: &nan,
                ..good
            },
            PrivateBatch {
                labels: &[0, 2],
                ..good
            },
            PrivateBatch {
                tokens: &tokens[1..],
                ..good
            },
        ] {
            assert!(be.private_step(&bad, 1.0).is_err());
            assert_eq!(be.state_ref(), &state, "a refused batch changed the state");
        }
        assert!(be.private_step(&good, f32::NAN).is_err());
        assert_eq!(be.state_ref(), &state);
        let stats = be.private_step(&good, 1.0).unwrap();
        assert_eq!((stats.step, stats.batch), (1, 2));
        assert!(stats.local > 0.0 && stats.balanced > 0.0 && stats.distill > 0.0);
        assert_ne!(be.state_ref(), &state);
        let mut unfused = make(false);
        assert_eq!(unfused.private_step(&good, 1.0).unwrap(), stats);
        assert_eq!(unfused.state_ref(), be.state_ref());
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// KiB of huge pages (`AnonHugePages` of `/proc/self/smaps`) in the mappings inside
    /// `[lo, hi)` (the advice splits off the advised range as mappings of its own), and
    /// whether any of them carries the kernel's mark of `MADV_HUGEPAGE` (`hg` in
    /// `VmFlags`).
    fn huge_kib_in(lo: usize, hi: usize) -> (u64, bool) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let (mut inside, mut kib, mut marked) = (false, 0, false);
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = lo <= a && b <= hi;
                    continue;
                }
            }
            if !inside {
                continue;
            }
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                kib += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                marked |= flags.split_whitespace().any(|f| f == "hg");
            }
        }
        (kib, marked)
    }

    /// The advice moves a large array already in memory onto huge pages where Linux
    /// offers them (transparent huge pages not off, `MADV_COLLAPSE` from 6.1), and never
    /// changes its contents.
    #[test]
    fn huge_pages_back_a_large_array_and_keep_its_contents() {
        const TEST: &str = "huge_pages_back_a_large_array_and_keep_its_contents";
        let mut v: Vec<f32> = (0..4 << 20).map(|i| i as f32).collect(); // 16 MiB, touched
        let want = v.clone();
        super::huge_pages(&mut v);
        assert_eq!(v, want, "the advice changed the contents");
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut version = release
            .split(['.', '-'])
            .map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        if thp.is_empty() || thp.contains("[never]") || (major, minor) < (6, 1) {
            let why = format!(
                "the huge-page check: THP `{}`, kernel {}",
                thp.trim(),
                release.trim()
            );
            anytime_testkit::skip::not_here(TEST, &why);
            return;
        }
        let lo = v.as_ptr() as usize;
        let (kib, marked) = huge_kib_in(lo, lo + (16 << 20));
        if !marked && !cfg!(target_arch = "x86_64") {
            // A user-mode emulator (CI's aarch64 tests under qemu) takes the advice and
            // drops it, and shows the host's mappings. Natively on x86-64 (CI's own
            // machine) the advice must arrive.
            let why = "the huge-page check: the advice never reached the kernel (an emulator)";
            anytime_testkit::skip::not_here(TEST, why);
            return;
        }
        assert!(marked, "no MADV_HUGEPAGE mark on the array's mappings");
        // At least 6 of the 7 or 8 whole 2 MiB pages inside the 16 MiB.
        assert!(
            kib >= 6 * 2048,
            "{kib} KiB of huge pages under a 16 MiB array"
        );
    }
}
