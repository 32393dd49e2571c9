//! Saving and loading a tuned run as safetensors.
//!
//! The block's tensors keep their `last_block.safetensors` names (with `ln_post.*` and
//! `proj` alongside), so the file drops in wherever the original block is read and opens in
//! standard tools. Extra tensors: `other_bias` `[1]`, the Adam moments `optim.m.<name>` /
//! `optim.v.<name>` (and `optim.m.other_bias` / `optim.v.other_bias`); the step count is
//! the `__metadata__` entry `optim.step`. All f32, so a reload is bit-exact.

use std::collections::HashMap;
use std::path::Path;

use super::{AdamState, TunedState};
use crate::block::{
    block_named_tensors, block_tensor_shapes, write_tensors, BlockDims, FrozenHead, NamedTensor,
    TensorFile, WeightsError,
};

const STEP_KEY: &str = "optim.step";

/// Writes a tuned run (and the frozen head, for a complete block file) to `path`.
pub fn save_tuned(
    path: &Path,
    dims: &BlockDims,
    state: &TunedState,
    head: &FrozenHead,
) -> Result<(), WeightsError> {
    let mut tensors = block_named_tensors(dims, &state.params, head);
    let bias = [state.other_bias];
    let (mb, vb) = ([state.optim.m_bias], [state.optim.v_bias]);
    tensors.push(NamedTensor {
        name: "other_bias".into(),
        shape: vec![1],
        data: &bias,
    });
    tensors.push(NamedTensor {
        name: "optim.m.other_bias".into(),
        shape: vec![1],
        data: &mb,
    });
    tensors.push(NamedTensor {
        name: "optim.v.other_bias".into(),
        shape: vec![1],
        data: &vb,
    });
    for (prefix, moments) in [("optim.m.", &state.optim.m), ("optim.v.", &state.optim.v)] {
        for ((name, shape), data) in block_tensor_shapes(dims).into_iter().zip(moments.tensors()) {
            tensors.push(NamedTensor {
                name: format!("{prefix}{name}"),
                shape,
                data,
            });
        }
    }
    let meta = HashMap::from([(STEP_KEY.to_string(), state.optim.step.to_string())]);
    write_tensors(path, &tensors, meta)
}

/// Reads a tuned run written by [`save_tuned`]; also returns the file's frozen head.
pub fn load_tuned(path: &Path, dims: &BlockDims) -> Result<(TunedState, FrozenHead), WeightsError> {
    if !dims.is_valid() {
        return Err(WeightsError::Dims(*dims));
    }
    let f = TensorFile::open(path)?;
    let step = f
        .metadata(STEP_KEY)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| WeightsError::Metadata {
            path: path.to_path_buf(),
            key: STEP_KEY.into(),
        })?;
    let optim = AdamState {
        step,
        m: f.block_params_prefixed(dims, "optim.m.")?,
        v: f.block_params_prefixed(dims, "optim.v.")?,
        m_bias: f.get("optim.m.other_bias", &[1])?[0],
        v_bias: f.get("optim.v.other_bias", &[1])?[0],
    };
    let state = TunedState {
        params: f.block_params(dims)?,
        other_bias: f.get("other_bias", &[1])?[0],
        optim,
    };
    Ok((state, f.frozen_head(dims)?))
}
