//! One training step of SPEC §8's `L_r` on the CPU: mask, dense forward and backward
//! ([`masked_gradients`]), then AdamW of the block and of the mask token, its positional
//! table and the head.

use anytime_linalg::Gemm;

use super::adamw::{next_step, update_tensors};
use super::{
    mask_positions, masked_count, masked_gradients, MaskedState, TrainConfig, TrainError,
    TunedState,
};
use crate::block::BlockDims;

/// A batch of unlabelled token sets for [`super::TrainBackend::masked_step`].
#[derive(Clone, Copy, Debug)]
pub struct MaskedBatch<'a> {
    /// `[B, N, D]` input tokens of the last block.
    pub tokens: &'a [f32],
    /// The seed of the masked positions ([`mask_positions`]).
    pub seed: u64,
}

impl MaskedBatch<'_> {
    /// Checks the batch against `dims` (whole token sets, at least one, finite, and a
    /// patch to mask in each); returns `B`.
    pub fn check(&self, dims: &BlockDims) -> Result<usize, TrainError> {
        let per = dims.tokens_len();
        let b = self.tokens.len().checked_div(per).unwrap_or(0);
        if b == 0 || b * per != self.tokens.len() {
            return Err(TrainError::Shape {
                what: "unlabelled tokens (B·N·D, B ≥ 1)",
                expected: per * b.max(1),
                found: self.tokens.len(),
            });
        }
        if masked_count(dims.tokens) == 0 {
            return Err(TrainError::Shape {
                what: "tokens per image (a patch to mask)",
                expected: 2,
                found: dims.tokens,
            });
        }
        if self.tokens.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "unlabelled tokens",
            });
        }
        Ok(b)
    }
}

/// What one `L_r` step measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskedStats {
    /// `L_r` of the batch before the update.
    pub loss: f64,
    /// Batch size.
    pub batch: usize,
    /// The block optimiser's step count after this call.
    pub step: u64,
    /// The mask token and head's own step count after this call.
    pub head_step: u64,
}

/// The step, at `cfg`'s learning rate; nothing changes when it returns an error.
pub(crate) fn masked_step(
    gemm: &Gemm,
    dims: &BlockDims,
    cfg: &TrainConfig,
    tuned: &mut TunedState,
    masked: &mut MaskedState,
    batch: &MaskedBatch<'_>,
    prefetch: bool,
) -> Result<MaskedStats, TrainError> {
    let b = batch.check(dims)?;
    masked.check(dims)?;
    let positions = mask_positions(dims.tokens, b, batch.seed);
    let g = masked_gradients(
        gemm,
        dims,
        &tuned.params,
        &masked.head,
        batch.tokens,
        b,
        &positions,
    );
    let k = next_step(cfg, &mut tuned.optim).prefetching(prefetch);
    let all = |_: &str| true;
    update_tensors(dims, k, &mut tuned.optim, &mut tuned.params, &g.block, all);
    masked.update(cfg, &g.head, prefetch);
    Ok(MaskedStats {
        loss: g.loss,
        batch: b,
        step: tuned.optim.step,
        head_step: masked.step,
    })
}
