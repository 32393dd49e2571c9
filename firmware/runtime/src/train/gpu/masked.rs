//! SPEC §8's masked-token loss `L_r` on the GPU, as [`crate::train::masked_gradients`]
//! computes it on the CPU: the mask token plus its position's row of the positional table
//! (`mask_token + pos[j−1]` at patch position `j`) put in at the masked positions, the dense
//! block, the linear head on the block's output there, the squared error against the
//! per-token normalised original tokens, and every gradient (block tensors, mask token,
//! `pos`, `W_r`, `b_r`).
//!
//! The mask token and the table are parameters (the head buffer holds mask token, `pos`,
//! `W_r`, `b_r`, in [`MaskedHead::tensors`] order), so the masked input is gathered on the
//! GPU: the tokens sit in a buffer with the mask token as one extra row, each input row is
//! gathered from its token or from that row, and the table's rows are then gathered and
//! added at the masked rows (a row of zeros elsewhere). The table's gradient goes the other
//! way: the input gradients at the masked rows are gathered into one `[N−1, D]` block per
//! image (zero rows for the positions it does not mask), and the blocks are summed over the
//! batch. The host only uploads the positions' row maps.
//!
//! A [`MaskedPlan`] binds the block buffers it is lent: [`GpuMasked`]'s own, or the
//! training backend's, whose AdamW then reads the block gradients where the plan writes
//! them (see `GpuBackend`'s `masked_step`).

use std::sync::Arc;

use anytime_shaders::kernels::{copy_rows::CopyArgs, gather_rows::NONE, mse_fwd_bwd::MseArgs};
use anytime_shaders::{wgpu, Dispatch, GpuContext, GpuError};

use super::dense::{BlockBuffers, DensePlan, GpuDense};
use super::layers::{
    dense, strided, u32_of, ColSumSpec, Dest, LayerNorm, Linear, NormRows, Recorder,
};
use crate::block::{BlockDims, BlockParams};
use crate::train::{MaskedGradients, MaskedHead, TrainError};

/// The buffers and dispatches of `L_r` for `batch` images with `masked` positions each,
/// over a block's parameter and gradient buffers ([`BlockBuffers`]; its block gradients
/// are overwritten), with the head's own parameter and gradient buffers.
#[derive(Debug)]
pub(crate) struct MaskedPlan {
    pub batch: usize,
    pub masked: usize,
    dense: DensePlan,
    /// Mask token, `pos`, `W_r`, `b_r`, flat ([`MaskedHead::tensors`] order), written
    /// before each call.
    head: wgpu::Buffer,
    /// Their gradients, same layout.
    head_grads: wgpu::Buffer,
    /// `[R + 1, D]`: the input tokens, then the mask token.
    orig: wgpu::Buffer,
    /// `[R]` u32: each input row's row of `orig` (`R`, the mask token, where masked).
    input_map: wgpu::Buffer,
    /// `[B·K]` u32: the masked rows `b·N + t`.
    masked_rows: wgpu::Buffer,
    /// `[R]` u32: each output row's masked slot, or `NONE` (its gradient is zero).
    out_map: wgpu::Buffer,
    /// `[R]` u32: each input row's row of `pos` (`t − 1` at a masked row `b·N + t`), or
    /// `NONE` (nothing added).
    pos_map: wgpu::Buffer,
    /// `[B·(N−1)]` u32: at `b·(N−1) + t − 1`, the row `b·N + t` when image `b` masks
    /// position `t`, else `NONE`.
    pos_grad_map: wgpu::Buffer,
    /// `[B·K]` per-row squared errors.
    row_sq: wgpu::Buffer,
    scratch: HeadBuffers,
    /// Forward, loss and backward, in order: every block gradient (overwritten), the
    /// head's gradients and the per-row errors.
    pub dispatches: Vec<Dispatch>,
    /// Bytes of the plan's buffers (the dense plan's included).
    pub bytes: u64,
}

