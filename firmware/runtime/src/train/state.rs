//! Saving and loading a tuned run as safetensors.
//!
//! The block's tensors keep their `last_block.safetensors` names (with `ln_post.*` and
//! `proj` alongside), so the file drops in wherever the original block is read and opens in
//! standard tools. Extra tensors: `other_bias` `[1]`, the Adam moments `optim.m.<name>` /
//! `optim.v.<name>` (and `optim.m.other_bias` / `optim.v.other_bias`); the step count is
//! the `__metadata__` entry `optim.step`. All f32, so a reload is bit-exact.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{AdamState, TunedState};
use crate::block::{
    block_named_tensors, block_tensor_shapes, tensors_digest, write_tensors, BlockDims,
    BlockParams, FrozenHead, NamedTensor, TensorFile, WeightsError,
};

const STEP_KEY: &str = "optim.step";
/// `__metadata__` key of the file's checksum (see [`file_digest`]).
pub const DIGEST_KEY: &str = "sha256";
/// `__metadata__` key of the id of the learner the file belongs to.
pub const LEARNER_KEY: &str = "learner";

/// The checksum a tuned file carries: SHA-256 (hex) of its tensors' digest
/// ([`tensors_digest`]), its step and the learner it names, so that a flipped bit in the
/// metadata is caught as surely as one in a tensor.
fn file_digest(tensors: &str, step: Option<&str>, learner: Option<&str>) -> String {
    let mut h = Sha256::new();
    for (key, value) in [
        ("tensors", Some(tensors)),
        (STEP_KEY, step),
        (LEARNER_KEY, learner),
    ] {
        h.update(key.as_bytes());
        match value {
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the first of `params` and `b` holding a value that is not finite.
pub fn first_non_finite_params(params: &BlockParams, other_bias: f32) -> Option<&'static str> {
    if params
        .tensors()
        .iter()
        .any(|t| t.iter().any(|v| !v.is_finite()))
    {
        return Some("params");
    }
    (!other_bias.is_finite()).then_some("other_bias")
}

/// Whether every value of a tuned run (parameters, `b`, Adam moments) is finite; else the
/// name of a tensor that is not.
pub fn first_non_finite(state: &TunedState) -> Option<&'static str> {
    let names = ["params", "optim.m", "optim.v"];
    for (name, p) in names
        .iter()
        .zip([&state.params, &state.optim.m, &state.optim.v])
    {
        if p.tensors().iter().any(|t| t.iter().any(|v| !v.is_finite())) {
            return Some(name);
        }
    }
    let scalars = [state.other_bias, state.optim.m_bias, state.optim.v_bias];
    if scalars.iter().any(|v| !v.is_finite()) {
        return Some("other_bias");
    }
    None
}

/// Writes a tuned run (and the frozen head, for a complete block file) to `path`, with the
/// SHA-256 of its tensors and, when given, the id of the learner it belongs to. A run
/// holding NaN or an infinity is refused ([`WeightsError::NonFinite`]).
pub fn save_tuned(
    path: &Path,
    dims: &BlockDims,
    state: &TunedState,
    head: &FrozenHead,
    learner: Option<&str>,
) -> Result<(), WeightsError> {
    if let Some(name) = first_non_finite(state) {
        return Err(WeightsError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
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
    let step = state.optim.step.to_string();
    let digest = file_digest(&tensors_digest(&tensors), Some(&step), learner);
    let mut meta = HashMap::from([
        (STEP_KEY.to_string(), step),
        (DIGEST_KEY.to_string(), digest),
    ]);
    if let Some(id) = learner {
        meta.insert(LEARNER_KEY.to_string(), id.to_string());
    }
    write_tensors(path, &tensors, meta)
}

/// Reads a tuned run written by [`save_tuned`]; also returns the file's frozen head and
/// the learner id it carries. The checksum is verified (only files written before it
/// existed, which name no learner, may lack one), and every value must be finite.
pub fn load_tuned(
    path: &Path,
    dims: &BlockDims,
) -> Result<(TunedState, FrozenHead, Option<String>), WeightsError> {
    if !dims.is_valid() {
        return Err(WeightsError::Dims(*dims));
    }
    let f = TensorFile::open(path)?;
    // A file that names its learner was written with a checksum: one without has lost it.
    let expected = match (f.metadata(DIGEST_KEY), f.metadata(LEARNER_KEY)) {
        (Some(digest), _) => Some(digest),
        (None, Some(_)) => {
            return Err(WeightsError::Checksum {
                path: path.to_path_buf(),
            })
        }
        (None, None) => None,
    };
    if let Some(expected) = expected {
        let found = file_digest(&f.digest()?, f.metadata(STEP_KEY), f.metadata(LEARNER_KEY));
        if found != expected {
            return Err(WeightsError::Checksum {
                path: path.to_path_buf(),
            });
        }
    }
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
    if let Some(name) = first_non_finite(&state) {
        return Err(WeightsError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    let learner = f.metadata(LEARNER_KEY).map(str::to_string);
    Ok((state, f.frozen_head(dims)?, learner))
}

/// Writes a frozen block (the private mode's snapshot `θ'`): its parameters and the frozen
/// head, with the SHA-256 of its tensors and, when given, the learner's id; no `b`, no
/// optimiser moments (a third of a tuned file). Parameters holding NaN or an infinity are
/// refused.
pub fn save_block(
    path: &Path,
    dims: &BlockDims,
    params: &BlockParams,
    head: &FrozenHead,
    learner: Option<&str>,
) -> Result<(), WeightsError> {
    if params
        .tensors()
        .iter()
        .any(|t| t.iter().any(|v| !v.is_finite()))
    {
        return Err(WeightsError::NonFinite {
            path: path.to_path_buf(),
            name: "params".into(),
        });
    }
    let tensors = block_named_tensors(dims, params, head);
    let digest = file_digest(&tensors_digest(&tensors), None, learner);
    let mut meta = HashMap::from([(DIGEST_KEY.to_string(), digest)]);
    if let Some(id) = learner {
        meta.insert(LEARNER_KEY.to_string(), id.to_string());
    }
    write_tensors(path, &tensors, meta)
}

/// Reads a block written by [`save_block`]: its parameters, frozen head and learner id.
/// The checksum must be there and match, and every value must be finite.
pub fn load_block(
    path: &Path,
    dims: &BlockDims,
) -> Result<(BlockParams, FrozenHead, Option<String>), WeightsError> {
    if !dims.is_valid() {
        return Err(WeightsError::Dims(*dims));
    }
    let f = TensorFile::open(path)?;
    let checksum = || WeightsError::Checksum {
        path: path.to_path_buf(),
    };
    let expected = f.metadata(DIGEST_KEY).ok_or_else(checksum)?;
    if file_digest(&f.digest()?, None, f.metadata(LEARNER_KEY)) != expected {
        return Err(checksum());
    }
    let params = f.block_params(dims)?;
    let head = f.frozen_head(dims)?;
    let finite = |t: &[f32]| t.iter().all(|v| v.is_finite());
    if !params.tensors().iter().all(|t| finite(t)) || !head.tensors().iter().all(|t| finite(t)) {
        return Err(WeightsError::NonFinite {
            path: path.to_path_buf(),
            name: "params".into(),
        });
    }
    Ok((params, head, f.metadata(LEARNER_KEY).map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockParams;

    const DIMS: BlockDims = BlockDims {
        width: 8,
        heads: 2,
        mlp: 16,
        tokens: 3,
        embed: 4,
    };

    #[test]
    fn a_block_file_round_trips_and_is_refused_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.safetensors");
        let head = FrozenHead::random(&DIMS, 1);
        let params = BlockParams::random(&DIMS, 2);
        save_block(&path, &DIMS, &params, &head, Some("00ab")).unwrap();
        let (p, h, id) = load_block(&path, &DIMS).unwrap();
        assert_eq!(
            (p, h, id.as_deref()),
            (params.clone(), head.clone(), Some("00ab"))
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_block(&path, &DIMS),
            Err(WeightsError::Checksum { .. })
        ));
        let mut nan = params;
        nan.ln_1_w[0] = f32::NAN;
        assert!(save_block(&path, &DIMS, &nan, &head, None).is_err());
    }

    #[test]
    fn a_damaged_or_non_finite_tuned_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuned.safetensors");
        let head = FrozenHead::random(&DIMS, 1);
        let state = TunedState::fresh(&DIMS, BlockParams::random(&DIMS, 2));
        save_tuned(&path, &DIMS, &state, &head, None).unwrap();
        let (back, _, learner) = load_tuned(&path, &DIMS).unwrap();
        assert_eq!((back, learner), (state.clone(), None));

        // One flipped bit in the last tensor byte: the checksum catches it.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = load_tuned(&path, &DIMS).unwrap_err();
        assert!(matches!(e, WeightsError::Checksum { .. }), "{e}");

        // A learner's file whose checksum key was damaged is refused too.
        save_tuned(&path, &DIMS, &state, &head, Some("00000000000000ab")).unwrap();
        let (_, _, learner) = load_tuned(&path, &DIMS).unwrap();
        assert_eq!(learner.as_deref(), Some("00000000000000ab"));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(6)
            .position(|w| w == DIGEST_KEY.as_bytes())
            .unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = load_tuned(&path, &DIMS).unwrap_err();
        assert!(matches!(e, WeightsError::Checksum { .. }), "{e}");

        // Every single flipped bit of a learner's file is reported or harmless.
        save_tuned(&path, &DIMS, &state, &head, Some("00000000000000ab")).unwrap();
        let good = std::fs::read(&path).unwrap();
        let expected = load_tuned(&path, &DIMS).unwrap();
        let mut silent = Vec::new();
        // Every bit of the header's length and of its metadata (step, learner, checksum),
        // and one bit of every 13th byte of the rest (names, shapes, offsets, tensors),
        // which the checksum covers alike (all of them take a minute in a debug build).
        let meta = good.windows(12).position(|w| w == b"__metadata__").unwrap();
        let meta_end = meta + good[meta..].iter().position(|&b| b == b'}').unwrap();
        let every_bit = (0..8)
            .chain(meta..=meta_end)
            .flat_map(|i| (0..8).map(move |b| (i, b)));
        let some = (8..good.len()).step_by(13).map(|i| (i, i % 8));
        for (i, bit) in every_bit.chain(some) {
            let mut bytes = good.clone();
            bytes[i] ^= 1 << bit;
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(loaded) = load_tuned(&path, &DIMS) {
                if loaded != expected {
                    silent.push((i, bit));
                }
            }
        }
        assert!(silent.is_empty(), "flips read silently at {silent:?}");

        // NaN is never saved.
        let mut bad = state;
        bad.params.fc_w[3] = f32::NAN;
        let e = save_tuned(&path, &DIMS, &bad, &head, None).unwrap_err();
        assert!(matches!(e, WeightsError::NonFinite { .. }), "{e}");
        bad.params.fc_w[3] = 0.0;
        bad.optim.v_bias = f32::INFINITY;
        assert!(save_tuned(&path, &DIMS, &bad, &head, None).is_err());
    }
}
