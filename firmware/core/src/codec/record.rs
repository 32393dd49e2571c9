//! The codec record: header, quantised mean, directions and coefficients (see `FORMAT.md`).

use crate::codec::pca::{dot, orthonormalise, sym_eigen};
use crate::codec::quant::{
    add_scaled_row, check_bits, dequantise, dequantise_row_into, quantise_row, row_len,
};
use crate::error::Error;

/// Version byte of a codec record.
pub const CODEC_VERSION: u8 = 1;
/// Bytes of the codec record header.
pub const CODEC_HEADER_LEN: usize = 8;
/// Flag in the header's bits byte: the record was encoded with plain PCA (unweighted).
const PLAIN_PCA: u8 = 0x80;

/// How one image's tokens are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecParams {
    /// Principal directions kept (1 ≤ k ≤ N).
    pub k: u16,
    /// 8 or 4 (quantised), or 32 (raw f32, no quantisation).
    pub bits: u8,
    /// Use the attention weights for the mean and the directions (SPEC §5); `false` gives
    /// plain PCA (all weights 1).
    pub weighted: bool,
}

impl CodecParams {
    /// The configuration of SPEC §5: k = 5, 8 bits, weighted.
    pub const DEFAULT: CodecParams = CodecParams {
        k: 5,
        bits: 8,
        weighted: true,
    };
}

/// Bytes of the record for `n` tokens of width `d`.
pub const fn encoded_len(n: usize, d: usize, p: &CodecParams) -> usize {
    let k = p.k as usize;
    CODEC_HEADER_LEN + row_len(d, p.bits) + k * row_len(d, p.bits) + n * row_len(k, p.bits)
}

/// `f32`s of scratch [`encode`] needs.
pub const fn encode_scratch_len(n: usize, d: usize, k: usize) -> usize {
    n * d + n * n + k * d + n * k + 3 * n + d + k
}

/// Shape `(n, d)` and parameters stored in a record's header.
pub fn record_shape(rec: &[u8]) -> Result<(usize, usize, CodecParams), Error> {
    if rec.len() < CODEC_HEADER_LEN || rec[0] != CODEC_VERSION {
        return Err(Error::CorruptCodecRecord);
    }
    let bits = rec[1] & !PLAIN_PCA;
    let weighted = rec[1] & PLAIN_PCA == 0;
    check_bits(bits).map_err(|_| Error::CorruptCodecRecord)?;
    let k = u16::from_le_bytes([rec[2], rec[3]]);
    let n = u16::from_le_bytes([rec[4], rec[5]]) as usize;
    let d = u16::from_le_bytes([rec[6], rec[7]]) as usize;
    let p = CodecParams { k, bits, weighted };
    if k == 0 || n == 0 || d == 0 || k as usize > n || rec.len() < encoded_len(n, d, &p) {
        return Err(Error::CorruptCodecRecord);
    }
    Ok((n, d, p))
}

