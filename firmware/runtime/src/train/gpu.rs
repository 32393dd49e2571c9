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
//! `L_r` on it, with its gradients.

mod dense;
mod layers;
mod layout;
mod masked;
mod plan;

use std::sync::Arc;

use anytime_shaders::kernels::adamw;
use anytime_shaders::kernels::loss_fwd_bwd::{SampleStats, STATS_PER_SAMPLE};
use anytime_shaders::{wgpu, GpuContext, GpuError, Kernels};

pub use self::dense::GpuDense;
use self::layout::ParamLayout;
pub use self::masked::GpuMasked;
use self::plan::{LossConfig, Persistent, Plan};
use super::{
    AdamState, Batch, Gradients, MaskedBatch, MaskedState, MaskedStats, StepStats, TrainBackend,
    TrainConfig, TrainError, TunedState,
};
use crate::block::{BlockDims, FrozenHead};

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
    /// Inputs, forward activations and backward buffers of the current batch shape
    /// (0 before the first call).
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
    plan: Option<Plan>,
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
            plan: None,
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
            plan: self.plan.as_ref().map_or(0, |p| p.bytes),
        }
    }

    /// Uploads the batch into the plan for its shape (built on first use of a shape).
    fn prepare(&mut self, batch: &Batch<'_>) -> Result<(), TrainError> {
        let b = batch.check(&self.dims)?;
        let fits = self
            .plan
            .as_ref()
            .is_some_and(|p| p.batch == b && p.n_labels == batch.n_labels);
        if !fits {
            self.plan = None;
            let persistent = Persistent {
                params: &self.params,
                grads: &self.grads,
                m: &self.m,
                v: &self.v,
                head: &self.head,
                step: &self.step_uniform,
            };
            let loss = LossConfig {
                tau: self.cfg.logit_scale,
                beta: self.cfg.beta_other,
            };
            log::debug!("wgpu: plan for B = {b}, |Y| = {}", batch.n_labels);
            self.plan = Some(Plan::new(
                &self.ctx,
                &self.kernels,
                &self.dims,
                &self.layout,
                persistent,
                loss,
                b,
                batch.n_labels,
            )?);
        }
        let plan = self.plan.as_ref().expect("plan was just built");
        self.ctx.write_f32(&plan.buffers.tokens, 0, batch.tokens);
        self.ctx.write_f32(&plan.buffers.text, 0, batch.text);
        self.ctx
            .queue
            .write_buffer(&plan.buffers.labels, 0, bytemuck::cast_slice(batch.labels));
        Ok(())
    }

    /// Records the chosen phases of the prepared plan into one encoder and submits it.
    fn submit(&self, backward: bool, update: bool) {
        let plan = self.plan.as_ref().expect("prepare() runs first");
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train step"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train step"),
                timestamp_writes: None,
            });
            let phases: [(&[_], bool); 3] = [
                (&plan.forward, true),
                (&plan.backward, backward),
                (&plan.update, update),
            ];
            for (dispatches, on) in phases {
                if on {
                    dispatches.iter().for_each(|d| d.record(&mut pass));
                }
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
    }

    /// Reads the loss statistics of the last forward.
    fn read_stats(&self) -> Result<StepStats, TrainError> {
        let plan = self.plan.as_ref().expect("prepare() runs first");
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
        let uniform = Self::step_uniform_for(&cfg, next);
        self.ctx
            .queue
            .write_buffer(&self.step_uniform, 0, bytemuck::bytes_of(&uniform));
        self.submit(true, true);
        self.step = next;
        self.read_stats()
    }

    fn loss(&mut self, batch: &Batch<'_>) -> Result<StepStats, TrainError> {
        self.prepare(batch)?;
        self.submit(false, false);
        self.read_stats()
    }

    fn loss_embed(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Vec<f32>), TrainError> {
        self.prepare(batch)?;
        self.submit(false, false);
        let stats = self.read_stats()?;
        let plan = self.plan.as_ref().expect("prepared");
        let emb = self
            .ctx
            .read_f32(&plan.buffers.emb, plan.batch * self.dims.embed)?;
        Ok((stats, emb))
    }

    fn gradients(&mut self, batch: &Batch<'_>) -> Result<(StepStats, Gradients), TrainError> {
        self.prepare(batch)?;
        self.submit(true, false);
        let stats = self.read_stats()?;
        let flat = self.ctx.read_f32(&self.grads, self.layout.len())?;
        let (params, other_bias) = self.layout.unflatten(&self.dims, &flat);
        let plan = self.plan.as_ref().expect("prepared");
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

    fn masked_step(
        &mut self,
        _batch: &MaskedBatch<'_>,
        _masked: &mut MaskedState,
        _lr_scale: f32,
    ) -> Result<MaskedStats, TrainError> {
        Err(TrainError::CpuOnly {
            what: "the masked-token step (L_r)",
            backend: "wgpu",
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
}
