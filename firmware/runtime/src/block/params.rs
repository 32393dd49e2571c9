//! Shapes and parameter tensors of the last transformer block.
//!
//! Every tensor is a flat row-major [`AlignedVec`] named as in `last_block.safetensors`
//! (PyTorch `Linear` convention: a weight is `[out, in]` and `y = x Wᵀ + b`).

use anytime_linalg::{AlignedVec, Placement};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Shapes of the last block and its frozen head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDims {
    /// `D`, token width.
    pub width: usize,
    /// Number of attention heads (`D` is a multiple of it).
    pub heads: usize,
    /// `M`, hidden width of the MLP.
    pub mlp: usize,
    /// `N`, tokens per image (CLS included, CLS is token 0).
    pub tokens: usize,
    /// `E`, embedding width after `proj`.
    pub embed: usize,
}

impl BlockDims {
    /// A block small enough for unit tests to build by hand (N = 3, D = 4, 2 heads, E = 2).
    #[cfg(test)]
    pub(crate) const TEST: BlockDims = BlockDims {
        width: 4,
        heads: 2,
        mlp: 8,
        tokens: 3,
        embed: 2,
    };

    /// ViT-B/32 shapes (N = 50, D = 768, 12 heads, MLP 3072, E = 512).
    pub const VIT_B32: BlockDims = BlockDims {
        width: 768,
        heads: 12,
        mlp: 3072,
        tokens: 50,
        embed: 512,
    };

    /// Width of one attention head, `D / heads`.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Number of f32 values in the tokens of one image, `N·D`.
    pub fn tokens_len(&self) -> usize {
        self.tokens * self.width
    }

    /// Whether the shapes are usable (non-zero, `D` divisible by `heads`, at least CLS + 1 patch).
    pub fn is_valid(&self) -> bool {
        self.width > 0
            && self.heads > 0
            && self.width.is_multiple_of(self.heads)
            && self.mlp > 0
            && self.tokens >= 2
            && self.embed > 0
    }
}