/// Encodes the tokens `t` (`n×d`, row-major) with weights `w` (`n`) into `out`; returns the
/// record length. `scratch` holds at least [`encode_scratch_len`] `f32`s. No allocation.
///
/// μ = Σ wᵢ Tᵢ / Σ wᵢ; V = top-k eigen-directions of the weighted centred tokens
/// `√wᵢ (Tᵢ − μ)`, found from their N×N Gram matrix; C = (T − μ) Vᵀ on the unweighted tokens.
pub fn encode(
    t: &[f32],
    w: &[f32],
    n: usize,
    d: usize,
    p: &CodecParams,
    scratch: &mut [f32],
    out: &mut [u8],
) -> Result<usize, Error> {
    let k = p.k as usize;
    check_bits(p.bits)?;
    // (k ≥ 1 and k ≤ n: n ≥ 1)
    if d == 0 || k == 0 || k > n || n > u16::MAX as usize || d > u16::MAX as usize {
        return Err(Error::InvalidShape);
    }
    if t.len() != n * d
        || w.len() != n
        || w.iter().any(|&x| x.is_nan() || x < 0.0 || !x.is_finite())
    {
        return Err(Error::InvalidShape);
    }
    let need = encoded_len(n, d, p);
    if out.len() < need {
        return Err(Error::BufferTooSmall {
            needed: need as u32,
            got: out.len() as u32,
        });
    }
    if scratch.len() < encode_scratch_len(n, d, k) {
        return Err(Error::BufferTooSmall {
            needed: encode_scratch_len(n, d, k) as u32,
            got: scratch.len() as u32,
        });
    }
    let (x, rest) = scratch.split_at_mut(n * d);
    let (g, rest) = rest.split_at_mut(n * n);
    let (v, rest) = rest.split_at_mut(k * d);
    let (c, rest) = rest.split_at_mut(n * k);
    let (sw, rest) = rest.split_at_mut(n);
    let (eig, rest) = rest.split_at_mut(n);
    let (off, rest) = rest.split_at_mut(n);
    let (mu, rest) = rest.split_at_mut(d);
    let norms = &mut rest[..k];

    // Weights and the weighted mean.
    for i in 0..n {
        sw[i] = if p.weighted { w[i] } else { 1.0 };
    }
    let wsum: f64 = sw.iter().map(|&x| x as f64).sum();
    if wsum <= 0.0 {
        return Err(Error::InvalidShape);
    }
    for j in 0..d {
        let s: f64 = (0..n).map(|i| sw[i] as f64 * t[i * d + j] as f64).sum();
        mu[j] = (s / wsum) as f32;
    }
    for i in 0..n {
        for j in 0..d {
            x[i * d + j] = t[i * d + j] - mu[j];
        }
        sw[i] = libm::sqrtf(sw[i]);
    }
    // Gram matrix of the weighted centred tokens (its lower triangle: all the solver reads).
    for i in 0..n {
        for j in 0..=i {
            let v =
                sw[i] as f64 * sw[j] as f64 * dot(&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
            g[i * n + j] = v as f32;
        }
    }
    sym_eigen(g, eig, off, n);
    // Top-k eigenvectors -> D-space directions.
    for r in 0..k {
        let mut best = 0;
        for i in 1..n {
            if eig[i] > eig[best] {
                best = i;
            }
        }
        eig[best] = f32::NEG_INFINITY;
        let row = &mut v[r * d..(r + 1) * d];
        row.fill(0.0);
        for i in 0..n {
            let a = sw[i] * g[i * n + best];
            if a != 0.0 {
                for (o, &xv) in row.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                    *o += a * xv;
                }
            }
        }
        norms[r] = libm::sqrt(dot(row, row)) as f32;
    }
    orthonormalise(v, k, d, norms);
    // Coefficients of the unweighted centred tokens.
    for i in 0..n {
        for r in 0..k {
            c[i * k + r] = dot(&x[i * d..(i + 1) * d], &v[r * d..(r + 1) * d]) as f32;
        }
    }
    // Serialise.
    out[0] = CODEC_VERSION;
    out[1] = if p.weighted {
        p.bits
    } else {
        p.bits | PLAIN_PCA
    };
    out[2..4].copy_from_slice(&p.k.to_le_bytes());
    out[4..6].copy_from_slice(&(n as u16).to_le_bytes());
    out[6..8].copy_from_slice(&(d as u16).to_le_bytes());
    let (rd, rk) = (row_len(d, p.bits), row_len(k, p.bits));
    let mut at = CODEC_HEADER_LEN;
    quantise_row(mu, p.bits, &mut out[at..at + rd]);
    at += rd;
    for r in 0..k {
        quantise_row(&v[r * d..(r + 1) * d], p.bits, &mut out[at..at + rd]);
        at += rd;
    }
    for i in 0..n {
        quantise_row(&c[i * k..(i + 1) * k], p.bits, &mut out[at..at + rk]);
        at += rk;
    }
    Ok(at)
}

/// Decodes a record into `out` (`n×d` row-major): T̂ = C V + μ. Returns `(n, d)`.
/// No allocation, no scratch. Each output row is μ plus its coefficients times the
/// direction rows, added in direction order (the bits do not depend on the loop order).
pub fn decode(rec: &[u8], out: &mut [f32]) -> Result<(usize, usize), Error> {
    let (n, d, p) = record_shape(rec)?;
    let k = p.k as usize;
    if out.len() < n * d {
        return Err(Error::BufferTooSmall {
            needed: (n * d) as u32,
            got: out.len() as u32,
        });
    }
    let (rd, rk) = (row_len(d, p.bits), row_len(k, p.bits));
    let mu = &rec[CODEC_HEADER_LEN..CODEC_HEADER_LEN + rd];
    let vs = &rec[CODEC_HEADER_LEN + rd..CODEC_HEADER_LEN + rd + k * rd];
    let cs = &rec[CODEC_HEADER_LEN + rd + k * rd..];
    let out = &mut out[..n * d];
    dequantise_row_into(mu, p.bits, &mut out[..d]);
    for i in 1..n {
        out.copy_within(0..d, i * d);
    }
    for (orow, crow) in out.chunks_exact_mut(d).zip(cs.chunks_exact(rk)) {
        for (r, vrow) in vs.chunks_exact(rd).enumerate() {
            let coef = dequantise(crow, p.bits, r);
            if coef != 0.0 {
                add_scaled_row(orow, coef, vrow, p.bits);
            }
        }
    }
    Ok((n, d))
}
