//! Reductions in f64 over f32 data with eight independent partial sums: the compiler
//! vectorises them (a single running sum is one long chain of dependent additions), and
//! the order of additions is fixed, so results stay deterministic.

const LANES: usize = 8;

/// Folds `f(i)` for `i in 0..len` into eight partial sums, then adds those in order.
#[inline(always)]
pub(crate) fn fold8(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let full = len / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    for (l, i) in (full..len).enumerate() {
        acc[l] += f(i);
    }
    acc.iter().sum()
}

/// Folds `f(x[i])` over a slice as [`fold8`] does (the same partial sums in the same
/// order), walking it in chunks of eight so that no index is bounds-checked and the
/// compiler vectorises the loop.
#[inline(always)]
fn fold8_slice(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    acc.iter().sum()
}

/// `Σ x`.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f64 {
    fold8_slice(x, |v| v as f64)
}

/// `Σ (x − c)²`.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], c: f64) -> f64 {
    fold8_slice(x, |v| {
        let v = v as f64 - c;
        v * v
    })
}

/// `Σ a·b` (the products in f64).
pub(crate) fn dot(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    fold8(a.len(), |i| a[i] as f64 * b[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_a_plain_loop() {
        for len in [0, 1, 7, 8, 9, 100, 768] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..len).map(|i| (i as f64 * 0.11).cos()).collect();
            let plain: f64 = x.iter().map(|&v| v as f64).sum();
            // The slice walk adds in `fold8`'s order, bit for bit.
            assert_eq!(sum(&x).to_bits(), fold8(len, |i| x[i] as f64).to_bits());
            assert!((sum(&x) - plain).abs() < 1e-12);
            let dev: f64 = x.iter().map(|&v| (v as f64 - 0.25).powi(2)).sum();
            assert!((sum_sq_dev(&x, 0.25) - dev).abs() < 1e-12);
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b).sum();
            assert!((dot(&x, &y) - d).abs() < 1e-12);
        }
    }
}
