//! The pieces the training plans are recorded from: a [`Recorder`] that binds kernels into
//! a list of dispatches, the layers ([`Linear`], [`FoldedKey`], [`LayerNorm`]) that record
//! their own forward and backward dispatches through it, and the tuned block's trainable
//! layers ([`BlockLayers`], with the MLP branch [`MlpResidual`]) shared by the CLS-only
//! step and the dense block.

use anytime_shaders::kernels::{
    col_sum::ColSumArgs,
    copy_rows::CopyArgs,
    gather_rows::GatherArgs,
    layer_norm_bwd::{LayerNormBwdArgs, ParamGrads},
    layer_norm_fwd::LayerNormFwdArgs,
    matmul::{Layout, Operand, Product},
};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError, Kernels};

use super::layout::{t, ParamLayout};
use crate::block::{BlockDims, LN_EPS};

/// `x` as a kernel's u32 size or offset (a plain cast: callers keep `x` below 2³²).
pub(super) fn u32_of(x: usize) -> u32 {
    x as u32
}

/// Rows of `cols` values packed back to back from the start of `buffer`.
pub(super) fn dense(buffer: &wgpu::Buffer, cols: usize) -> Operand<'_> {
    Operand::new(buffer, 0, u32_of(cols))
}

/// Rows starting at element `offset` of `buffer`, `stride` elements apart.
pub(super) fn strided(buffer: &wgpu::Buffer, offset: usize, stride: usize) -> Operand<'_> {
    Operand::new(buffer, u32_of(offset), u32_of(stride))
}

/// Where a result goes: `at`, overwritten or (with `accumulate`) added to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dest<T> {
    pub at: T,
    pub accumulate: bool,
}

impl<T> Dest<T> {
    /// Overwrites `at`.
    pub fn write(at: T) -> Self {
        Dest {
            at,
            accumulate: false,
        }
    }

    /// Adds to what `at` holds.
    pub fn add(at: T) -> Self {
        Dest {
            at,
            accumulate: true,
        }
    }
}

/// A matrix factor of a product and how it is stored.
#[derive(Clone, Copy, Debug)]
pub(super) struct Matrix<'b> {
    pub operand: Operand<'b>,
    pub layout: Layout,
}

impl<'b> Matrix<'b> {
    /// Stored as used.
    pub fn plain(operand: Operand<'b>) -> Self {
        Matrix {
            operand,
            layout: Layout::Plain,
        }
    }

    /// Stored transposed.
    pub fn transposed(operand: Operand<'b>) -> Self {
        Matrix {
            operand,
            layout: Layout::Transposed,
        }
    }
}

/// One product `out (+)= alpha · lhs · rhs (+ bias)`: `rows × cols`, summed over `inner`.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatMulSpec<'b> {
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub lhs: Matrix<'b>,
    pub rhs: Matrix<'b>,
    /// Added to every row (not scaled by `alpha`).
    pub bias: Option<Operand<'b>>,
    pub out: Dest<Operand<'b>>,
    pub alpha: f32,
}

/// Column sums of `rows` dense rows of `cols` values in `src`, written to the gradient
/// buffer at `grad_offset` (zeros when `rows` is 0).
#[derive(Clone, Copy, Debug)]
pub(super) struct ColSumSpec<'b> {
    pub rows: usize,
    pub cols: usize,
    pub src: &'b wgpu::Buffer,
    pub grad_offset: u32,
}

/// Binds kernels, in call order, into one list of dispatches.
#[derive(Debug)]
pub(super) struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    /// Flat trainable parameters.
    pub params: &'a wgpu::Buffer,
    /// Flat gradients, same layout as `params`.
    pub grads: &'a wgpu::Buffer,
    /// Values per row of copies and LayerNorms (`D`).
    pub width: usize,
    /// Rows every linear layer, row copy and MLP branch runs on: one CLS row per sample
    /// in the CLS-only step, every token row in the dense block.
    pub rows: usize,
    pub dispatches: Vec<Dispatch>,
}

