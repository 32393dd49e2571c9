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

/// Min and max of a quantised row.
#[inline]
fn bounds(row: &[u8]) -> (f32, f32) {
    (
        f32::from_le_bytes([row[0], row[1], row[2], row[3]]),
        f32::from_le_bytes([row[4], row[5], row[6], row[7]]),
    )
}

/// Calls `f(j, value j)` for each of the `out_len` values of a quantised row, in order,
/// with the bits of [`dequantise`].
#[inline(always)]
fn for_each_value(row: &[u8], bits: u8, out_len: usize, mut f: impl FnMut(usize, f32)) {
    let (lo, hi) = bounds(row);
    let range = hi - lo;
    let body = &row[8..];
    match bits {
        32 => {
            for (j, c) in body.chunks_exact(4).take(out_len).enumerate() {
                f(j, f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        8 => {
            for (j, &q) in body.iter().take(out_len).enumerate() {
                f(j, lo + range * (q as f32 / 255.0));
            }
        }
        _ => {
            for (j, &b) in body.iter().enumerate().take(out_len.div_ceil(2)) {
                f(2 * j, lo + range * ((b & 0x0F) as f32 / 15.0));
                if 2 * j + 1 < out_len {
                    f(2 * j + 1, lo + range * ((b >> 4) as f32 / 15.0));
                }
            }
        }
    }
}

/// Writes the values of a quantised row into `out` (`out.len()` values), with the bits of
/// [`dequantise`].
pub fn dequantise_row_into(row: &[u8], bits: u8, out: &mut [f32]) {
    let n = out.len();
    for_each_value(row, bits, n, |j, v| out[j] = v);
}

/// `out[j] += coef · value j` of a quantised row, for `j < out.len()`, with the bits of
/// [`dequantise`] and one rounding for the product and one for the sum (no fused
/// multiply-add).
pub fn add_scaled_row(out: &mut [f32], coef: f32, row: &[u8], bits: u8) {
    let n = out.len();
    match bits {
        // the two quantised cases as straight loops the compiler vectorises
        8 => {
            let (lo, hi) = bounds(row);
            let range = hi - lo;
            for (o, &q) in out.iter_mut().zip(&row[8..8 + n]) {
                *o += coef * (lo + range * (q as f32 / 255.0));
            }
        }
        4 => {
            let (lo, hi) = bounds(row);
            let range = hi - lo;
            let body = &row[8..8 + n.div_ceil(2)];
            let (pairs, tail) = out.split_at_mut(n & !1);
            for (o, &b) in pairs.chunks_exact_mut(2).zip(body) {
                o[0] += coef * (lo + range * ((b & 0x0F) as f32 / 15.0));
                o[1] += coef * (lo + range * ((b >> 4) as f32 / 15.0));
            }
            if let Some(t) = tail.first_mut() {
                *t += coef * (lo + range * ((body[n / 2] & 0x0F) as f32 / 15.0));
            }
        }
        _ => for_each_value(row, bits, n, |j, v| out[j] += coef * v),
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
    fn row_helpers_give_the_bits_of_dequantise() {
        // An odd and an even length: a 4-bit row's last byte holds one value or two.
        for (len, bits) in [37usize, 36]
            .into_iter()
            .flat_map(|l| [4u8, 8, 32].map(|b| (l, b)))
        {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 11.0)
                .collect();
            let mut row = vec![0u8; row_len(x.len(), bits)];
            quantise_row(&x, bits, &mut row);
            let mut all = vec![0f32; x.len()];
            dequantise_row_into(&row, bits, &mut all);
            let mut acc: Vec<f32> = (0..x.len()).map(|j| j as f32 * 0.5).collect();
            add_scaled_row(&mut acc, -1.25, &row, bits);
            for j in 0..x.len() {
                let v = dequantise(&row, bits, j);
                assert_eq!(all[j].to_bits(), v.to_bits(), "bits {bits}, value {j}");
                let want = j as f32 * 0.5 + -1.25 * v;
                assert_eq!(acc[j].to_bits(), want.to_bits(), "bits {bits}, value {j}");
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
