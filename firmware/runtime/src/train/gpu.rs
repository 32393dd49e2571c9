//! The wgpu backend: the tuned block trained by the WGSL kernels of `anytime-shaders`.
//!
//! Weights, gradients and both AdamW moments live in flat GPU buffers for the life of the
//! backend (uploaded once, or on [`TrainBackend::set_state`]). A step uploads the batch,
//! rewrites the optimiser's per-step scalars and records forward (with saved activations),
//! loss, backward and AdamW into one command encoder, one submit, with no read-back in
//! between; only the per-sample loss statistics (`4·B` floats) are read after the step.
//! Parameters, gradients and optimiser state are read back only by `state` / `gradients`.
//!
//! [`GpuBackend::new`] fails with [`TrainError::NoAdapter`] when there is no adapter; the
//! caller then uses the CPU backend ([`super::choose_backend`] does, and also keeps off
//! software adapters unless the GPU is asked for).
//!
//! [`GpuDense`] is the dense block (every token's output) on the same kernels: forward,
//! and backward from a given output gradient; [`GpuMasked`] is SPEC §8's masked-token loss
//! `L_r` on it, with its gradients. [`TrainBackend::masked_step`] records the same `L_r`
//! plan over the backend's own parameter and gradient buffers, so the block's AdamW reads
//! its gradients in place (see there for what runs where). [`TrainBackend::private_step`]
//! (SPEC §7) splits a contrastive plan's step at the embedding: the block's forward in one
//! submit, the loss and its gradient on the host, backward and AdamW in a second submit.
//!
//! Plans (the buffers and bound dispatches of one batch shape) are kept across calls, up
//! to [`cache::PLANS_KEPT`] contrastive ones keyed by `(B, |Y|)` and as many `L_r` ones
//! keyed by `B`, least recently used evicted: the learner's batch-1 probe and batch-`B`
//! step each find theirs, and a run of them creates no buffer
//! ([`GpuBackend::buffers_created`]).

mod cache;
mod dense;
mod layers;
mod layout;
mod masked;
mod plan;

use std::sync::Arc;

use anytime_shaders::kernels::adamw;
use anytime_shaders::kernels::loss_fwd_bwd::{SampleStats, STATS_PER_SAMPLE};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError, Kernels};

use self::cache::PlanCache;
pub use self::dense::GpuDense;
use self::dense::{check_batch_size, BlockBuffers};
use self::layout::ParamLayout;
pub use self::masked::GpuMasked;
use self::masked::MaskedPlan;
use self::plan::{adamw_update, LossConfig, Persistent, Plan, Updated};
use super::adamw::adamw_update_slice;
use super::{
    head_is_decayed, mask_positions, masked_count, private_loss, AdamState, Batch, Gradients,
    MaskedBatch, MaskedHead, MaskedState, MaskedStats, PrivateBatch, PrivateStats, StepStats,
    TrainBackend, TrainConfig, TrainError, TunedState, HEAD_TENSORS,
};
use crate::block::{BlockDims, BlockParams, FrozenHead};

impl From<GpuError> for TrainError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::NoAdapter => TrainError::NoAdapter,
            GpuError::SoftwareOnly { .. } => TrainError::Gpu {
                kernel: "adapter".into(),
                message: e.to_string(),
            },
            GpuError::Shader { kernel, .. }
            | GpuError::Size { kernel, .. }
            | GpuError::Args { kernel, .. } => TrainError::Gpu {
                kernel: kernel.to_string(),
                message: e.to_string(),
            },
            GpuError::Device(_) => TrainError::Gpu {
                kernel: "device".into(),
                message: e.to_string(),
            },
            GpuError::Readback { ref what, .. } => TrainError::Gpu {
                kernel: format!("readback of {what}"),
                message: e.to_string(),
            },
        }
    }
}

/// Bytes of the GPU buffers a [`GpuBackend`] holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// Trainable parameters (`b` included) and the frozen head.
    pub weights: u64,
    pub gradients: u64,
    /// Both Adam moments.
    pub optimiser: u64,
    /// Inputs, forward activations and backward buffers of every kept plan: the
    /// contrastive ones' and `L_r`'s (0 before the first call of each).
    pub plan: u64,
}

