//! SPEC §8's masked-token modelling loss `L_r`, on the CPU.
//!
//! Per image, [`masked_count`] of the `N−1` patch tokens (never CLS) are replaced at the
//! block's input by a learned mask token plus a learned positional row for their position
//! (`mask_token + pos[j−1]` at patch position `j`); the dense block ([`dense_forward`]) runs
//! every token; a linear head reads the block's output at the masked positions,
//! `pred = y W_rᵀ + b_r`; the target is the original token there, normalised per token
//! (LayerNorm without affine, eps `LN_EPS`); and
//! `L_r = Σ (pred − target)² / (B·K·D)`, the mean over the masked positions of the batch
//! (`K` per image) and the channels.
//!
//! The positional table exists because the block's attention is permutation-equivariant:
//! with the mask token alone, every masked token of an image has the same input and so the
//! same output, and `L_r` could not go below the spread of an image's masked targets around
//! their mean. It is the head's own (the trunk's positional embedding lives in the trunk's
//! input space, and the block's input tokens already carry it mixed in), as MAE adds its
//! positional embedding to its mask tokens.
//!
//! The masked positions come from [`mask_positions`], a SplitMix64 stream of the caller's
//! seed (written out here, so that a seed gives the same positions whatever the `rand`
//! version and platform), and a partial Fisher–Yates shuffle of the patch positions.

use crate::block::{
    dense_backward, dense_forward, layernorm_normalise, BlockDims, BlockParams, DenseSaved,
};
use anytime_linalg::{AlignedVec, Gemm, MatMut, MatRef};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Fraction of an image's patch tokens that are masked (SPEC §8).
pub const MASK_RATIO: f64 = 0.75;

/// Masked patch positions per image for `tokens` tokens (CLS included):
/// `round(MASK_RATIO·(tokens − 1))`.
pub fn masked_count(tokens: usize) -> usize {
    (MASK_RATIO * tokens.saturating_sub(1) as f64).round() as usize
}

/// SplitMix64 (Steele, Lea and Flood 2014): a fixed, portable stream of 64-bit values.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`), by the multiply-shift map (bias below `n / 2⁶⁴`).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// The masked token positions of `batch` images of `tokens` tokens, `[B, K]` with
/// `K = masked_count(tokens)`: each image's row strictly increasing, in `1..tokens` (CLS,
/// token 0, is never masked). A function of `(tokens, seed)` and the image index: the
/// same seed gives the same positions, and each image its own.
pub fn mask_positions(tokens: usize, batch: usize, seed: u64) -> Vec<usize> {
    let k = masked_count(tokens);
    let base = SplitMix64(seed).next();
    let mut out = Vec::with_capacity(batch * k);
    let mut patches: Vec<usize> = Vec::with_capacity(tokens.saturating_sub(1));
    for b in 0..batch {
        // Image b's own stream, 2⁶⁴ / gcd apart from every other image's start.
        let mut rng = SplitMix64(base.wrapping_add((b as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)));
        patches.clear();
        patches.extend(1..tokens);
        for i in 0..k {
            let j = i + rng.below(patches.len() - i);
            patches.swap(i, j);
        }
        let chosen = &mut patches[..k];
        chosen.sort_unstable();
        out.extend_from_slice(chosen);
    }
    out
}

/// The mask token, its positional table and the linear reconstruction head of `L_r` (also
/// the shape of their gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedHead {
    /// `[D]`, put in place of every masked token at the block's input (with its position's
    /// row of [`Self::pos`] added).
    pub mask_token: AlignedVec,
    /// The positional table, `[N−1, D]`: row `j−1` is added to the mask token at patch
    /// position `j` (`1..N`). CLS (token 0) is never masked, so it has no row.
    pub pos: AlignedVec,
    /// `W_r`, `[D, D]` (`pred = y W_rᵀ + b_r`).
    pub w: AlignedVec,
    /// `b_r`, `[D]`.
    pub b: AlignedVec,
}

/// Standard deviation of [`MaskedHead::init`]'s mask token (MAE's `normal(0, 0.02)`) and
/// of its positional table (ViT's learned positional embedding, `normal(0, 0.02)`).
const MASK_TOKEN_STD: f32 = 0.02;

impl MaskedHead {
    /// All zero.
    pub fn zeros(dims: &BlockDims) -> Self {
        let d = dims.width;
        MaskedHead {
            mask_token: AlignedVec::zeros(d),
            pos: AlignedVec::zeros(dims.tokens.saturating_sub(1) * d),
            w: AlignedVec::zeros(d * d),
            b: AlignedVec::zeros(d),
        }
    }

