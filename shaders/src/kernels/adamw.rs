//! AdamW update of one tensor in a flat parameter buffer (`adamw.wgsl`).

use crate::kernel::{check_len, grid_1d, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "adamw";
/// The WGSL source.
pub const SOURCE: &str = include_str!("adamw.wgsl");

/// Binding slots.
pub mod slot {
    /// [`Tensor`]: which range of the flat buffers, and whether it decays.
    pub const TENSOR: u32 = 0;
    /// [`Step`]: the per-step scalars (rewritten before each step).
    pub const STEP: u32 = 1;
    pub const PARAMS: u32 = 2;
    pub const GRADS: u32 = 3;
    pub const M: u32 = 4;
    pub const V: u32 = 5;
}

const WG: u32 = 256;

/// Mirror of the WGSL `Tensor` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Tensor {
    pub offset: u32,
    pub len: u32,
    /// 1 when weight decay applies.
    pub decay: u32,
    pub _pad: u32,
}

/// Mirror of the WGSL `Step` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// `1 − lr·wd`, applied to decayed tensors.
    pub keep: f32,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
    /// `1 / sqrt(1 − β2ᵗ)`.
    pub inv_sqrt_c2: f32,
    pub eps: f32,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
}

/// Flat buffers of the optimiser (same layout each).
#[derive(Clone, Copy, Debug)]
pub struct AdamBuffers<'a> {
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// Uniform holding a [`Step`].
    pub step: &'a wgpu::Buffer,
}

/// The AdamW kernel.
#[derive(Debug)]
pub struct AdamW {
    pipeline: KernelPipeline,
}

impl AdamW {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Uniform,
            Slot::ReadWrite,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ];
        Ok(AdamW {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds the update of one tensor.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        tensor: Tensor,
        b: &AdamBuffers<'_>,
    ) -> Result<Dispatch, GpuError> {
        let end = tensor.offset as u64 + tensor.len as u64;
        check_len(NAME, "params", b.params, end)?;
        check_len(NAME, "grads", b.grads, end)?;
        check_len(NAME, "m", b.m, end)?;
        check_len(NAME, "v", b.v, end)?;
        let step_bytes = std::mem::size_of::<Step>() as u64;
        if b.step.size() < step_bytes {
            return Err(GpuError::Size {
                kernel: NAME,
                binding: "step",
                expected: step_bytes,
                found: b.step.size(),
            });
        }
        let uniform = ctx.uniform(NAME, &tensor);
        let group = self
            .pipeline
            .bind_group(ctx, &[&uniform, b.step, b.params, b.grads, b.m, b.v]);
        Ok(self
            .pipeline
            .dispatch(0, group, grid_1d(tensor.len as u64, WG)))
    }
}