/// The scratch buffers of the head and the loss, `[B·K, D]` unless noted.
#[derive(Debug)]
struct HeadBuffers {
    /// LayerNorm without affine: scale ones then shift zeros, `[2D]`.
    identity: wgpu::Buffer,
    target_raw: wgpu::Buffer,
    /// `[B·K, 2]`.
    target_stats: wgpu::Buffer,
    target: wgpu::Buffer,
    y: wgpu::Buffer,
    pred: wgpu::Buffer,
    dpred: wgpu::Buffer,
    dy: wgpu::Buffer,
    d_masked: wgpu::Buffer,
    /// `[B·(N−1), D]`: per image, the input gradient at each masked position's row of
    /// `pos` (zero rows for the positions it does not mask).
    d_pos_rows: wgpu::Buffer,
}

impl MaskedPlan {
    /// Allocates and records everything for `batch` images and `masked` positions each.
    pub(crate) fn new(
        block: &BlockBuffers<'_>,
        batch: usize,
        masked: usize,
    ) -> Result<Self, GpuError> {
        let (ctx, dims) = (block.ctx, block.dims);
        let width = dims.width;
        let rows = batch * dims.tokens;
        let count = batch * masked;
        let patch_rows = batch * (dims.tokens - 1);
        log::debug!("wgpu: masked-token plan for B = {batch}, K = {masked}");
        let dense_plan = DensePlan::new(block, batch)?;
        let zeroed = |label: &str, len: usize| ctx.storage_zeroed(label, len);
        let mut identity = vec![1.0f32; width];
        identity.resize(2 * width, 0.0);
        let scratch = HeadBuffers {
            identity: ctx.storage_init("masked identity norm", &identity),
            target_raw: zeroed("masked originals", count * width),
            target_stats: zeroed("masked target stats", 2 * count),
            target: zeroed("masked targets", count * width),
            y: zeroed("masked outputs", count * width),
            pred: zeroed("masked predictions", count * width),
            dpred: zeroed("masked d pred", count * width),
            dy: zeroed("masked d outputs", count * width),
            d_masked: zeroed("masked d tokens", count * width),
            d_pos_rows: zeroed("masked d pos per image", patch_rows * width),
        };
        let mut plan = MaskedPlan {
            batch,
            masked,
            head: zeroed("masked head", head_len(dims)),
            head_grads: zeroed("masked head grads", head_len(dims)),
            orig: zeroed("masked tokens", (rows + 1) * width),
            input_map: zeroed("masked input map", rows),
            masked_rows: zeroed("masked rows", count),
            out_map: zeroed("masked output map", rows),
            pos_map: zeroed("masked pos map", rows),
            pos_grad_map: zeroed("masked pos gradient map", patch_rows),
            row_sq: zeroed("masked row errors", count),
            scratch,
            dispatches: Vec::new(),
            bytes: 0,
            dense: dense_plan,
        };
        plan.dispatches = plan.record(block)?;
        plan.bytes = plan.buffer_bytes();
        Ok(plan)
    }

