//! One module per kernel: `name.wgsl` next to `name.rs`.

pub mod adamw;
pub mod attention_bwd;
pub mod attention_fwd;
pub mod col_sum;
pub mod copy_rows;
pub mod dense_attention_bwd;
pub mod dense_attention_fwd;
pub mod gather_rows;
pub mod layer_norm_bwd;
pub mod layer_norm_fwd;
pub mod loss_fwd_bwd;
pub mod matmul;
pub mod mse_fwd_bwd;
pub mod quick_gelu_bwd;
pub mod quick_gelu_fwd;

/// `(name, WGSL source)` of every kernel, for validation and listings.
pub const SOURCES: [(&str, &str); 15] = [
    (adamw::NAME, adamw::SOURCE),
    (attention_bwd::NAME, attention_bwd::SOURCE),
    (attention_fwd::NAME, attention_fwd::SOURCE),
    (col_sum::NAME, col_sum::SOURCE),
    (copy_rows::NAME, copy_rows::SOURCE),
    (dense_attention_bwd::NAME, dense_attention_bwd::SOURCE),
    (dense_attention_fwd::NAME, dense_attention_fwd::SOURCE),
    (gather_rows::NAME, gather_rows::SOURCE),
    (layer_norm_bwd::NAME, layer_norm_bwd::SOURCE),
    (layer_norm_fwd::NAME, layer_norm_fwd::SOURCE),
    (loss_fwd_bwd::NAME, loss_fwd_bwd::SOURCE),
    (matmul::NAME, matmul::SOURCE),
    (mse_fwd_bwd::NAME, mse_fwd_bwd::SOURCE),
    (quick_gelu_bwd::NAME, quick_gelu_bwd::SOURCE),
    (quick_gelu_fwd::NAME, quick_gelu_fwd::SOURCE),
];
