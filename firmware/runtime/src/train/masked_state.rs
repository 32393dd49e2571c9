//! The trainable state of `L_r` beside the block: the mask token, its positional table and
//! the head, their AdamW moments and step count, and its byte codec.
//!
//! Format, version 2, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `AEMS` |
//! | 4..6 | version (u16, 2) |
//! | 6..10 | token width `D` (u32) |
//! | 10..14 | tokens per image `N`, CLS included (u32) |
//! | 14..22 | step count (u64) |
//! | 22.. | f32: the head (mask token `[D]`, positional table `[N−1, D]`, `W_r` `[D, D]`, `b_r` `[D]`), then the first moments, then the second moments, each in that order |
//! | last 4 | CRC-32 (ISO-HDLC) of every byte before it |
//!
//! `12·(D² + (N+1)·D) + 26` bytes in all. Version 1 (no positional table, no `N`) is
//! refused by its version: it was never released.

use anytime_linalg::AlignedVec;

use super::adamw::{count_step, update_all};
use super::{MaskedHead, TrainConfig, TrainError};
use crate::block::BlockDims;

/// The head's tensors, in [`MaskedHead::tensors`] order.
pub const HEAD_TENSORS: [&str; 4] = ["mask_token", "pos", "w_r", "b_r"];

/// Whether AdamW decays the head's tensor `name`: `W_r` only. `b_r` is the offset of the
/// regression, not a weight to keep small; decaying the mask token would pull it
/// towards zero, LN1's degenerate input (see [`MaskedHead::init`]); decaying the
/// positional table would pull its rows towards zero, where every masked position of an
/// image looks the same to the block (timm's ViT likewise leaves its learned positional
/// embedding undecayed).
pub fn head_is_decayed(name: &str) -> bool {
    name == "w_r"
}

const MAGIC: [u8; 4] = *b"AEMS";
const VERSION: u16 = 2;
/// Bytes before the tensors.
const HEADER_LEN: usize = 22;

/// The mask token, positional table and head of `L_r` ([`MaskedHead`]), their AdamW
/// moments (same shapes) and their own step count. The caller owns it and passes it to
/// each [`super::TrainBackend::masked_step`].
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedState {
    pub head: MaskedHead,
    pub m: MaskedHead,
    pub v: MaskedHead,
    /// Updates applied so far.
    pub step: u64,
}

/// Why a [`MaskedState`] was not encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MaskedStateError {
    #[error("masked state of {found} bytes, expected {expected}")]
    Length { expected: usize, found: usize },
    #[error("not a masked state (magic {found:02x?})")]
    Magic { found: [u8; 4] },
    #[error("masked state version {found} (this build reads {VERSION})")]
    Version { found: u16 },
    #[error("masked state of token width {found}, the block's is {expected}")]
    Width { expected: usize, found: u32 },
    #[error("masked state of {found} tokens per image, the block's is {expected}")]
    Tokens { expected: usize, found: u32 },
    #[error("masked state: checksum mismatch (damaged bytes)")]
    Checksum,
    #[error("masked state: `{tensor}` holds NaN or an infinity")]
    NonFinite { tensor: &'static str },
    #[error(
        "masked state: `{tensor}` has {found} values, the width {width} and {tokens} tokens \
         ask for {expected}"
    )]
    Shape {
        tensor: &'static str,
        width: usize,
        tokens: usize,
        expected: usize,
        found: usize,
    },
}

impl MaskedState {
    /// `head` with zero moments, step 0.
    pub fn fresh(dims: &BlockDims, head: MaskedHead) -> Self {
        MaskedState {
            head,
            m: MaskedHead::zeros(dims),
            v: MaskedHead::zeros(dims),
            step: 0,
        }
    }

    /// The start of training: [`MaskedHead::init`], zero moments, step 0.
    pub fn init(dims: &BlockDims, seed: u64) -> Self {
        Self::fresh(dims, MaskedHead::init(dims, seed))
    }

