//! The flat GPU layout of the trainable parameters: the twelve block tensors in
//! [`block_tensor_shapes`] order, then the "other" bias `b`. Gradients and both Adam
//! moments use the same layout, so the optimiser walks one set of offsets.

use crate::block::{block_tensor_shapes, is_decayed, BlockDims, BlockParams};

/// Tensor indices in [`block_tensor_shapes`] order.
pub(crate) mod t {
    pub const LN1_W: usize = 0;
    pub const LN1_B: usize = 1;
    pub const IN_W: usize = 2;
    pub const IN_B: usize = 3;
    pub const OUT_W: usize = 4;
    pub const OUT_B: usize = 5;
    pub const LN2_W: usize = 6;
    pub const LN2_B: usize = 7;
    pub const FC_W: usize = 8;
    pub const FC_B: usize = 9;
    pub const CPROJ_W: usize = 10;
    pub const CPROJ_B: usize = 11;
}

/// Offsets (in f32 elements) of every tensor in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParamLayout {
    /// Start of tensor `i`.
    pub offsets: [u32; 12],
    /// Length of tensor `i`.
    pub lens: [u32; 12],
    /// Whether tensor `i` takes weight decay.
    pub decayed: [bool; 12],
    /// Offset of `b` (= number of block scalars).
    pub bias: u32,
}

impl ParamLayout {
    /// The layout for `dims`; `None` when it does not fit u32 offsets.
    pub(crate) fn new(dims: &BlockDims) -> Option<Self> {
        let shapes = block_tensor_shapes(dims);
        let mut offsets = [0u32; 12];
        let mut lens = [0u32; 12];
        let mut decayed = [false; 12];
        let mut at: u64 = 0;
        for (i, (name, shape)) in shapes.iter().enumerate() {
            let len = shape.iter().product::<usize>() as u64;
            offsets[i] = u32::try_from(at).ok()?;
            lens[i] = u32::try_from(len).ok()?;
            decayed[i] = is_decayed(name);
            at += len;
        }
        Some(ParamLayout {
            offsets,
            lens,
            decayed,
            bias: u32::try_from(at).ok()?,
        })
    }

    /// Elements of a flat buffer (block scalars and `b`).
    pub(crate) fn len(&self) -> usize {
        self.bias as usize + 1
    }

    /// `params` and `extra` (`b`, or its moment) as one flat vector.
    pub(crate) fn flatten(&self, params: &BlockParams, extra: f32) -> Vec<f32> {
        let mut flat = Vec::with_capacity(self.len());
        for t in params.tensors() {
            flat.extend_from_slice(t);
        }
        flat.push(extra);
        debug_assert_eq!(flat.len(), self.len());
        flat
    }

    /// The inverse of [`ParamLayout::flatten`].
    pub(crate) fn unflatten(&self, dims: &BlockDims, flat: &[f32]) -> (BlockParams, f32) {
        let mut p = BlockParams::zeros(dims);
        for (i, t) in p.tensors_mut().into_iter().enumerate() {
            let at = self.offsets[i] as usize;
            t.copy_from_slice(&flat[at..at + self.lens[i] as usize]);
        }
        (p, flat[self.bias as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_round_trips_and_offsets_follow_the_shapes() {
        let dims = BlockDims {
            width: 8,
            heads: 2,
            mlp: 16,
            tokens: 5,
            embed: 4,
        };
        let layout = ParamLayout::new(&dims).unwrap();
        let p = BlockParams::random(&dims, 3);
        assert_eq!(layout.len(), p.len() + 1);
        assert_eq!(layout.offsets[t::IN_W], 16);
        assert_eq!(layout.lens[t::IN_W], 3 * 8 * 8);
        assert!(
            layout.decayed.iter().all(|&d| d),
            "SPEC §4: every block tensor decays"
        );
        let flat = layout.flatten(&p, 0.25);
        let (q, b) = layout.unflatten(&dims, &flat);
        assert_eq!(p, q);
        assert_eq!(b, 0.25);
    }
}