impl Recorder<'_> {
    /// Appends `dispatches`.
    pub fn record(&mut self, dispatches: impl IntoIterator<Item = Dispatch>) {
        self.dispatches.extend(dispatches);
    }

    /// The dispatches recorded so far; the list starts empty again.
    pub fn take(&mut self) -> Vec<Dispatch> {
        std::mem::take(&mut self.dispatches)
    }

    /// Records one matrix product.
    pub fn matmul(&mut self, spec: MatMulSpec<'_>) -> Result<(), GpuError> {
        let product = Product {
            m: u32_of(spec.rows),
            n: u32_of(spec.cols),
            k: u32_of(spec.inner),
            a: spec.lhs.operand,
            a_layout: spec.lhs.layout,
            b: spec.rhs.operand,
            b_layout: spec.rhs.layout,
            bias: spec.bias,
            c: spec.out.at,
            accumulate: spec.out.accumulate,
            alpha: spec.alpha,
        };
        let dispatch = self.kernels.matmul.bind(self.ctx, &product)?;
        self.record([dispatch]);
        Ok(())
    }

    /// Records a copy of the recorder's rows of `D` values from `src` to `dst`.
    pub fn copy_rows(&mut self, src: Operand<'_>, dst: Dest<Operand<'_>>) -> Result<(), GpuError> {
        let args = CopyArgs {
            rows: u32_of(self.rows),
            cols: u32_of(self.width),
            src: src.buffer,
            s_off: src.offset,
            lds: src.stride,
            dst: dst.at.buffer,
            d_off: dst.at.offset,
            ldd: dst.at.stride,
            accumulate: dst.accumulate,
        };
        let dispatch = self.kernels.copy_rows.bind(self.ctx, &args)?;
        self.record([dispatch]);
        Ok(())
    }

    /// Records `dst row i (+)= src row index[i]` for `rows` rows of `D` values (a row of
    /// zeros where `index[i] ≥ src_rows`).
    pub fn gather_rows(
        &mut self,
        rows: usize,
        src: Operand<'_>,
        src_rows: usize,
        index: &wgpu::Buffer,
        dst: Dest<Operand<'_>>,
    ) -> Result<(), GpuError> {
        let args = GatherArgs {
            rows: u32_of(rows),
            cols: u32_of(self.width),
            src,
            src_rows: u32_of(src_rows),
            index,
            dst: dst.at,
            accumulate: dst.accumulate,
        };
        let dispatch = self.kernels.gather_rows.bind(self.ctx, &args)?;
        self.record([dispatch]);
        Ok(())
    }

    /// Records column sums into the gradient buffer.
    pub fn colsum(&mut self, spec: ColSumSpec<'_>) -> Result<(), GpuError> {
        let args = ColSumArgs {
            rows: u32_of(spec.rows),
            cols: u32_of(spec.cols),
            src: spec.src,
            s_off: 0,
            lds: u32_of(spec.cols),
            dst: self.grads,
            d_off: spec.grad_offset,
            accumulate: false,
        };
        let dispatch = self.kernels.col_sum.bind(self.ctx, &args)?;
        self.record([dispatch]);
        Ok(())
    }
}

/// A trainable `y = x·Wᵀ + b` over the recorder's rows: `W` stored
/// `[outputs, inputs]` at element `weight` of the parameter buffer, `b` at `bias`; their
/// gradients go to the same offsets of the gradient buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Linear {
    pub weight: u32,
    pub bias: u32,
    pub inputs: usize,
    pub outputs: usize,
}

impl Linear {
    /// Output features `first..first + count` of this layer, as a layer of their own.
    pub fn slice(self, first: usize, count: usize) -> Linear {
        Linear {
            weight: self.weight + u32_of(first * self.inputs),
            bias: self.bias + u32_of(first),
            inputs: self.inputs,
            outputs: count,
        }
    }