/// Names and shapes of the trainable tensors, in the one order used everywhere
/// (file layout, optimiser state, flat parameter views, GPU buffers).
pub fn block_tensor_shapes(d: &BlockDims) -> [(&'static str, Vec<usize>); 12] {
    let (w, m) = (d.width, d.mlp);
    [
        ("ln_1.weight", vec![w]),
        ("ln_1.bias", vec![w]),
        ("attn.in_proj_weight", vec![3 * w, w]),
        ("attn.in_proj_bias", vec![3 * w]),
        ("attn.out_proj.weight", vec![w, w]),
        ("attn.out_proj.bias", vec![w]),
        ("ln_2.weight", vec![w]),
        ("ln_2.bias", vec![w]),
        ("mlp.c_fc.weight", vec![m, w]),
        ("mlp.c_fc.bias", vec![m]),
        ("mlp.c_proj.weight", vec![w, m]),
        ("mlp.c_proj.bias", vec![w]),
    ]
}

/// Names and shapes of the frozen head (`ln_post`, `proj`).
pub fn head_tensor_shapes(d: &BlockDims) -> [(&'static str, Vec<usize>); 3] {
    [
        ("ln_post.weight", vec![d.width]),
        ("ln_post.bias", vec![d.width]),
        ("proj", vec![d.width, d.embed]),
    ]
}

/// Whether weight decay applies to the tensor of this name: SPEC §4 decays every
/// parameter but `b` (the "other" bias, which is not a block tensor).
pub fn is_decayed(name: &str) -> bool {
    name != "b"
}

/// The trainable tensors of the block (also used for gradients and Adam moments).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParams {
    pub ln_1_w: AlignedVec,
    pub ln_1_b: AlignedVec,
    /// `[3D, D]`, rows q, k, v.
    pub in_proj_w: AlignedVec,
    pub in_proj_b: AlignedVec,
    /// `[D, D]`.
    pub out_proj_w: AlignedVec,
    pub out_proj_b: AlignedVec,
    pub ln_2_w: AlignedVec,
    pub ln_2_b: AlignedVec,
    /// `[M, D]`.
    pub fc_w: AlignedVec,
    pub fc_b: AlignedVec,
    /// `[D, M]`.
    pub cproj_w: AlignedVec,
    pub cproj_b: AlignedVec,
}

impl BlockParams {
    /// All tensors zero (the shape of gradients and Adam moments).
    pub fn zeros(d: &BlockDims) -> Self {
        let (w, m) = (d.width, d.mlp);
        BlockParams {
            ln_1_w: AlignedVec::zeros(w),
            ln_1_b: AlignedVec::zeros(w),
            in_proj_w: AlignedVec::zeros(3 * w * w),
            in_proj_b: AlignedVec::zeros(3 * w),
            out_proj_w: AlignedVec::zeros(w * w),
            out_proj_b: AlignedVec::zeros(w),
            ln_2_w: AlignedVec::zeros(w),
            ln_2_b: AlignedVec::zeros(w),
            fc_w: AlignedVec::zeros(m * w),
            fc_b: AlignedVec::zeros(m),
            cproj_w: AlignedVec::zeros(w * m),
            cproj_b: AlignedVec::zeros(w),
        }
    }

    /// The vectors (LayerNorm parameters, biases) zero and the four weight matrices
    /// empty: the gradient buffers of a step whose matrices' update is fused into
    /// backward ([`super::backward_update`]).
    pub fn vectors_only(d: &BlockDims) -> Self {
        let mut p = Self::zeros(d);
        for (t, (_, shape)) in p.tensors_mut().into_iter().zip(block_tensor_shapes(d)) {
            if shape.len() != 1 {
                *t = AlignedVec::new();
            }
        }
        p
    }

    /// Random parameters for tests and benchmarks: LayerNorm scales near 1, shifts and
    /// biases small, matrices uniform with a `1/sqrt(fan_in)` scale.
    pub fn random(d: &BlockDims, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = Self::zeros(d);
        let fill = |v: &mut AlignedVec, rng: &mut StdRng, centre: f32, scale: f32| {
            for x in v.iter_mut() {
                *x = centre + scale * rng.gen_range(-1.0f32..1.0);
            }
        };
        let sw = 1.0 / (d.width as f32).sqrt();
        let sm = 1.0 / (d.mlp as f32).sqrt();
        fill(&mut p.ln_1_w, &mut rng, 1.0, 0.2);
        fill(&mut p.ln_1_b, &mut rng, 0.0, 0.1);
        fill(&mut p.in_proj_w, &mut rng, 0.0, sw);
        fill(&mut p.in_proj_b, &mut rng, 0.0, 0.1);
        fill(&mut p.out_proj_w, &mut rng, 0.0, sw);
        fill(&mut p.out_proj_b, &mut rng, 0.0, 0.1);
        fill(&mut p.ln_2_w, &mut rng, 1.0, 0.2);
        fill(&mut p.ln_2_b, &mut rng, 0.0, 0.1);
        fill(&mut p.fc_w, &mut rng, 0.0, sw);
        fill(&mut p.fc_b, &mut rng, 0.0, 0.1);
        fill(&mut p.cproj_w, &mut rng, 0.0, sm);
        fill(&mut p.cproj_b, &mut rng, 0.0, 0.1);
        p
    }

    /// The tensors in [`block_tensor_shapes`] order.
    pub fn tensors(&self) -> [&[f32]; 12] {
        [
            &self.ln_1_w,
            &self.ln_1_b,
            &self.in_proj_w,
            &self.in_proj_b,
            &self.out_proj_w,
            &self.out_proj_b,
            &self.ln_2_w,
            &self.ln_2_b,
            &self.fc_w,
            &self.fc_b,
            &self.cproj_w,
            &self.cproj_b,
        ]
    }

    /// Mutable tensors in [`block_tensor_shapes`] order.
    pub fn tensors_mut(&mut self) -> [&mut AlignedVec; 12] {
        [
            &mut self.ln_1_w,
            &mut self.ln_1_b,
            &mut self.in_proj_w,
            &mut self.in_proj_b,
            &mut self.out_proj_w,
            &mut self.out_proj_b,
            &mut self.ln_2_w,
            &mut self.ln_2_b,
            &mut self.fc_w,
            &mut self.fc_b,
            &mut self.cproj_w,
            &mut self.cproj_b,
        ]
    }

    /// The same tensors placed as `placement` says (copies where they are elsewhere).
    pub fn placed(mut self, placement: Placement) -> Self {
        for t in self.tensors_mut() {
            *t = std::mem::take(t).placed(placement);
        }
        self
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.tensors().iter().map(|t| t.len()).sum()
    }

    /// Whether there are no scalars at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every tensor has the length `d` asks for.
    pub fn matches(&self, d: &BlockDims) -> bool {
        self.tensors()
            .iter()
            .zip(block_tensor_shapes(d).iter())
            .all(|(t, (_, s))| t.len() == s.iter().product::<usize>())
    }

    /// Whether the vectors (every tensor but the four weight matrices) have the shapes
    /// of `d`.
    pub fn vectors_match(&self, d: &BlockDims) -> bool {
        self.tensors()
            .iter()
            .zip(block_tensor_shapes(d).iter())
            .all(|(t, (_, s))| s.len() != 1 || t.len() == s[0])
    }
}

/// The frozen head: `ln_post` on the CLS token, then `proj` (`[D, E]`, `e = u · proj`).
#[derive(Clone, Debug, PartialEq)]
pub struct FrozenHead {
    pub ln_post_w: AlignedVec,
    pub ln_post_b: AlignedVec,
    /// `[D, E]`, row-major.
    pub proj: AlignedVec,
}

impl FrozenHead {
    /// Random head for tests and benchmarks.
    pub fn random(d: &BlockDims, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = 1.0 / (d.width as f32).sqrt();
        FrozenHead {
            ln_post_w: (0..d.width)
                .map(|_| 1.0 + 0.2 * rng.gen_range(-1.0f32..1.0))
                .collect(),
            ln_post_b: (0..d.width)
                .map(|_| 0.1 * rng.gen_range(-1.0f32..1.0))
                .collect(),
            proj: (0..d.width * d.embed)
                .map(|_| s * rng.gen_range(-1.0f32..1.0))
                .collect(),
        }
    }

    /// The tensors in [`head_tensor_shapes`] order.
    pub fn tensors(&self) -> [&[f32]; 3] {
        [&self.ln_post_w, &self.ln_post_b, &self.proj]
    }

    /// Mutable tensors in [`head_tensor_shapes`] order.
    pub fn tensors_mut(&mut self) -> [&mut AlignedVec; 3] {
        [&mut self.ln_post_w, &mut self.ln_post_b, &mut self.proj]
    }
}