    /// The start of training: the mask token and the positional table small and random
    /// (uniform, std 0.02 both), the head zero, so that `L_r` starts at the targets' mean
    /// square (about 1) and sends the block, the mask token and the table no gradient
    /// until the head has learnt a readout.
    pub fn init(dims: &BlockDims, seed: u64) -> Self {
        // LN1 makes the mask token's scale irrelevant to what the block reads; a zero
        // token would be LN1's degenerate input (its gradient scaled by 1/sqrt(eps), and
        // nothing to tell it from the LN1 bias). The table at the mask token's scale: what
        // LN1 reads at a masked position is the direction of `mask_token + pos[j−1]`, so
        // rows as large as the token make the positions as different from one another as
        // each is like the token, from the first step. A zero table would give every
        // masked position of an image the same input, output and, until the head reads
        // out, the same (zero) gradient. A zero head rather than a random one: the shared
        // block is never pulled towards a random projection of its output (linear probing
        // before fine-tuning).
        let mut rng = StdRng::seed_from_u64(seed);
        let a = MASK_TOKEN_STD * 3f32.sqrt();
        let mut h = Self::zeros(dims);
        for v in [&mut h.mask_token, &mut h.pos] {
            v.iter_mut().for_each(|x| *x = rng.gen_range(-a..a));
        }
        h
    }

    /// Random values for tests: the mask token and the positional table at the scale of
    /// test tokens (uniform in ±1), `W_r` uniform with a `1/sqrt(D)` scale, `b_r` small.
    pub fn random(dims: &BlockDims, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = 1.0 / (dims.width as f32).sqrt();
        let mut h = Self::zeros(dims);
        let parts = [
            (&mut h.mask_token, 1.0),
            (&mut h.w, s),
            (&mut h.b, 0.1),
            (&mut h.pos, 1.0),
        ];
        for (v, scale) in parts {
            v.iter_mut()
                .for_each(|x| *x = scale * rng.gen_range(-1.0f32..1.0));
        }
        h
    }

    /// The tensors: mask token, positional table, `W_r`, `b_r`.
    pub fn tensors(&self) -> [&[f32]; 4] {
        [&self.mask_token, &self.pos, &self.w, &self.b]
    }

    /// Mutable tensors, in [`Self::tensors`] order.
    pub fn tensors_mut(&mut self) -> [&mut AlignedVec; 4] {
        [
            &mut self.mask_token,
            &mut self.pos,
            &mut self.w,
            &mut self.b,
        ]
    }

    /// Whether every tensor has the length `dims` asks for.
    pub fn matches(&self, dims: &BlockDims) -> bool {
        let d = dims.width;
        self.mask_token.len() == d
            && self.pos.len() == dims.tokens.saturating_sub(1) * d
            && self.w.len() == d * d
            && self.b.len() == d
    }
}

/// `L_r` and its gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedGradients {
    /// `L_r` (accumulated in f64).
    pub loss: f64,
    /// The block tensors' gradients.
    pub block: BlockParams,
    /// The gradients of the mask token (the sum of the input-token gradients at every
    /// masked position), the positional table (row `j−1`: the sum over the batch of the
    /// input-token gradients at masked position `j`; zero for a position masked in no
    /// image), `W_r` and `b_r`.
    pub head: MaskedHead,
}

/// What the forward of `L_r` leaves for its backward.
struct MaskedForward {
    saved: DenseSaved,
    /// Rows (`b·N + t`) of the masked tokens, `[B·K]`.
    rows: Vec<usize>,
    /// The block's output at those rows, `[B·K, D]`.
    y: AlignedVec,
    /// `pred − target`, `[B·K, D]`.
    diff: AlignedVec,
    loss: f64,
}

