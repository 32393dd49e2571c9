//! Floating-point operations of one training step, counted from the shapes.

use super::params::BlockDims;

/// FLOPs (2 per multiply-add) of one training step at batch `B` and `|Y|` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFlops {
    /// What the CPU path executes in a training step (see [`super::forward()`]): GEMMs of
    /// the forward and the backward, and the loss logits; element-wise work (LayerNorm,
    /// softmax, QuickGELU, AdamW) is not counted. The input tokens' gradient is not part
    /// of a step (the trunk is frozen).
    pub executed: u64,
    /// Added when the input tokens' gradient is asked for too (two products per image).
    pub token_grad: u64,
    /// The same step computed densely (every token through attention and MLP, keys and
    /// values materialised, as a straightforward framework implementation does).
    pub dense: u64,
}

/// Counts [`StepFlops`] for `dims`, `batch` images and `n_labels` labels.
pub fn step_flops(dims: &BlockDims, batch: usize, n_labels: usize) -> StepFlops {
    let (n, d, m, e, h) = (
        dims.tokens as u64,
        dims.width as u64,
        dims.mlp as u64,
        dims.embed as u64,
        dims.heads as u64,
    );
    let (b, k) = (batch as u64, n_labels as u64);
    let r = b * n;
    let mac = |x: u64| 2 * x;
    // Forward: q, q̃, scores, a, o, out_proj, c_fc, c_proj, proj, logits.
    let fwd = mac(b * d * d) * 3
        + mac(2 * b * h * n * d)
        + mac(b * d * d)
        + mac(2 * b * d * m)
        + mac(b * d * e)
        + mac(b * k * e);
    // Backward: dW and dX of each of those GEMMs (dX only through proj and the logits);
    // the attention core (scores, ā) has two: dp = dā·x̂ᵀ and du = ds·x̂.
    let bwd = 2 * mac(b * d * d) * 3
        + mac(2 * b * h * n * d)
        + 2 * mac(b * d * d)
        + 2 * mac(2 * b * d * m)
        + mac(b * d * e)
        + mac(b * k * e);
    let dense_fwd = mac(r * d * 3 * d)
        + mac(2 * b * n * n * d)
        + mac(r * d * d)
        + mac(2 * r * d * m)
        + mac(b * d * e)
        + mac(b * k * e);
    let dense_bwd = 2
        * (mac(r * d * 3 * d) + mac(2 * b * n * n * d) + mac(r * d * d) + mac(2 * r * d * m))
        + mac(b * d * e)
        + mac(b * k * e);
    StepFlops {
        executed: fwd + bwd,
        token_grad: mac(2 * b * h * n * d),
        dense: dense_fwd + dense_bwd,
    }
}