/// Trains the tuned block on a GPU adapter through wgpu.
#[derive(Debug)]
pub struct GpuBackend {
    dims: BlockDims,
    cfg: TrainConfig,
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    layout: ParamLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    head: wgpu::Buffer,
    step_uniform: wgpu::Buffer,
    /// Optimiser steps applied (host mirror of the state's counter).
    step: u64,
    /// Contrastive plans by `(B, |Y|)`, the one last used current.
    plans: PlanCache<Plan>,
    /// `L_r` by masked batch size, the one last used current.
    masked: PlanCache<MaskedTraining>,
}

/// What a contrastive call records after the forward and loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Nothing: the loss (and embeddings) only.
    Nothing,
    /// The parameter gradients and AdamW (a training step).
    Update,
    /// The parameter gradients and `d tokens`, no update ([`TrainBackend::gradients`]).
    InputGradient,
}

/// `L_r` on the backend's own buffers: the plan writes the block's gradients where
/// `update` reads them.
#[derive(Debug)]
struct MaskedTraining {
    plan: MaskedPlan,
    /// AdamW of the block tensors alone (`L_r` gives `b` no gradient).
    update: Vec<Dispatch>,
}

impl GpuBackend {
    /// A backend on a new [`GpuContext`] (any adapter, software ones included), training
    /// from `state`. Same signature as [`super::CpuBackend::new`];
    /// [`TrainError::NoAdapter`] when there is no adapter.
    pub fn new(
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Result<Self, TrainError> {
        let ctx = Arc::new(GpuContext::new()?);
        Self::with_context(ctx, dims, cfg, head, state)
    }

    /// A backend on an existing context (pipelines are built once per backend).
    pub fn with_context(
        ctx: Arc<GpuContext>,
        dims: BlockDims,
        cfg: TrainConfig,
        head: FrozenHead,
        state: TunedState,
    ) -> Result<Self, TrainError> {
        state.check(&dims)?;
        if head.ln_post_w.len() != dims.width
            || head.ln_post_b.len() != dims.width
            || head.proj.len() != dims.width * dims.embed
        {
            return Err(TrainError::StateDims(dims));
        }
        let layout = ParamLayout::new(&dims).ok_or(TrainError::StateDims(dims))?;
        let kernels = Kernels::new(&ctx)?;
        let mut head_flat = Vec::with_capacity(2 * dims.width + dims.width * dims.embed);
        for t in head.tensors() {
            head_flat.extend_from_slice(t);
        }
        let backend = GpuBackend {
            params: ctx.storage_init("params", &layout.flatten(&state.params, state.other_bias)),
            grads: ctx.storage_zeroed("grads", layout.len()),
            m: ctx.storage_init(
                "adam m",
                &layout.flatten(&state.optim.m, state.optim.m_bias),
            ),
            v: ctx.storage_init(
                "adam v",
                &layout.flatten(&state.optim.v, state.optim.v_bias),
            ),
            head: ctx.storage_init("frozen head", &head_flat),
            step_uniform: ctx.uniform("adam step", &adamw::Step::default()),
            step: state.optim.step,
            plans: PlanCache::default(),
            masked: PlanCache::default(),
            dims,
            cfg,
            ctx,
            kernels,
            layout,
        };
        log::info!(
            "wgpu training backend on {} ({} trainable scalars)",
            backend.ctx.describe(),
            backend.layout.len()
        );
        Ok(backend)
    }

    /// The adapter in use, e.g. `llvmpipe (Vulkan, Cpu)`.
    pub fn adapter(&self) -> String {
        self.ctx.describe()
    }

    /// The shared GPU context.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Bytes held in GPU buffers, by kind.
    pub fn memory(&self) -> GpuMemory {
        GpuMemory {
            weights: self.params.size() + self.head.size(),
            gradients: self.grads.size(),
            optimiser: self.m.size() + self.v.size(),
            plan: self.plans.iter().map(|p| p.bytes).sum::<u64>()
                + self.masked.iter().map(|m| m.plan.bytes).sum::<u64>(),
        }
    }

    /// Buffers created so far on this backend's [`GpuContext`] (shared with whatever else
    /// uses it): unchanged over calls whose batch shapes all have a kept plan.
    pub fn buffers_created(&self) -> u64 {
        self.ctx.buffers_created()
    }

    /// The buffers that live as long as the backend.
    fn persistent(&self) -> Persistent<'_> {
        Persistent {
            params: &self.params,
            grads: &self.grads,
            m: &self.m,
            v: &self.v,
            head: &self.head,
            step: &self.step_uniform,
        }
    }