/// The forward of `L_r`: the masked input through the dense block and the head.
fn masked_forward(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &MaskedHead,
    tokens: &[f32],
    batch: usize,
    positions: &[usize],
) -> MaskedForward {
    let (n, d) = (dims.tokens, dims.width);
    assert!(head.matches(dims), "masked head does not match the dims");
    assert_eq!(tokens.len(), batch * n * d, "tokens must be [B, N, D]");
    assert!(
        batch > 0 && !positions.is_empty() && positions.len().is_multiple_of(batch),
        "positions must be [B, K] with K > 0"
    );
    let k = positions.len() / batch;
    for row in positions.chunks_exact(k) {
        assert!(
            row[0] >= 1 && row[k - 1] < n && row.windows(2).all(|w| w[0] < w[1]),
            "each image's positions must be strictly increasing patch positions, in 1..N"
        );
    }
    let rows: Vec<usize> = positions
        .chunks_exact(k)
        .enumerate()
        .flat_map(|(b, row)| row.iter().map(move |&t| b * n + t))
        .collect();

    // The input with the mask token and its position's row in place, and the normalised
    // targets.
    let mut input = gemm.zeros(tokens.len());
    input.copy_from_slice(tokens);
    let mut orig = gemm.zeros(rows.len() * d);
    for (&r, o) in rows.iter().zip(orig.chunks_exact_mut(d)) {
        o.copy_from_slice(&tokens[r * d..(r + 1) * d]);
        let row = &head.pos[(r % n - 1) * d..(r % n) * d];
        let masked = head.mask_token.iter().zip(row).map(|(&m, &q)| m + q);
        input[r * d..(r + 1) * d]
            .iter_mut()
            .zip(masked)
            .for_each(|(x, v)| *x = v);
    }
    let mut target = gemm.zeros(orig.len());
    let mut rstd = gemm.zeros(rows.len());
    layernorm_normalise(&orig, d, &mut target, &mut rstd);

    let saved = dense_forward(gemm, dims, p, &input, batch);
    let mut y = gemm.zeros(rows.len() * d);
    for (&r, yr) in rows.iter().zip(y.chunks_exact_mut(d)) {
        yr.copy_from_slice(&saved.out[r * d..(r + 1) * d]);
    }
    let mut diff = gemm.zeros(y.len());
    for row in diff.chunks_exact_mut(d) {
        row.copy_from_slice(&head.b);
    }
    gemm.matmul(
        MatRef::new(&y, rows.len(), d, d),
        MatRef::new(&head.w, d, d, d).t(),
        MatMut::new(&mut diff, rows.len(), d, d),
        true,
    );
    let mut sq = 0.0f64;
    for (x, &t) in diff.iter_mut().zip(target.iter()) {
        *x -= t;
        sq += (*x as f64) * (*x as f64);
    }
    MaskedForward {
        saved,
        rows,
        y,
        loss: sq / diff.len() as f64,
        diff,
    }
}

/// `L_r` of `batch` token sets (`[B, N, D]`, the block's input) with the masked
/// `positions` (`[B, K]`, as [`mask_positions`] gives them) under the block `p` and the
/// mask token and head `head`.
pub fn masked_loss(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &MaskedHead,
    tokens: &[f32],
    batch: usize,
    positions: &[usize],
) -> f64 {
    masked_forward(gemm, dims, p, head, tokens, batch, positions).loss
}

/// [`masked_loss`] and its gradients by the block tensors, the mask token and the head.
pub fn masked_gradients(
    gemm: &Gemm,
    dims: &BlockDims,
    p: &BlockParams,
    head: &MaskedHead,
    tokens: &[f32],
    batch: usize,
    positions: &[usize],
) -> MaskedGradients {
    let (n, d) = (dims.tokens, dims.width);
    let f = masked_forward(gemm, dims, p, head, tokens, batch, positions);
    let count = f.rows.len();

    // d pred = 2 (pred − target) / (B·K·D); W_r, b_r, then the block output's gradient.
    let scale = (2.0 / f.diff.len() as f64) as f32;
    let mut dpred = f.diff;
    dpred.iter_mut().for_each(|x| *x *= scale);
    let mut g = MaskedHead::zeros(dims);
    gemm.matmul(
        MatRef::new(&dpred, count, d, d).t(),
        MatRef::new(&f.y, count, d, d),
        MatMut::new(&mut g.w, d, d, d),
        false,
    );
    for row in dpred.chunks_exact(d) {
        g.b.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
    }
    let mut dy = gemm.zeros(count * d);
    gemm.matmul(
        MatRef::new(&dpred, count, d, d),
        MatRef::new(&head.w, d, d, d),
        MatMut::new(&mut dy, count, d, d),
        false,
    );
    let mut d_out = gemm.zeros(f.saved.out.len());
    for (&r, dr) in f.rows.iter().zip(dy.chunks_exact(d)) {
        d_out[r * d..(r + 1) * d].copy_from_slice(dr);
    }

    let mut block = BlockParams::zeros(dims);
    let mut d_tokens = gemm.zeros(tokens.len());
    dense_backward(
        gemm,
        dims,
        p,
        &f.saved,
        &d_out,
        &mut block,
        Some(&mut d_tokens),
    );
    for &r in &f.rows {
        let dt = &d_tokens[r * d..(r + 1) * d];
        g.mask_token.iter_mut().zip(dt).for_each(|(s, &x)| *s += x);
        let row = &mut g.pos[(r % n - 1) * d..(r % n) * d];
        row.iter_mut().zip(dt).for_each(|(s, &x)| *s += x);
    }
    MaskedGradients {
        loss: f.loss,
        block,
        head: g,
    }
}