    /// Binds every dispatch of one evaluation of `L_r` and its gradients.
    fn record(&self, block: &BlockBuffers<'_>) -> Result<Vec<Dispatch>, GpuError> {
        let g = block;
        let head = &Head {
            params: &self.head,
            grads: &self.head_grads,
            pos: g.dims.width,
            linear: head_linear(g.dims),
        };
        let (width, s) = (g.dims.width, &self.scratch);
        let rows = self.batch * g.dims.tokens;
        let count = self.batch * self.masked;
        let patches = g.dims.tokens - 1;
        let d = &self.dense.buffers;
        let mut rec = Recorder {
            ctx: g.ctx,
            kernels: g.kernels,
            params: head.params,
            grads: head.grads,
            width,
            rows: count,
            dispatches: Vec::new(),
        };
        // The mask token into the row after the tokens; the block's input gathered, then
        // `pos`'s rows added at the masked rows.
        let mask_token = g.kernels.copy_rows.bind(
            g.ctx,
            &CopyArgs {
                rows: 1,
                cols: u32_of(width),
                src: head.params,
                s_off: 0,
                lds: u32_of(width),
                dst: &self.orig,
                d_off: u32_of(rows * width),
                ldd: u32_of(width),
                accumulate: false,
            },
        )?;
        rec.record([mask_token]);
        let orig = dense(&self.orig, width);
        let input = dense(&d.tokens, width);
        rec.gather_rows(rows, orig, rows + 1, &self.input_map, Dest::write(input))?;
        let pos = strided(head.params, head.pos, width);
        rec.gather_rows(rows, pos, patches, &self.pos_map, Dest::add(input))?;
        // Targets: the original masked tokens, normalised without affine.
        let raw = Dest::write(dense(&s.target_raw, width));
        rec.gather_rows(count, orig, rows, &self.masked_rows, raw)?;
        let identity = LayerNorm {
            buffer: &s.identity,
            weight: 0,
            bias: u32_of(width),
            trainable: false,
        };
        let norm = NormRows {
            rows: count,
            input: &s.target_raw,
            stats: &s.target_stats,
        };
        identity.forward(&mut rec, &norm, &s.target)?;
        let mut out = rec.take();
        out.extend(self.dense.forward.iter().cloned());
        // y = the block's output at the masked rows; pred = y·W_rᵀ + b_r.
        let y = dense(&s.y, width);
        rec.gather_rows(
            count,
            dense(&d.out, width),
            rows,
            &self.masked_rows,
            Dest::write(y),
        )?;
        head.linear
            .forward(&mut rec, y, Dest::write(dense(&s.pred, width)))?;
        let mse = g.kernels.mse_fwd_bwd.bind(
            g.ctx,
            &MseArgs {
                rows: u32_of(count),
                cols: u32_of(width),
                scale: (2.0 / (count * width) as f64) as f32,
                pred: &s.pred,
                target: &s.target,
                grad: &s.dpred,
                row_sq: &self.row_sq,
            },
        )?;
        rec.record([mse]);
        // W_r, b_r and d y; d out is d y at the masked rows, zero elsewhere.
        let (dpred, dy) = (dense(&s.dpred, width), dense(&s.dy, width));
        head.linear.backward(&mut rec, y, dpred, Dest::write(dy))?;
        let d_out = Dest::write(dense(&d.d_out, width));
        rec.gather_rows(rows, dy, count, &self.out_map, d_out)?;
        out.extend(rec.take());
        out.extend(self.dense.backward.iter().cloned());
        // The mask token's gradient: the input gradient summed over the masked rows.
        let d_masked = Dest::write(dense(&s.d_masked, width));
        let d_tokens = dense(&d.d_tokens, width);
        rec.gather_rows(count, d_tokens, rows, &self.masked_rows, d_masked)?;
        rec.colsum(ColSumSpec {
            rows: count,
            cols: width,
            src: &s.d_masked,
            grad_offset: 0,
        })?;
        // `pos`'s gradient: per image, the input gradients at its masked positions' rows of
        // `pos`; then those `[N−1, D]` blocks summed over the batch.
        let d_pos_rows = Dest::write(dense(&s.d_pos_rows, width));
        let patch_rows = self.batch * patches;
        rec.gather_rows(patch_rows, d_tokens, rows, &self.pos_grad_map, d_pos_rows)?;
        rec.colsum(ColSumSpec {
            rows: self.batch,
            cols: patches * width,
            src: &s.d_pos_rows,
            grad_offset: u32_of(head.pos),
        })?;
        out.extend(rec.take());
        Ok(out)
    }

    /// Whether the plan is for `batch` images with `masked` positions each.
    pub(crate) fn fits(&self, batch: usize, masked: usize) -> bool {
        self.batch == batch && self.masked == masked
    }

