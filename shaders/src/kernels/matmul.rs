//! Matrix product with transposed variants, optional bias and accumulation
//! (`matmul.wgsl`).

use crate::kernel::{check_len, ensure, span, KernelPipeline, Slot};
use crate::{Dispatch, GpuContext, GpuError};

/// Kernel name (error messages, labels).
pub const NAME: &str = "matmul";
/// The WGSL source.
pub const SOURCE: &str = include_str!("matmul.wgsl");

/// Binding slots.
pub mod slot {
    pub const PARAMS: u32 = 0;
    pub const A: u32 = 1;
    pub const B: u32 = 2;
    pub const BIAS: u32 = 3;
    pub const C: u32 = 4;
}

const FLAG_TRANS_A: u32 = 1;
const FLAG_TRANS_B: u32 = 2;
const FLAG_ACCUMULATE: u32 = 4;
const FLAG_BIAS: u32 = 8;
const BLOCK: u32 = 32;

/// Mirror of the WGSL `Params` uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub a_off: u32,
    pub lda: u32,
    pub b_off: u32,
    pub ldb: u32,
    pub c_off: u32,
    pub ldc: u32,
    pub bias_off: u32,
    pub alpha: f32,
}

/// How `A` or `B` is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As used: `A` is `[m, k]`, `B` is `[k, n]`.
    Plain,
    /// Transposed: `A` stored `[k, m]`, `B` stored `[n, k]`.
    Transposed,
}

/// A strided operand: element offset and row stride in its buffer.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u32,
    pub stride: u32,
}

impl<'a> Operand<'a> {
    /// An operand at `offset` with row stride `stride`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u32, stride: u32) -> Self {
        Operand {
            buffer,
            offset,
            stride,
        }
    }
}

/// One product `C[m×n] (+)= alpha · op(A) · op(B) (+ bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Product<'a> {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a: Operand<'a>,
    pub a_layout: Layout,
    pub b: Operand<'a>,
    pub b_layout: Layout,
    /// `bias[offset + j]` added to column `j` (stride ignored).
    pub bias: Option<Operand<'a>>,
    pub c: Operand<'a>,
    /// Add to `C` instead of overwriting it.
    pub accumulate: bool,
    /// Scale of the product (not of the bias or of the accumulated `C`); usually 1.
    pub alpha: f32,
}

/// The matmul kernel (pipeline built once).
#[derive(Debug)]
pub struct Matmul {
    pipeline: KernelPipeline,
}

impl Matmul {
    /// Builds the pipeline.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let slots = [
            Slot::Uniform,
            Slot::Read,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
        ];
        Ok(Matmul {
            pipeline: KernelPipeline::build(ctx, NAME, SOURCE, &slots, &["main"])?,
        })
    }

    /// Checks sizes and binds one product. `C`'s buffer must differ from the others.
    pub fn bind(&self, ctx: &GpuContext, pr: &Product<'_>) -> Result<Dispatch, GpuError> {
        let (m, n, k) = (pr.m, pr.n, pr.k);
        let (a_rows, a_cols) = match pr.a_layout {
            Layout::Plain => (m, k),
            Layout::Transposed => (k, m),
        };
        let (b_rows, b_cols) = match pr.b_layout {
            Layout::Plain => (k, n),
            Layout::Transposed => (n, k),
        };
        ensure(NAME, a_cols <= pr.a.stride || a_rows <= 1, || {
            format!("A row stride {} below its {} columns", pr.a.stride, a_cols)
        })?;
        ensure(NAME, b_cols <= pr.b.stride || b_rows <= 1, || {
            format!("B row stride {} below its {} columns", pr.b.stride, b_cols)
        })?;
        ensure(NAME, n <= pr.c.stride || m <= 1, || {
            format!("C row stride {} below its {} columns", pr.c.stride, n)
        })?;
        check_len(
            NAME,
            "a",
            pr.a.buffer,
            span(pr.a.offset, a_rows, a_cols, pr.a.stride),
        )?;
        check_len(
            NAME,
            "b",
            pr.b.buffer,
            span(pr.b.offset, b_rows, b_cols, pr.b.stride),
        )?;
        check_len(NAME, "c", pr.c.buffer, span(pr.c.offset, m, n, pr.c.stride))?;
        if let Some(bias) = &pr.bias {
            check_len(NAME, "bias", bias.buffer, span(bias.offset, 1, n, n))?;
        }
        let mut flags = 0;
        if pr.a_layout == Layout::Transposed {
            flags |= FLAG_TRANS_A;
        }
        if pr.b_layout == Layout::Transposed {
            flags |= FLAG_TRANS_B;
        }
        if pr.accumulate {
            flags |= FLAG_ACCUMULATE;
        }
        if pr.bias.is_some() {
            flags |= FLAG_BIAS;
        }
        let params = Params {
            m,
            n,
            k,
            flags,
            a_off: pr.a.offset,
            lda: pr.a.stride,
            b_off: pr.b.offset,
            ldb: pr.b.stride,
            c_off: pr.c.offset,
            ldc: pr.c.stride,
            bias_off: pr.bias.map_or(0, |b| b.offset),
            alpha: pr.alpha,
        };
        let uniform = ctx.uniform(NAME, &params);
        let bias = pr.bias.map_or(pr.b.buffer, |b| b.buffer);
        let group = self.pipeline.bind_group(
            ctx,
            &[&uniform, pr.a.buffer, pr.b.buffer, bias, pr.c.buffer],
        );
        Ok(self
            .pipeline
            .dispatch(0, group, [n.div_ceil(BLOCK), m.div_ceil(BLOCK), 1]))
    }
}
