//! [`LastBlock`]: a loaded block with its frozen head, and the simple inference entry points.

use std::path::Path;

use anytime_linalg::Gemm;

use super::forward::{cls_attention, forward, l2_normalise};
use super::params::{BlockDims, BlockParams, FrozenHead};
use super::weights::{load_block, WeightsError};

/// The last block (original or tuned) with its frozen head, and the GEMMs it runs on
/// (the fastest kernels the CPU has).
#[derive(Clone, Debug)]
pub struct LastBlock {
    pub dims: BlockDims,
    pub params: BlockParams,
    pub head: FrozenHead,
    gemm: Gemm,
}

impl LastBlock {
    /// The block of these parameters.
    pub fn new(dims: BlockDims, params: BlockParams, head: FrozenHead) -> Self {
        LastBlock {
            dims,
            params,
            head,
            gemm: Gemm::default(),
        }
    }

    /// Loads `last_block.safetensors` at `path`, checking every tensor against `dims`.
    pub fn load(path: &Path, dims: BlockDims) -> Result<Self, WeightsError> {
        let (params, head) = load_block(path, &dims)?;
        Ok(LastBlock::new(dims, params, head))
    }

    /// Unnormalised embeddings `ln_post(CLS)·proj`, `[B, E]`, of `tokens` (`[B, N, D]`).
    ///
    /// # Panics
    /// When `tokens.len() != batch·N·D`.
    pub fn forward_raw(&self, tokens: &[f32], batch: usize) -> Vec<f32> {
        forward(
            &self.gemm,
            &self.dims,
            &self.params,
            &self.head,
            tokens,
            batch,
        )
        .embed
        .to_vec()
    }

    /// L2-normalised embeddings `[B, E]` of `tokens` (`[B, N, D]`).
    ///
    /// # Panics
    /// When `tokens.len() != batch·N·D`.
    pub fn forward_embeddings(&self, tokens: &[f32], batch: usize) -> Vec<f32> {
        let mut z = self.forward_raw(tokens, batch);
        l2_normalise(&mut z, self.dims.embed);
        z
    }

    /// CLS→patch weights of SPEC §5, `[B, N−1]`: per head the softmax of the CLS query's
    /// scores over the patch keys (CLS key excluded), averaged over heads; rows sum to 1.
    ///
    /// # Panics
    /// When `tokens.len() != batch·N·D`.
    pub fn cls_attention(&self, tokens: &[f32], batch: usize) -> Vec<f32> {
        cls_attention(&self.gemm, &self.dims, &self.params, tokens, batch)
    }
}
