//! The last transformer block of the CLIP image encoder (original and tuned), on the CPU.
//!
//! LN1 → multi-head self-attention → residual → LN2 → MLP (QuickGELU) → residual →
//! `ln_post` on CLS → `proj`. Only the CLS output feeds the embedding, so the block
//! computes keys and values for every token but the query, attention output and MLP for
//! the CLS token only: the embedding (and every gradient) is exactly that of the full block.
//! The dense block ([`dense_forward`], [`dense_backward`]) runs every token, for the losses
//! that read every token's output.

mod attention;
mod backward;
mod dense;
mod flops;
mod forward;
mod layernorm;
mod memory;
mod model;
mod params;
mod weights;
mod wgrad;

pub use backward::{backward, backward_update, FUSED_TENSORS};
pub use dense::{dense_backward, dense_forward, DenseSaved};
pub use flops::{step_flops, StepFlops};
pub(crate) use forward::quick_gelu_rows;
pub use forward::{cls_attention, forward, forward_into, l2_normalise, Saved};
pub(crate) use layernorm::{layernorm_normalise, LN_EPS};
pub use memory::{memory_report, MemoryReport};
pub use model::LastBlock;
pub use params::{
    block_tensor_shapes, head_tensor_shapes, is_decayed, BlockDims, BlockParams, FrozenHead,
};
pub use weights::{
    block_named_tensors, load_block, save_block, tensors_digest, write_tensors, NamedTensor,
    TensorFile, WeightsError,
};
pub use wgrad::UpdateRule;
