//! Every kernel's pipeline, built once per context and then shared.

use crate::kernels::{
    adamw::AdamW, attention_bwd::AttentionBwd, attention_fwd::AttentionFwd, col_sum::ColSum,
    copy_rows::CopyRows, dense_attention_bwd::DenseAttentionBwd,
    dense_attention_fwd::DenseAttentionFwd, gather_rows::GatherRows, layer_norm_bwd::LayerNormBwd,
    layer_norm_fwd::LayerNormFwd, loss_fwd_bwd::LossFwdBwd, matmul::Matmul, mse_fwd_bwd::MseFwdBwd,
    quick_gelu_bwd::QuickGeluBwd, quick_gelu_fwd::QuickGeluFwd,
};
use crate::{GpuContext, GpuError};

/// The pipeline cache: one of each kernel.
#[derive(Debug)]
pub struct Kernels {
    pub matmul: Matmul,
    pub layer_norm_fwd: LayerNormFwd,
    pub layer_norm_bwd: LayerNormBwd,
    pub attention_fwd: AttentionFwd,
    pub attention_bwd: AttentionBwd,
    pub dense_attention_fwd: DenseAttentionFwd,
    pub dense_attention_bwd: DenseAttentionBwd,
    pub quick_gelu_fwd: QuickGeluFwd,
    pub quick_gelu_bwd: QuickGeluBwd,
    pub loss_fwd_bwd: LossFwdBwd,
    pub adamw: AdamW,
    pub copy_rows: CopyRows,
    pub col_sum: ColSum,
    pub gather_rows: GatherRows,
    pub mse_fwd_bwd: MseFwdBwd,
}

impl Kernels {
    /// Builds every pipeline (each in its own validation scope).
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        Ok(Kernels {
            matmul: Matmul::new(ctx)?,
            layer_norm_fwd: LayerNormFwd::new(ctx)?,
            layer_norm_bwd: LayerNormBwd::new(ctx)?,
            attention_fwd: AttentionFwd::new(ctx)?,
            attention_bwd: AttentionBwd::new(ctx)?,
            dense_attention_fwd: DenseAttentionFwd::new(ctx)?,
            dense_attention_bwd: DenseAttentionBwd::new(ctx)?,
            quick_gelu_fwd: QuickGeluFwd::new(ctx)?,
            quick_gelu_bwd: QuickGeluBwd::new(ctx)?,
            loss_fwd_bwd: LossFwdBwd::new(ctx)?,
            adamw: AdamW::new(ctx)?,
            copy_rows: CopyRows::new(ctx)?,
            col_sum: ColSum::new(ctx)?,
            gather_rows: GatherRows::new(ctx)?,
            mse_fwd_bwd: MseFwdBwd::new(ctx)?,
        })
    }
}