    /// `W` in `buffer` (parameters, or gradients at the same offset).
    fn weight_in<'b>(&self, buffer: &'b wgpu::Buffer) -> Operand<'b> {
        Operand::new(buffer, self.weight, u32_of(self.inputs))
    }

    /// Records `y (+)= x·Wᵀ + b`.
    pub fn forward(
        &self,
        rec: &mut Recorder<'_>,
        x: Operand<'_>,
        y: Dest<Operand<'_>>,
    ) -> Result<(), GpuError> {
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: self.outputs,
            inner: self.inputs,
            lhs: Matrix::plain(x),
            rhs: Matrix::transposed(self.weight_in(rec.params)),
            bias: Some(Operand::new(rec.params, self.bias, 0)),
            out: y,
            alpha: 1.0,
        })
    }

    /// Records `dW = dyᵀ·x`, `db = Σ_rows dy` and `dx (+)= dy·W`, in that order; `dy` must
    /// be dense (`outputs` values per row from offset 0).
    pub fn backward(
        &self,
        rec: &mut Recorder<'_>,
        x: Operand<'_>,
        dy: Operand<'_>,
        dx: Dest<Operand<'_>>,
    ) -> Result<(), GpuError> {
        debug_assert!(dy.offset == 0 && dy.stride == u32_of(self.outputs));
        self.weight_grad(rec, x, dy)?;
        self.bias_grad(rec, dy.buffer)?;
        self.input_grad(rec, dy, dx)
    }

    /// Records `dW = dyᵀ·x` into the gradient buffer.
    pub fn weight_grad(
        &self,
        rec: &mut Recorder<'_>,
        x: Operand<'_>,
        dy: Operand<'_>,
    ) -> Result<(), GpuError> {
        rec.matmul(MatMulSpec {
            rows: self.outputs,
            cols: self.inputs,
            inner: rec.rows,
            lhs: Matrix::transposed(dy),
            rhs: Matrix::plain(x),
            bias: None,
            out: Dest::write(self.weight_in(rec.grads)),
            alpha: 1.0,
        })
    }

    /// Records `db = Σ_rows dy` into the gradient buffer; `dy` holds dense rows of
    /// `outputs` values.
    pub fn bias_grad(&self, rec: &mut Recorder<'_>, dy: &wgpu::Buffer) -> Result<(), GpuError> {
        rec.colsum(ColSumSpec {
            rows: rec.rows,
            cols: self.outputs,
            src: dy,
            grad_offset: self.bias,
        })
    }

    /// Records `dx (+)= dy·W`.
    pub fn input_grad(
        &self,
        rec: &mut Recorder<'_>,
        dy: Operand<'_>,
        dx: Dest<Operand<'_>>,
    ) -> Result<(), GpuError> {
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: self.inputs,
            inner: self.outputs,
            lhs: Matrix::plain(dy),
            rhs: Matrix::plain(self.weight_in(rec.params)),
            bias: None,
            out: dx,
            alpha: 1.0,
        })
    }
}

/// One head's key projection folded into its query: `q̃ = s·q·W_k` takes the head's query
/// `q` (`key.outputs` wide) to a `key.inputs`-wide vector scored against the tokens. The
/// key bias cancels in the softmax, so it is never read.
#[derive(Clone, Copy, Debug)]
pub(super) struct FoldedKey {
    pub key: Linear,
    /// The attention scale `s`.
    pub scale: f32,
}

impl FoldedKey {
    /// Records `q̃ = s·q·W_k`.
    pub fn forward(
        &self,
        rec: &mut Recorder<'_>,
        query: Operand<'_>,
        folded: Operand<'_>,
    ) -> Result<(), GpuError> {
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: self.key.inputs,
            inner: self.key.outputs,
            lhs: Matrix::plain(query),
            rhs: Matrix::plain(self.key.weight_in(rec.params)),
            bias: None,
            out: Dest::write(folded),
            alpha: self.scale,
        })
    }

    /// Records `dW_k = s·qᵀ·dq̃` into the gradient buffer, then `dq = s·dq̃·W_kᵀ`.
    pub fn backward(
        &self,
        rec: &mut Recorder<'_>,
        query: Operand<'_>,
        d_folded: Operand<'_>,
        d_query: Operand<'_>,
    ) -> Result<(), GpuError> {
        rec.matmul(MatMulSpec {
            rows: self.key.outputs,
            cols: self.key.inputs,
            inner: rec.rows,
            lhs: Matrix::transposed(query),
            rhs: Matrix::plain(d_folded),
            bias: None,
            out: Dest::write(self.key.weight_in(rec.grads)),
            alpha: self.scale,
        })?;
        rec.matmul(MatMulSpec {
            rows: rec.rows,
            cols: self.key.outputs,
            inner: self.key.inputs,
            lhs: Matrix::plain(d_folded),
            rhs: Matrix::transposed(self.key.weight_in(rec.params)),
            bias: None,
            out: Dest::write(d_query),
            alpha: self.scale,
        })
    }
}

/// What a LayerNorm's forward reads and saves for its backward: `rows` dense rows of `D`
/// values in `input`, and their `(mean, rstd)` in `stats`.
#[derive(Clone, Copy, Debug)]
pub(super) struct NormRows<'b> {
    pub rows: usize,
    pub input: &'b wgpu::Buffer,
    pub stats: &'b wgpu::Buffer,
}

/// A LayerNorm over rows of `D` values, scale at element `weight` and shift at `bias` of
/// `buffer`. A trainable one writes its gradients at the same offsets of the gradient
/// buffer; a frozen one only passes the gradient through.
#[derive(Clone, Copy, Debug)]
pub(super) struct LayerNorm<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub weight: u32,
    pub bias: u32,
    pub trainable: bool,
}

