//! The training loss of SPEC §4 and its gradient w.r.t. the unnormalised embeddings and
//! the "other" bias (`loss_fwd_bwd.wgsl`).

use crate::kernel::{check_len, ensure, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "loss_fwd_bwd";
/// The WGSL source.
pub const SOURCE: &str = include_str!("loss_fwd_bwd.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    /// `[batch, embed]` embeddings before normalisation.
    pub const EMB: u32 = 1;
    /// `[n_labels, embed]` L2-normalised text embeddings.
    pub const TEXT: u32 = 2;
    /// `[batch]` u32 label indices.
    pub const LABELS: u32 = 3;
    /// Parameter buffer holding `b` at `other_off`.
    pub const PBUF: u32 = 4;
    /// `[batch, embed]` gradient of the mean loss w.r.t. the embeddings.
    pub const DEMB: u32 = 5;
    /// `[8·batch + batch·(n_labels + 1)]`: per-sample stats, then logits / their gradients.
    pub const SCRATCH: u32 = 6;
    /// Gradient buffer receiving `∂loss/∂b` at `db_off`.
    pub const GRADS: u32 = 7;
}

/// Per-sample stats at the start of the scratch buffer:
/// `(m1, l_y, log s1, m2, log s2, b, correct, ∂loss_r/∂b)`; see [`SampleStats`].
pub const STATS_PER_SAMPLE: usize = 8;

/// The loss terms of one sample, from its [`STATS_PER_SAMPLE`] floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleStats {
    /// `CE(y; Y ∪ {other})`.
    pub label: f64,
    /// `CE(other; (Y ∪ {other}) \ {y})`.
    pub other: f64,
    /// Whether the argmax over `Y` is the label.
    pub correct: bool,
}

impl SampleStats {
    /// Adds the loss terms in f64 (the kernel leaves the large-magnitude sums to the host).
    pub fn from_raw(s: &[f32]) -> Self {
        let f = |i: usize| s[i] as f64;
        SampleStats {
            label: (f(0) - f(1)) + f(2),
            other: (f(3) - f(5)) + f(4),
            correct: s[6] > 0.5,
        }
    }
}

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub batch: u32,
    pub n_labels: u32,
    pub embed: u32,
    pub other_off: u32,
    pub db_off: u32,
    pub tau: f32,
    pub beta: f32,
    pub inv_batch: f32,
}

/// Buffers and sizes of one loss evaluation.
#[derive(Clone, Copy, Debug)]
pub struct LossArgs<'a> {
    pub batch: u32,
    pub n_labels: u32,
    pub embed: u32,
    /// Logit scale τ.
    pub tau: f32,
    /// Weight β of the "other" term.
    pub beta: f32,
    pub emb: &'a wgpu::Buffer,
    pub text: &'a wgpu::Buffer,
    pub labels: &'a wgpu::Buffer,
    pub pbuf: &'a wgpu::Buffer,
    pub other_off: u32,
    pub demb: &'a wgpu::Buffer,
    pub scratch: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub db_off: u32,
}

/// Scratch elements a loss over `batch` samples and `n_labels` labels needs.
pub fn scratch_len(batch: usize, n_labels: usize) -> usize {
    STATS_PER_SAMPLE * batch + batch * (n_labels + 1)
}

/// The loss kernel.
#[derive(Debug)]
pub struct LossFwdBwd {
    pipeline: KernelPipeline,
}

impl LossFwdBwd {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(LossFwdBwd {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds the loss. Labels must be `< n_labels` (checked by the caller
    /// on the host before upload; the kernel does not check them).
    pub fn bind(&self, ctx: &GpuContext, a: &LossArgs<'_>) -> Result<Dispatch, GpuError> {
        ensure(NAME, a.batch > 0 && a.n_labels > 0 && a.embed > 0, || {
            "empty batch, label set or embedding".into()
        })?;
        let (b, y, e) = (a.batch as u64, a.n_labels as u64, a.embed as u64);
        check_len(NAME, "emb", a.emb, b * e)?;
        check_len(NAME, "text", a.text, y * e)?;
        check_len(NAME, "labels", a.labels, b)?;
        check_len(NAME, "pbuf", a.pbuf, a.other_off as u64 + 1)?;
        check_len(NAME, "demb", a.demb, b * e)?;
        check_len(
            NAME,
            "scratch",
            a.scratch,
            scratch_len(b as usize, y as usize) as u64,
        )?;
        check_len(NAME, "grads", a.grads, a.db_off as u64 + 1)?;
        let params = Params {
            batch: a.batch,
            n_labels: a.n_labels,
            embed: a.embed,
            other_off: a.other_off,
            db_off: a.db_off,
            tau: a.tau,
            beta: a.beta,
            inv_batch: 1.0 / a.batch as f32,
        };
        let uniform = ctx.uniform(NAME, &params);
        let group = self.pipeline.bind_group(
            ctx,
            &[
                &uniform, a.emb, a.text, a.labels, a.pbuf, a.demb, a.scratch, a.grads,
            ],
        );
        Ok(self.pipeline.dispatch(0, group, [1, 1, 1]))
    }
}
