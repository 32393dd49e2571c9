//! Memory held by one training step of the CPU path.

use super::params::BlockDims;
use super::wgrad::{GROUPS, STRIP};

/// Bytes held, by kind, for a training step at batch `B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Trainable parameters (f32, `b` included), plus the frozen head.
    pub weights: usize,
    /// Gradients held by a step: those of the vectors (LayerNorm parameters, biases,
    /// `b`). The four weight matrices' (`weight_gradients`) are applied as they are
    /// computed, a strip at a time ([`super::backward_update`]), and never held whole.
    pub gradients: usize,
    /// The weight matrices' gradients, held only where they are asked for
    /// (`TrainBackend::gradients`, or a step with the fused update off).
    pub weight_gradients: usize,
    /// The strip of a weight gradient on its way to the optimiser, per thread.
    pub gradient_strip_per_thread: usize,
    /// Adam first and second moments.
    pub optimiser: usize,
    /// Activations saved by the forward pass for backward (see [`super::Saved`]).
    pub activations: usize,
    /// Largest scratch buffers alive at once during the backward of a step (in the
    /// attention: `a`, `dā`, `du` and `ds`, and partial sums), plus the partial input
    /// gradients of the one-pass `Linear` backward, which its calling thread keeps from
    /// step to step (at most `GROUPS − 1` of `[B, D]`).
    pub backward_scratch: usize,
}

impl MemoryReport {
    /// Everything held across the step (weights, grads, moments, saved activations;
    /// not the weight matrices' gradients, which a step does not hold).
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
    let matrices = 3 * d * d + d * d + m * d + d * m;
    let vectors = 2 * d + 3 * d + d + 2 * d + m + d + 1;
    let params = matrices + vectors;
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
        gradients: 4 * vectors,
        weight_gradients: 4 * matrices,
        gradient_strip_per_thread: 4 * STRIP * d.max(m),
        optimiser: 4 * 2 * params,
        activations: 4 * saved,
        backward_scratch: 4 * (3 * b * h * d + b * h * n + 2 * h * d + 2 * b * d)
            + 4 * (GROUPS - 1) * b * d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockParams, FUSED_TENSORS};

    /// The counts agree with the tensors themselves: the vectors' gradients (and `b`'s)
    /// held, the four matrices' not, their sum one per trainable scalar.
    #[test]
    fn memory_report_counts_the_tensors() {
        let dims = BlockDims {
            width: 8,
            heads: 2,
            mlp: 16,
            tokens: 5,
            embed: 4,
        };
        let r = memory_report(&dims, 3);
        let p = BlockParams::zeros(&dims);
        let held = BlockParams::vectors_only(&dims);
        assert_eq!(r.gradients, 4 * (held.len() + 1));
        assert_eq!(r.weight_gradients, 4 * (p.len() - held.len()));
        assert_eq!(r.optimiser, 8 * (p.len() + 1));
        let shapes = crate::block::block_tensor_shapes(&dims);
        let matrices: usize = shapes
            .iter()
            .filter(|(n, _)| FUSED_TENSORS.contains(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(r.weight_gradients, 4 * matrices);
    }
}
