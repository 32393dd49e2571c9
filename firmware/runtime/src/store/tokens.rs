//! Token records: the SPEC §5 codec applied with the original block's CLS→patch attention.

use anytime_core::codec::{
    decode, encode, encode_scratch_len, encoded_len, record_shape, CodecParams,
};
use anytime_core::Error as CoreError;

use crate::block::LastBlock;

/// SPEC §5 weights of each image in `tokens` (`[B, N, D]`): `w_CLS = 1`, patches the
/// head-averaged softmax of the original block's CLS→patch attention. Returns `[B, N]`.
pub fn token_weights(original: &LastBlock, tokens: &[f32], batch: usize) -> Vec<f32> {
    let n = original.dims.tokens;
    let att = original.cls_attention(tokens, batch);
    let mut w = Vec::with_capacity(batch * n);
    for b in 0..batch {
        w.push(1.0);
        w.extend_from_slice(&att[b * (n - 1)..(b + 1) * (n - 1)]);
    }
    w
}

/// Encodes one image's tokens (`n×d`) with weights `w` (`n`).
pub fn encode_tokens(
    tokens: &[f32],
    w: &[f32],
    n: usize,
    d: usize,
    params: &CodecParams,
) -> Result<Vec<u8>, CoreError> {
    let mut scratch = vec![0f32; encode_scratch_len(n, d, params.k as usize)];
    let mut out = vec![0u8; encoded_len(n, d, params)];
    let len = encode(tokens, w, n, d, params, &mut scratch, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// Decodes a token record into `n×d` tokens; returns them with `(n, d)`.
pub fn decode_tokens(record: &[u8]) -> Result<(Vec<f32>, usize, usize), CoreError> {
    let (n, d, _) = record_shape(record)?;
    let mut out = vec![0f32; n * d];
    decode(record, &mut out)?;
    Ok((out, n, d))
}