impl LayerNorm<'_> {
    /// Records `output = LN(input)`, saving the row statistics.
    pub fn forward(
        &self,
        rec: &mut Recorder<'_>,
        norm: &NormRows<'_>,
        output: &wgpu::Buffer,
    ) -> Result<(), GpuError> {
        let args = LayerNormFwdArgs {
            rows: u32_of(norm.rows),
            width: u32_of(rec.width),
            eps: LN_EPS,
            x: norm.input,
            wb: self.buffer,
            w_off: self.weight,
            b_off: self.bias,
            y: output,
            stats: norm.stats,
        };
        let dispatch = rec.kernels.layer_norm_fwd.bind(rec.ctx, &args)?;
        rec.record([dispatch]);
        Ok(())
    }

    /// Records `d_input (+)= ∂LN/∂input · d_output`, then (trainable only) the scale and
    /// shift gradients.
    pub fn backward(
        &self,
        rec: &mut Recorder<'_>,
        norm: &NormRows<'_>,
        d_output: &wgpu::Buffer,
        d_input: Dest<&wgpu::Buffer>,
    ) -> Result<(), GpuError> {
        let dispatches = self.bind_backward(rec, norm, d_output, d_input)?;
        rec.record(dispatches);
        Ok(())
    }

    /// [`LayerNorm::backward`] in two halves, as the kernel computes them (two dispatches
    /// that read the same inputs and write apart): records the scale and shift gradients
    /// (trainable only) and returns the `d_input` dispatch unrecorded, for a caller that
    /// needs the input gradient only in some calls.
    pub fn backward_params_first(
        &self,
        rec: &mut Recorder<'_>,
        norm: &NormRows<'_>,
        d_output: &wgpu::Buffer,
        d_input: Dest<&wgpu::Buffer>,
    ) -> Result<Dispatch, GpuError> {
        let mut dispatches = self
            .bind_backward(rec, norm, d_output, d_input)?
            .into_iter();
        let dx = dispatches
            .next()
            .expect("layer_norm_bwd binds the input gradient first");
        rec.record(dispatches);
        Ok(dx)
    }

    /// The input-gradient dispatch, then (trainable only) the parameter-gradient one.
    fn bind_backward(
        &self,
        rec: &Recorder<'_>,
        norm: &NormRows<'_>,
        d_output: &wgpu::Buffer,
        d_input: Dest<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let grads = self.trainable.then_some(ParamGrads {
            buffer: rec.grads,
            dw_off: self.weight,
            db_off: self.bias,
        });
        let args = LayerNormBwdArgs {
            rows: u32_of(norm.rows),
            width: u32_of(rec.width),
            x: norm.input,
            wb: self.buffer,
            w_off: self.weight,
            stats: norm.stats,
            dy: d_output,
            dx: d_input.at,
            accumulate: d_input.accumulate,
            grads,
        };
        rec.kernels.layer_norm_bwd.bind(rec.ctx, &args)
    }
}

/// The attention's score scale `1/sqrt(head_dim)`, as the CPU path computes it.
pub(super) fn score_scale(dims: &BlockDims) -> f32 {
    1.0 / (dims.head_dim() as f32).sqrt()
}

/// The tuned block's trainable layers at their offsets in the flat parameter buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockLayers<'a> {
    pub ln1: LayerNorm<'a>,
    /// `in_proj`: `3D` outputs, the queries, keys and values in that order.
    pub in_proj: Linear,
    pub out_proj: Linear,
    /// LN2, the MLP and the second residual.
    pub mlp: MlpResidual<'a>,
}

impl<'a> BlockLayers<'a> {
    /// The layers of `dims` at the offsets of `layout` in `params`.
    pub fn new(dims: &BlockDims, layout: &ParamLayout, params: &'a wgpu::Buffer) -> Self {
        let (width, hidden) = (dims.width, dims.mlp);
        let at = |tensor: usize| layout.offsets[tensor];
        let norm = |weight: usize, bias: usize| LayerNorm {
            buffer: params,
            weight: at(weight),
            bias: at(bias),
            trainable: true,
        };
        let linear = |weight: usize, bias: usize, inputs: usize, outputs: usize| Linear {
            weight: at(weight),
            bias: at(bias),
            inputs,
            outputs,
        };
        BlockLayers {
            ln1: norm(t::LN1_W, t::LN1_B),
            in_proj: linear(t::IN_W, t::IN_B, width, 3 * width),
            out_proj: linear(t::OUT_W, t::OUT_B, width, width),
            mlp: MlpResidual {
                ln2: norm(t::LN2_W, t::LN2_B),
                fc: linear(t::FC_W, t::FC_B, width, hidden),
                proj: linear(t::CPROJ_W, t::CPROJ_B, hidden, width),
            },
        }
    }
}