    /// The block as a dense plan binds it: the backend's parameters and gradients.
    fn block(&self) -> BlockBuffers<'_> {
        BlockBuffers {
            ctx: &self.ctx,
            kernels: &self.kernels,
            dims: &self.dims,
            layout: &self.layout,
            params: &self.params,
            grads: &self.grads,
        }
    }

    /// Uploads the batch into the plan for its shape (built on first use of a shape, or
    /// after it was evicted) and makes that plan the current one.
    fn prepare(&mut self, batch: &Batch<'_>) -> Result<(), TrainError> {
        let b = batch.check(&self.dims)?;
        let n_labels = batch.n_labels;
        if !self.plans.touch(|p| p.batch == b && p.n_labels == n_labels) {
            self.plans.make_room();
            let persistent = self.persistent();
            let loss = LossConfig {
                tau: self.cfg.logit_scale,
                beta: self.cfg.beta_other,
            };
            log::debug!("wgpu: plan for B = {b}, |Y| = {}", batch.n_labels);
            let plan = Plan::new(
                &self.ctx,
                &self.kernels,
                &self.dims,
                &self.layout,
                persistent,
                loss,
                b,
                n_labels,
            )?;
            self.plans.insert(plan);
        }
        let plan = self.plans.current().expect("plan was just found or built");
        self.ctx.write_f32(&plan.buffers.tokens, 0, batch.tokens);
        self.ctx.write_f32(&plan.buffers.text, 0, batch.text);
        self.ctx
            .queue
            .write_buffer(&plan.buffers.labels, 0, bytemuck::cast_slice(batch.labels));
        Ok(())
    }

    /// Records the forward of the prepared plan, then the phases `after` picks, into one
    /// encoder and submits it.
    fn submit(&self, after: After) {
        let plan = self.plans.current().expect("prepare() runs first");
        let none: &[Dispatch] = &[];
        let [backward, then]: [&[Dispatch]; 2] = match after {
            After::Nothing => [none, none],
            After::Update => [&plan.backward, &plan.update],
            After::InputGradient => [&plan.backward, &plan.input_backward],
        };
        let phases = [&plan.forward, &plan.loss, backward, then];
        self.submit_phases("train step", phases);
    }

    /// Records `phases` in order into one compute pass of one encoder and submits it.
    fn submit_phases<const P: usize>(&self, label: &str, phases: [&[Dispatch]; P]) {
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            for d in phases.into_iter().flatten() {
                d.record(&mut pass);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
    }

    /// Writes the AdamW scalars of block step `t` at `cfg`'s learning rate (staged until
    /// the next submit).
    fn write_step(&self, cfg: &TrainConfig, t: u64) {
        let uniform = Self::step_uniform_for(cfg, t);
        self.ctx
            .queue
            .write_buffer(&self.step_uniform, 0, bytemuck::bytes_of(&uniform));
    }

    /// Makes `L_r`'s plan and block update for `batch` images the current one (built on
    /// first use of a size, or after it was evicted).
    fn prepare_masked(&mut self, batch: usize) -> Result<(), TrainError> {
        let k = masked_count(self.dims.tokens);
        if self.masked.touch(|m| m.plan.fits(batch, k)) {
            return Ok(());
        }
        self.masked.make_room();
        let plan = MaskedPlan::new(&self.block(), batch, k)?;
        let (ctx, kernels, layout) = (&self.ctx, &self.kernels, &self.layout);
        let update = adamw_update(ctx, kernels, layout, &self.persistent(), Updated::Block)?;
        self.masked.insert(MaskedTraining { plan, update });
        Ok(())
    }

    /// Reads the loss statistics of the last forward.
    fn read_stats(&self) -> Result<StepStats, TrainError> {
        let plan = self.plans.current().expect("prepare() runs first");
        let s = self
            .ctx
            .read_f32(&plan.buffers.scratch, STATS_PER_SAMPLE * plan.batch)?;
        let b = plan.batch as f64;
        let (mut l1, mut l2, mut correct) = (0.0f64, 0.0f64, 0usize);
        for raw in s.chunks_exact(STATS_PER_SAMPLE) {
            let r = SampleStats::from_raw(raw);
            l1 += r.label;
            l2 += r.other;
            correct += usize::from(r.correct);
        }
        let (l1, l2) = (l1 / b, l2 / b);
        Ok(StepStats {
            loss: (l1 + self.cfg.beta_other as f64 * l2) as f32,
            loss_label: l1 as f32,
            loss_other: l2 as f32,
            correct,
            batch: plan.batch,
            step: self.step,
        })
    }

    /// Per-step AdamW scalars for step `t` (1-based) at `cfg`'s learning rate, computed
    /// as the CPU path does.
    fn step_uniform_for(cfg: &TrainConfig, t: u64) -> adamw::Step {
        let ti = t.min(i32::MAX as u64) as i32;
        let c1 = 1.0 - (cfg.beta1 as f64).powi(ti);
        let c2 = 1.0 - (cfg.beta2 as f64).powi(ti);
        adamw::Step {
            keep: 1.0 - cfg.lr * cfg.weight_decay,
            step_size: (cfg.lr as f64 / c1) as f32,
            inv_sqrt_c2: (1.0 / c2.sqrt()) as f32,
            eps: cfg.eps,
            beta1: cfg.beta1,
            one_minus_beta1: 1.0 - cfg.beta1,
            beta2: cfg.beta2,
            one_minus_beta2: 1.0 - cfg.beta2,
        }
    }
}