    /// Refuses a state whose tensors do not have the shapes of `dims`.
    pub(crate) fn check(&self, dims: &BlockDims) -> Result<(), TrainError> {
        if [&self.head, &self.m, &self.v]
            .iter()
            .all(|h| h.matches(dims))
        {
            Ok(())
        } else {
            Err(TrainError::MaskedStateDims(*dims))
        }
    }

    /// The twelve tensors with their names, in the byte order of the format.
    fn named(&self) -> [(&'static str, &[f32]); 12] {
        let [a, b, c, d] = self.head.tensors();
        let [e, f, g, h] = self.m.tensors();
        let [i, j, k, l] = self.v.tensors();
        [
            ("head.mask_token", a),
            ("head.pos", b),
            ("head.w_r", c),
            ("head.b_r", d),
            ("m.mask_token", e),
            ("m.pos", f),
            ("m.w_r", g),
            ("m.b_r", h),
            ("v.mask_token", i),
            ("v.pos", j),
            ("v.w_r", k),
            ("v.b_r", l),
        ]
    }

    /// The first tensor holding NaN or an infinity, if any.
    pub fn first_non_finite(&self) -> Option<&'static str> {
        let named = self.named();
        let bad = named.iter().find(|(_, t)| t.iter().any(|v| !v.is_finite()));
        bad.map(|&(name, _)| name)
    }

    /// Bytes of the encoding of a state of token width `width` and `tokens` tokens per
    /// image (CLS included, at least 1).
    pub fn encoded_len(width: usize, tokens: usize) -> usize {
        HEADER_LEN + 4 * 3 * (width * width + (tokens + 1) * width) + 4
    }