/// The block's second residual branch over the recorder's rows:
/// `y = x + QuickGELU(LN2(x)·W_fcᵀ + b_fc)·W_cpᵀ + b_cp`.
#[derive(Clone, Copy, Debug)]
pub(super) struct MlpResidual<'a> {
    pub ln2: LayerNorm<'a>,
    pub fc: Linear,
    pub proj: Linear,
}

/// What [`MlpResidual`]'s forward reads (`x`) and writes, dense rows: `x`, `h = LN2(x)`
/// and `y` of `D` values, `fc` (pre-activation) and `act` of `M`; `stats` LN2's.
#[derive(Clone, Copy, Debug)]
pub(super) struct MlpActivations<'b> {
    pub x: &'b wgpu::Buffer,
    pub stats: &'b wgpu::Buffer,
    pub h: &'b wgpu::Buffer,
    pub fc: &'b wgpu::Buffer,
    pub act: &'b wgpu::Buffer,
    pub y: &'b wgpu::Buffer,
}

/// [`MlpResidual`]'s backward buffers, dense rows: `dy` (read), `dx` (written), and the
/// scratch `dact`, `dfc` (`M` values) and `dh` (`D`).
#[derive(Clone, Copy, Debug)]
pub(super) struct MlpGradients<'b> {
    pub dy: &'b wgpu::Buffer,
    pub dact: &'b wgpu::Buffer,
    pub dfc: &'b wgpu::Buffer,
    pub dh: &'b wgpu::Buffer,
    pub dx: &'b wgpu::Buffer,
}

impl MlpResidual<'_> {
    fn norm_rows<'b>(rec: &Recorder<'_>, a: &MlpActivations<'b>) -> NormRows<'b> {
        NormRows {
            rows: rec.rows,
            input: a.x,
            stats: a.stats,
        }
    }

    /// Records `y = x + MLP(LN2(x))`, saving what the backward reads.
    pub fn forward(&self, rec: &mut Recorder<'_>, a: &MlpActivations<'_>) -> Result<(), GpuError> {
        let (width, hidden) = (self.fc.inputs, self.fc.outputs);
        self.ln2.forward(rec, &Self::norm_rows(rec, a), a.h)?;
        let (h, fc) = (dense(a.h, width), dense(a.fc, hidden));
        self.fc.forward(rec, h, Dest::write(fc))?;
        let n_hidden = u32_of(rec.rows * hidden);
        let gelu = rec
            .kernels
            .quick_gelu_fwd
            .bind(rec.ctx, n_hidden, a.fc, a.act)?;
        rec.record([gelu]);
        let (x, y) = (dense(a.x, width), dense(a.y, width));
        rec.copy_rows(x, Dest::write(y))?;
        self.proj.forward(rec, dense(a.act, hidden), Dest::add(y))
    }

    /// Records the branch's parameter gradients and `dx = dy + ∂MLP(LN2(x))/∂x · dy`.
    pub fn backward(
        &self,
        rec: &mut Recorder<'_>,
        a: &MlpActivations<'_>,
        g: &MlpGradients<'_>,
    ) -> Result<(), GpuError> {
        let (width, hidden) = (self.fc.inputs, self.fc.outputs);
        let (act, dact, dy) = (
            dense(a.act, hidden),
            dense(g.dact, hidden),
            dense(g.dy, width),
        );
        self.proj.backward(rec, act, dy, Dest::write(dact))?;
        let n_hidden = u32_of(rec.rows * hidden);
        let gelu = rec
            .kernels
            .quick_gelu_bwd
            .bind(rec.ctx, n_hidden, a.fc, g.dact, g.dfc)?;
        rec.record([gelu]);
        let (h, dh) = (dense(a.h, width), dense(g.dh, width));
        self.fc
            .backward(rec, h, dense(g.dfc, hidden), Dest::write(dh))?;
        rec.copy_rows(dy, Dest::write(dense(g.dx, width)))?;
        self.ln2
            .backward(rec, &Self::norm_rows(rec, a), g.dh, Dest::add(g.dx))
    }
}