impl TrainBackend for GpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn dims(&self) -> BlockDims {
        self.dims
    }

    fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    fn step_scaled(&mut self, batch: &Batch<'_>, lr_scale: f32) -> Result<StepStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        self.prepare(batch)?;
        let next = self.step + 1;
        self.write_step(&cfg, next);
        self.submit(After::Update);
        self.step = next;
        self.read_stats()
    }

    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        self.prepare(batch)?;
        self.submit(After::Nothing);
        self.read_stats()
    }

    fn loss_embed(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Vec<f32>), TrainError> {
        self.prepare(batch)?;
        self.submit(After::Nothing);
        let stats = self.read_stats()?;
        let plan = self.plans.current().expect("prepared");
        let emb = self
            .ctx
            .read_f32(&plan.buffers.emb, plan.batch * self.dims.embed)?;
        Ok((stats, emb))
    }

    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError> {
        self.prepare(batch)?;
        self.submit(After::InputGradient);
        let stats = self.read_stats()?;
        let flat = self.ctx.read_f32(&self.grads, self.layout.len())?;
        let (params, other_bias) = self.layout.unflatten(&self.dims, &flat);
        let plan = self.plans.current().expect("prepared");
        let tokens = self
            .ctx
            .read_f32(&plan.buffers.dtokens, plan.batch * self.dims.tokens_len())?;
        Ok((
            stats,
            Gradients {
                params,
                other_bias,
                tokens,
            },
        ))
    }

    fn state(&mut self) -> Result<TunedState, TrainError> {
        let len = self.layout.len();
        let (params, other_bias) = self
            .layout
            .unflatten(&self.dims, &self.ctx.read_f32(&self.params, len)?);
        let (m, m_bias) = self
            .layout
            .unflatten(&self.dims, &self.ctx.read_f32(&self.m, len)?);
        let (v, v_bias) = self
            .layout
            .unflatten(&self.dims, &self.ctx.read_f32(&self.v, len)?);
        Ok(TunedState {
            params,
            other_bias,
            optim: AdamState {
                step: self.step,
                m,
                v,
                m_bias,
                v_bias,
            },
        })
    }

    /// One read of the parameter buffer; the Adam moments stay on the GPU.
    fn params(&mut self) -> Result<(BlockParams, f32), TrainError> {
        let len = self.layout.len();
        Ok(self
            .layout
            .unflatten(&self.dims, &self.ctx.read_f32(&self.params, len)?))
    }

    /// SPEC §7's step split at the embedding: the block's forward runs on the GPU (the
    /// batch's plan, without its loss kernel), the embeddings and `b` come back, and
    /// [`private_loss`] (the CPU path's own function) gives the loss
    /// and its gradients by the embeddings and by `b`. Those are written where the loss
    /// kernel would have written them (`d emb`, `b`'s entry of the gradient buffer; both
    /// overwritten each step, never accumulated), and the backward and AdamW of the block
    /// and `b` run on the GPU in a second submit. The plan is the contrastive one of
    /// `(B, |Y|)`, shared with SPEC §4 steps of that shape. The batch is checked before
    /// anything is written; a device failure before the second submit leaves the state
    /// as it was.
    fn private_step(
        &mut self,
        batch: &PrivateBatch<'_>,
        lr_scale: f32,
    ) -> Result<PrivateStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        let b = batch.check(&self.dims)?;
        check_batch_size(&self.dims, b)?;
        self.prepare(&Batch {
            tokens: batch.tokens,
            labels: batch.labels,
            text: batch.text,
            n_labels: batch.n_labels,
        })?;
        let plan = self.plans.current().expect("prepared");
        self.submit_phases("private forward", [&plan.forward]);
        let e = self.dims.embed;
        let embed = self.ctx.read_f32(&plan.buffers.emb, b * e)?;
        let bias = self.layout.bias as usize;
        let other_bias = self.ctx.read_f32_at(&self.params, bias, 1)?[0];
        let (mut stats, d_embed, d_bias) = private_loss(&self.cfg, &embed, e, batch, other_bias);
        self.ctx.write_f32(&plan.buffers.demb, 0, &d_embed);
        self.ctx.write_f32(&self.grads, bias, &[d_bias]);
        let next = self.step + 1;
        self.write_step(&cfg, next);
        self.submit_phases("private backward", [&plan.backward, &plan.update]);
        self.step = next;
        stats.step = next;
        Ok(stats)
    }

    /// The positions are drawn on the host (as on the CPU path); the masked input, the
    /// dense forward and backward, the loss and the block's AdamW run on the GPU in one
    /// submit, over the backend's own buffers (the block never leaves the GPU). The mask
    /// token, `pos` and the head are updated on the CPU, from their gradients read back
    /// after the submit: `masked` is the caller's, in host memory, so it has to come back
    /// every step anyway, and uploading the head and reading its gradient moves a third of
    /// the bytes an update on the GPU would (the head and both moments, there and back).
    /// That update is
    /// [`adamw_update_slice`], the rule of [`MaskedState`]'s own update, on this thread
    /// (the wgpu backend starts no CPU thread pool). Every input is checked before
    /// anything is written; only a device failure after the submit (its read-back) can
    /// leave the block stepped and `masked` not.
    fn masked_step(
        &mut self,
        batch: &MaskedBatch<'_>,
        masked: &mut MaskedState,
        lr_scale: f32,
    ) -> Result<MaskedStats, TrainError> {
        let cfg = self.cfg.with_lr_scale(lr_scale)?;
        let b = batch.check(&self.dims)?;
        masked.check(&self.dims)?;
        check_batch_size(&self.dims, b)?;
        let positions = mask_positions(self.dims.tokens, b, batch.seed);
        self.prepare_masked(b)?;
        let training = self.masked.current().expect("prepared");
        let plan = &training.plan;
        plan.upload(
            &self.ctx,
            &self.dims,
            &masked.head,
            batch.tokens,
            &positions,
        );
        let next = self.step + 1;
        self.write_step(&cfg, next);
        let phases = [&plan.dispatches[..], &training.update[..]];
        self.submit_phases("masked-token step", phases);
        self.step = next;
        let (loss, grads) = plan.read(&self.ctx, &self.dims)?;
        update_head(&cfg, masked, &grads);
        Ok(MaskedStats {
            loss,
            batch: b,
            step: self.step,
            head_step: masked.step,
        })
    }

    fn set_state(&mut self, state: &TunedState) -> Result<(), TrainError> {
        state.check(&self.dims)?;
        let l = &self.layout;
        self.ctx
            .write_f32(&self.params, 0, &l.flatten(&state.params, state.other_bias));
        self.ctx
            .write_f32(&self.m, 0, &l.flatten(&state.optim.m, state.optim.m_bias));
        self.ctx
            .write_f32(&self.v, 0, &l.flatten(&state.optim.v, state.optim.v_bias));
        self.step = state.optim.step;
        Ok(())
    }

    fn gpu_buffers_created(&self) -> Option<u64> {
        Some(self.buffers_created())
    }
}

/// One AdamW update of `masked`'s mask token, positional table and head by `grads`, as a
/// step of its own count, decayed as [`head_is_decayed`] says: `MaskedState::update`'s
/// rule and bits, serially.
fn update_head(cfg: &TrainConfig, masked: &mut MaskedState, grads: &MaskedHead) {
    masked.step += 1;
    let MaskedState { head, m, v, step } = masked;
    let tensors = head.tensors_mut().into_iter().zip(grads.tensors());
    let moments = m.tensors_mut().into_iter().zip(v.tensors_mut());
    for (((p, g), (m, v)), name) in tensors.zip(moments).zip(HEAD_TENSORS) {
        adamw_update_slice(
            cfg,
            *step,
            head_is_decayed(name),
            &mut p[..],
            g,
            &mut m[..],
            &mut v[..],
        );
    }
}