    /// The version 2 encoding (module docs). A state holding NaN or an infinity, or whose
    /// tensors disagree on the width (that of its mask token) or on the tokens per image
    /// (one more than the rows of its positional table), is refused.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MaskedStateError> {
        let width = self.head.mask_token.len();
        let tokens = self.head.pos.len().checked_div(width).unwrap_or(0) + 1;
        let expected = [width, (tokens - 1) * width, width * width, width];
        for (i, (name, t)) in self.named().into_iter().enumerate() {
            if t.len() != expected[i % 4] {
                return Err(MaskedStateError::Shape {
                    tensor: name,
                    width,
                    tokens,
                    expected: expected[i % 4],
                    found: t.len(),
                });
            }
        }
        if let Some(tensor) = self.first_non_finite() {
            return Err(MaskedStateError::NonFinite { tensor });
        }
        let mut out = Vec::with_capacity(Self::encoded_len(width, tokens));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(width as u32).to_le_bytes());
        out.extend_from_slice(&(tokens as u32).to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        for (_, t) in self.named() {
            t.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        let crc = anytime_core::crc32::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Reads a version 2 encoding for a block of `dims`: the length, magic, version,
    /// width, tokens per image and checksum are checked, and every value must be finite.
    pub fn from_bytes(bytes: &[u8], dims: &BlockDims) -> Result<Self, MaskedStateError> {
        let (d, n) = (dims.width, dims.tokens);
        let length = |expected: usize| MaskedStateError::Length {
            expected,
            found: bytes.len(),
        };
        if bytes.len() < HEADER_LEN {
            return Err(length(Self::encoded_len(d, n)));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(MaskedStateError::Magic { found: magic });
        }
        let version = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
        if version != VERSION {
            return Err(MaskedStateError::Version { found: version });
        }
        let width = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes"));
        if width as u64 != d as u64 {
            return Err(MaskedStateError::Width {
                expected: d,
                found: width,
            });
        }
        let tokens = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes"));
        if tokens as u64 != n as u64 {
            return Err(MaskedStateError::Tokens {
                expected: n,
                found: tokens,
            });
        }
        let expected = Self::encoded_len(d, n);
        if bytes.len() != expected {
            return Err(length(expected));
        }
        let (body, crc) = bytes.split_at(expected - 4);
        if anytime_core::crc32::crc32(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err(MaskedStateError::Checksum);
        }
        let step = u64::from_le_bytes(body[14..22].try_into().expect("8 bytes"));
        let mut floats = body[HEADER_LEN..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
        let mut head = || {
            let mut h = MaskedHead::zeros(dims);
            for t in h.tensors_mut() {
                t.iter_mut()
                    .for_each(|x| *x = floats.next().expect("the length was checked"));
            }
            h
        };
        let (head, m, v) = (head(), head(), head());
        let state = MaskedState { head, m, v, step };
        if let Some(tensor) = state.first_non_finite() {
            return Err(MaskedStateError::NonFinite { tensor });
        }
        Ok(state)
    }

    /// One AdamW update of the mask token, positional table and head by `grads`, as a step
    /// of this state's own count, decayed as [`head_is_decayed`] says.
    pub(crate) fn update(&mut self, cfg: &TrainConfig, grads: &MaskedHead, prefetch: bool) {
        let k = count_step(cfg, &mut self.step).prefetching(prefetch);
        let parts = self
            .head
            .tensors_mut()
            .into_iter()
            .zip(grads.tensors())
            .zip(self.m.tensors_mut().into_iter().zip(self.v.tensors_mut()))
            .zip(HEAD_TENSORS);
        let tensors = parts
            .map(|(((p, g), (m, v)), name)| {
                let (p, m, v): (&mut AlignedVec, &mut AlignedVec, &mut AlignedVec) = (p, m, v);
                let decay = head_is_decayed(name);
                (decay, &mut p[..], g, &mut m[..], &mut v[..])
            })
            .collect();
        update_all(k, tensors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: BlockDims = BlockDims {
        width: 4,
        heads: 2,
        mlp: 8,
        // 5 rows of the positional table: not the length of `W_r` (4·4), to tell them apart.
        tokens: 6,
        embed: 2,
    };

    /// A state whose every value is set by a formula (no random generator, so that the
    /// golden file does not depend on one).
    fn formula_state() -> MaskedState {
        let mut s = MaskedState::fresh(&DIMS, MaskedHead::zeros(&DIMS));
        let mut i = 0u32;
        for h in [&mut s.head, &mut s.m, &mut s.v] {
            for t in h.tensors_mut() {
                for x in t.iter_mut() {
                    i += 1;
                    *x = (i as f32 * 0.37).sin() * if i.is_multiple_of(3) { 1e-3 } else { 1.0 };
                }
            }
        }
        s.v.tensors_mut()
            .into_iter()
            .for_each(|t| t.iter_mut().for_each(|x| *x = x.abs()));
        s.step = 0x0102_0304_0506_0708;
        s
    }

    /// Re-seals `bytes` with the CRC of its body (to reach the checks after it).
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - 4;
        let crc = anytime_core::crc32::crc32(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn masked_state_round_trips_bit_exact() {
        let s = formula_state();
        let bytes = s.to_bytes().unwrap();
        assert_eq!(bytes.len(), MaskedState::encoded_len(4, 6));
        assert_eq!(bytes.len(), 12 * (16 + 7 * 4) + 26);
        assert_eq!(MaskedState::from_bytes(&bytes, &DIMS).unwrap(), s);
        let init = MaskedState::init(&DIMS, 3);
        let back = MaskedState::from_bytes(&init.to_bytes().unwrap(), &DIMS).unwrap();
        assert_eq!(back, init);
    }

    #[test]
    fn masked_state_bytes_are_refused_when_damaged_truncated_foreign_or_not_finite() {
        use MaskedStateError as E;
        let s = formula_state();
        let good = s.to_bytes().unwrap();
        let read = |b: &[u8]| MaskedState::from_bytes(b, &DIMS);
        // Truncated anywhere, or with a byte too many.
        for cut in [0, 3, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
            let want = E::Length {
                expected: good.len(),
                found: cut,
            };
            assert_eq!(read(&good[..cut]).unwrap_err(), want);
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(read(&long), Err(E::Length { .. })));
        // Another version, another magic, another width, other tokens per image.
        let mut v3 = good.clone();
        v3[4] = 3;
        assert_eq!(read(&v3).unwrap_err(), E::Version { found: 3 });
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(read(&magic), Err(E::Magic { .. })));
        let wide = BlockDims { width: 8, ..DIMS };
        let e = MaskedState::from_bytes(&good, &wide).unwrap_err();
        assert_eq!(
            e,
            E::Width {
                expected: 8,
                found: 4
            }
        );
        let longer = BlockDims { tokens: 7, ..DIMS };
        let e = MaskedState::from_bytes(&good, &longer).unwrap_err();
        assert_eq!(
            e,
            E::Tokens {
                expected: 7,
                found: 6
            }
        );
        // Every single flipped bit is caught.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                assert!(read(&b).is_err(), "bit {bit} of byte {i} read silently");
            }
        }
        // NaN or an infinity, even under a valid checksum, is refused; and never written.
        for (at, value) in [
            (HEADER_LEN + 4 * 5, f32::NAN),
            (good.len() - 8, f32::INFINITY),
        ] {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
            reseal(&mut b);
            assert!(matches!(read(&b), Err(E::NonFinite { .. })), "{at}");
        }
        let mut bad = s.clone();
        bad.m.w[2] = f32::NAN;
        assert_eq!(
            bad.to_bytes().unwrap_err(),
            E::NonFinite { tensor: "m.w_r" }
        );
        let mut odd = s.clone();
        odd.v.b = AlignedVec::zeros(3);
        assert!(matches!(
            odd.to_bytes(),
            Err(E::Shape {
                tensor: "v.b_r",
                ..
            })
        ));
        // A moment's table of another length than the head's (whose rows set `N`).
        let mut odd = s;
        odd.m.pos = AlignedVec::zeros(4 * 4);
        assert_eq!(
            odd.to_bytes().unwrap_err(),
            E::Shape {
                tensor: "m.pos",
                width: 4,
                tokens: 6,
                expected: 20,
                found: 16
            }
        );
    }

    /// The golden file of version 2 (`tests/data/masked_state_v2.bin`, written by this
    /// test under `ANYTIME_EDGE_WRITE_GOLDEN=1` only where absent) decodes to the state it
    /// was written from, and is what this build writes.
    #[test]
    fn masked_state_golden_file_of_version_2_reads() {
        let s = formula_state();
        let fresh = s.to_bytes().unwrap();
        let path = data("masked_state_v2.bin");
        if std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1") && !path.exists() {
            std::fs::write(&path, &fresh).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(VERSION, 2, "a new version needs a new golden file");
        assert_eq!(MaskedState::from_bytes(&golden, &DIMS).unwrap(), s);
        assert_eq!(
            golden, fresh,
            "this build writes other bytes than version 2's"
        );
    }

    /// The golden file of version 1 (`tests/data/masked_state_v1.bin`, no positional
    /// table) is refused by its version, whatever the dims.
    #[test]
    fn masked_state_of_version_1_is_refused_by_its_version() {
        let path = data("masked_state_v1.bin");
        let v1 = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for dims in [DIMS, BlockDims { tokens: 5, ..DIMS }] {
            let e = MaskedState::from_bytes(&v1, &dims).unwrap_err();
            assert_eq!(e, MaskedStateError::Version { found: 1 });
        }
    }

    fn data(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    #[test]
    fn only_w_r_is_decayed() {
        let decayed: Vec<bool> = HEAD_TENSORS.iter().map(|n| head_is_decayed(n)).collect();
        assert_eq!(decayed, [false, false, true, false]);
    }
}