    /// Bytes of every buffer the plan allocated.
    fn buffer_bytes(&self) -> u64 {
        let s = &self.scratch;
        let own = [
            &self.head,
            &self.head_grads,
            &self.orig,
            &self.input_map,
            &self.masked_rows,
            &self.out_map,
            &self.pos_map,
            &self.pos_grad_map,
            &self.row_sq,
            &s.identity,
            &s.target_raw,
            &s.target_stats,
            &s.target,
            &s.y,
            &s.pred,
            &s.dpred,
            &s.dy,
            &s.d_masked,
            &s.d_pos_rows,
        ];
        self.dense.bytes + own.into_iter().map(wgpu::Buffer::size).sum::<u64>()
    }

    /// Writes the inputs of the next run: `head`, the `[B, N, D]` `tokens` and the row
    /// maps of `positions` (`[B, K]`, each image's increasing in `1..N`, checked by the
    /// caller). Staged until the next submit.
    pub(crate) fn upload(
        &self,
        ctx: &GpuContext,
        dims: &BlockDims,
        head: &MaskedHead,
        tokens: &[f32],
        positions: &[usize],
    ) {
        let flat: Vec<f32> = head.tensors().concat();
        ctx.write_f32(&self.head, 0, &flat);
        ctx.write_f32(&self.orig, 0, tokens);
        self.upload_positions(ctx, dims.tokens, positions);
    }

    /// After a run: `L_r` (the mean squared error over the masked rows, summed in f64)
    /// and the gradients of the mask token, `pos` and the head. Waits for the run.
    pub(crate) fn read(
        &self,
        ctx: &GpuContext,
        dims: &BlockDims,
    ) -> Result<(f64, MaskedHead), TrainError> {
        let count = self.batch * self.masked;
        let row_sq = ctx.read_f32(&self.row_sq, count)?;
        let loss = row_sq.iter().map(|&v| v as f64).sum::<f64>() / (count * dims.width) as f64;
        let flat = ctx.read_f32(&self.head_grads, head_len(dims))?;
        let mut g = MaskedHead::zeros(dims);
        let mut at = 0;
        for t in g.tensors_mut() {
            let len = t.len();
            t.copy_from_slice(&flat[at..at + len]);
            at += len;
        }
        Ok((loss, g))
    }

    /// Uploads the row maps of `positions` (`[B, K]`, checked).
    fn upload_positions(&self, ctx: &GpuContext, tokens: usize, positions: &[usize]) {
        let rows = self.batch * tokens;
        let mut input_map: Vec<u32> = (0..u32_of(rows)).collect();
        let mut out_map = vec![NONE; rows];
        let mut pos_map = vec![NONE; rows];
        let mut pos_grad_map = vec![NONE; self.batch * (tokens - 1)];
        let masked_rows: Vec<u32> = positions
            .chunks_exact(self.masked)
            .enumerate()
            .flat_map(|(b, row)| row.iter().map(move |&t| u32_of(b * tokens + t)))
            .collect();
        for (slot, &r) in masked_rows.iter().enumerate() {
            let (b, t) = (r as usize / tokens, r as usize % tokens);
            input_map[r as usize] = u32_of(rows);
            out_map[r as usize] = u32_of(slot);
            pos_map[r as usize] = u32_of(t - 1);
            pos_grad_map[b * (tokens - 1) + t - 1] = r;
        }
        for (buffer, data) in [
            (&self.input_map, &input_map),
            (&self.masked_rows, &masked_rows),
            (&self.out_map, &out_map),
            (&self.pos_map, &pos_map),
            (&self.pos_grad_map, &pos_grad_map),
        ] {
            ctx.queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(data));
        }
    }
}

/// The head's buffers, the offset of `pos` and the linear layer (mask token at 0, `pos` at
/// `D`, `W_r` at `N·D`, `b_r` at `N·D + D²`; the gradients at the same offsets).
#[derive(Clone, Copy, Debug)]
struct Head<'a> {
    params: &'a wgpu::Buffer,
    grads: &'a wgpu::Buffer,
    pos: usize,
    linear: Linear,
}

