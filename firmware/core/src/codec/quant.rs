//! Min/max quantisation with rounding, to 8 or 4 bits (two values per byte, low nibble
//! first), or raw little-endian f32 (`bits = 32`, no quantisation).

use crate::error::Error;

/// Bytes that `m` values take at `bits` bits, min/max excluded.
pub const fn packed_len(m: usize, bits: u8) -> usize {
    match bits {
        4 => m.div_ceil(2),
        8 => m,
        _ => 4 * m,
    }
}

/// Bytes of one quantised row: f32 min, f32 max, then the values.
pub const fn row_len(m: usize, bits: u8) -> usize {
    8 + packed_len(m, bits)
}

/// Quantises `x` into `out` (`row_len(x.len(), bits)` bytes).
pub fn quantise_row(x: &[f32], bits: u8, out: &mut [u8]) {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let (lo, hi) = if x.is_empty() { (0.0, 0.0) } else { (lo, hi) };
    out[0..4].copy_from_slice(&lo.to_le_bytes());
    out[4..8].copy_from_slice(&hi.to_le_bytes());
    let body = &mut out[8..];
    if bits == 32 {
        for (i, v) in x.iter().enumerate() {
            body[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let levels = ((1u32 << bits) - 1) as f32;
    let range = hi - lo;
    let q = |v: f32| -> u8 {
        if range > 0.0 {
            libm::roundf((v - lo) / range * levels).clamp(0.0, levels) as u8
        } else {
            0
        }
    };
    if bits == 8 {
        for (b, &v) in body.iter_mut().zip(x) {
            *b = q(v);
        }
    } else {
        for (i, pair) in x.chunks(2).enumerate() {
            let lo4 = q(pair[0]);
            let hi4 = pair.get(1).map_or(0, |&v| q(v));
            body[i] = lo4 | (hi4 << 4);
        }
    }
}

/// Reads value `i` of a quantised row (`row` = min, max, values).
#[inline]
pub fn dequantise(row: &[u8], bits: u8, i: usize) -> f32 {
    let lo = f32::from_le_bytes([row[0], row[1], row[2], row[3]]);
    let hi = f32::from_le_bytes([row[4], row[5], row[6], row[7]]);
    let body = &row[8..];
    match bits {
        32 => f32::from_le_bytes([
            body[4 * i],
            body[4 * i + 1],
            body[4 * i + 2],
            body[4 * i + 3],
        ]),
        8 => lo + (hi - lo) * (body[i] as f32 / 255.0),
        _ => {
            let b = body[i / 2];
            let q = if i.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            };
            lo + (hi - lo) * (q as f32 / 15.0)
        }
    }
}

/// Checks that `bits` is one of 4, 8, 32.
pub fn check_bits(bits: u8) -> Result<(), Error> {
    match bits {
        4 | 8 | 32 => Ok(()),
        _ => Err(Error::InvalidShape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_half_a_step() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for bits in [4u8, 8, 32] {
            let mut row = vec![0u8; row_len(x.len(), bits)];
            quantise_row(&x, bits, &mut row);
            let step = if bits == 32 {
                0.0
            } else {
                6.0 / ((1u32 << bits) - 1) as f32
            };
            for (i, &v) in x.iter().enumerate() {
                let e = (dequantise(&row, bits, i) - v).abs();
                assert!(e <= step / 2.0 + 1e-5, "bits {bits}: {e}");
            }
        }
    }

    #[test]
    fn constant_rows() {
        let x = [1.5f32; 5];
        let mut row = vec![0u8; row_len(5, 4)];
        quantise_row(&x, 4, &mut row);
        assert_eq!(dequantise(&row, 4, 3), 1.5);
    }
}
