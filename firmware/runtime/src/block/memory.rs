//! Memory held by one training step of the CPU path.

use super::params::BlockDims;

/// Bytes held, by kind, for a training step at batch `B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Trainable parameters (f32, `b` included), plus the frozen head.
    pub weights: usize,
    /// One gradient per trainable scalar.
    pub gradients: usize,
    /// Adam first and second moments.
    pub optimiser: usize,
    /// Activations saved by the forward pass for backward (see [`super::Saved`]).
    pub activations: usize,
    /// Largest scratch buffers alive at once during the backward of a step (in the
    /// attention: `a`, `dā`, `du` and `ds`, and partial sums).
    pub backward_scratch: usize,
}

impl MemoryReport {
    /// Everything held across the step (weights, grads, moments, saved activations).
    pub fn total(&self) -> usize {
        self.weights + self.gradients + self.optimiser + self.activations
    }
}

/// The accounting, in f32 scalars × 4, with `R = B·N` token rows and `H` heads:
/// - saved: `xhat1` R·D, `rstd1` R, `h1_cls` B·D, `q` B·D, `qt` H·B·D, `probs` B·H·N,
///   `abar` B·H·D, `attn` B·D, `xhat2` B·D, `rstd2` B, QuickGELU's output `act` and
///   derivative `dact` 2·B·M (not the pre-activation: backward needs only these two),
///   `xhat_post` B·D, `rstd_post` B, `embed` B·E;
/// - recomputed in backward instead of saved: `a = ā ⊙ w1 + b1`, LN2's output;
/// - never computed: keys and values (folded into `q̃` and `ā`), the LN1 output of the
///   patch tokens (its scale and shift are folded into `u = w1 ⊙ q̃` and `a`), queries,
///   attention and MLP of the non-CLS tokens, whose outputs never reach the embedding;
///   and, in a step, the input tokens' gradient (with it, two more R·D buffers).
pub fn memory_report(dims: &BlockDims, batch: usize) -> MemoryReport {
    let (n, d, m, e, h) = (dims.tokens, dims.width, dims.mlp, dims.embed, dims.heads);
    let (b, r) = (batch, batch * n);
    let params = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + m * d + m + d * m + d + 1;
    let head = 2 * d + d * e;
    let saved = r * d
        + r
        + 2 * b * d
        + 2 * b * h * d
        + b * h * n
        + b * d
        + b * d
        + b
        + 2 * b * m
        + b * d
        + b
        + b * e;
    MemoryReport {
        weights: 4 * (params + head),
        gradients: 4 * params,
        optimiser: 4 * 2 * params,
        activations: 4 * saved,
        backward_scratch: 4 * (3 * b * h * d + b * h * n + 2 * h * d + 2 * b * d),
    }
}