/// `L_r` on a GPU adapter: the dense block and the masked-token head, with their own
/// parameter and gradient buffers.
#[derive(Debug)]
pub struct GpuMasked {
    dense: GpuDense,
    plan: Option<MaskedPlan>,
}

impl GpuMasked {
    /// On a new [`GpuContext`] (any adapter, software ones included);
    /// [`TrainError::NoAdapter`] when there is none.
    pub fn new(dims: BlockDims) -> Result<Self, TrainError> {
        Self::with_context(Arc::new(GpuContext::new()?), dims)
    }

    /// On an existing context (a training backend's, say: one device for both);
    /// [`TrainError::StateDims`] for unusable dims.
    pub fn with_context(ctx: Arc<GpuContext>, dims: BlockDims) -> Result<Self, TrainError> {
        Ok(GpuMasked {
            dense: GpuDense::with_context(ctx, dims)?,
            plan: None,
        })
    }

    /// The adapter in use, e.g. `llvmpipe (Vulkan, Cpu)`.
    pub fn adapter(&self) -> String {
        self.dense.adapter()
    }

    /// `L_r` of `batch` token sets (`[B, N, D]`) with the masked `positions` (`[B, K]`,
    /// each image's strictly increasing, in `1..N`) under the block `params` and `head`,
    /// and its gradients by the block tensors, the mask token, its positional table and the
    /// head.
    pub fn gradients(
        &mut self,
        params: &BlockParams,
        head: &MaskedHead,
        tokens: &[f32],
        batch: usize,
        positions: &[usize],
    ) -> Result<MaskedGradients, TrainError> {
        let dims = self.dense.dims;
        self.dense.check_inputs(params, tokens, batch)?;
        if !head.matches(&dims) {
            return Err(TrainError::StateDims(dims));
        }
        let masked = check_positions(&dims, batch, positions)?;
        if !self.plan.as_ref().is_some_and(|p| p.fits(batch, masked)) {
            self.plan = None;
            self.plan = Some(MaskedPlan::new(&self.dense.block(), batch, masked)?);
        }
        let plan = self.plan.as_ref().expect("plan was just built");
        let ctx = &self.dense.ctx;
        self.dense.upload_params(params);
        plan.upload(ctx, &dims, head, tokens, positions);
        ctx.run("masked-token loss", &plan.dispatches);
        let (loss, head) = plan.read(ctx, &dims)?;
        let block = self.dense.read_grads()?;
        Ok(MaskedGradients { loss, block, head })
    }
}

/// Elements of the head buffer: mask token `[D]`, `pos` `[N−1, D]`, `W_r` `[D, D]`, `b_r`
/// `[D]`.
fn head_len(dims: &BlockDims) -> usize {
    dims.width * (dims.tokens + dims.width + 1)
}

/// `pred = y·W_rᵀ + b_r` at its offsets in the head buffer (after the mask token and
/// `pos`).
fn head_linear(dims: &BlockDims) -> Linear {
    let (n, d) = (dims.tokens, dims.width);
    Linear {
        weight: u32_of(n * d),
        bias: u32_of(n * d + d * d),
        inputs: d,
        outputs: d,
    }
}

/// `K`, the positions per image, when `positions` is `[B, K]` with `K > 0` and each
/// image's row strictly increasing in `1..N`.
fn check_positions(
    dims: &BlockDims,
    batch: usize,
    positions: &[usize],
) -> Result<usize, TrainError> {
    let k = positions.len() / batch;
    if k == 0 || positions.len() != batch * k {
        return Err(TrainError::Shape {
            what: "masked positions (B·K, K > 0)",
            expected: batch * k.max(1),
            found: positions.len(),
        });
    }
    for row in positions.chunks_exact(k) {
        let mut previous = 0;
        for &t in row {
            if t <= previous || t >= dims.tokens {
                return Err(TrainError::Shape {
                    what: "masked position (increasing per image, in 1..N; N)",
                    expected: dims.tokens,
                    found: t,
                });
            }
            previous = t;
        }
    }
    Ok(k)
}
