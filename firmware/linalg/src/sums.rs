//! Reductions in f64 over f32 data with eight independent partial sums: the compiler
//! vectorises them (a single running sum is one long chain of dependent additions), and
//! the order of additions is fixed, so results stay deterministic.

const LANES: usize = 8;

/// Folds `f(i)` for `i in 0..len` into eight partial sums, then adds those in order.
#[inline(always)]
pub fn fold8(len: usize, f: impl Fn(usize) -> f64) -> f64 {
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
pub fn sum(x: &[f32]) -> f64 {
    fold8_slice(x, |v| v as f64)
}

/// `Σ (x − c)²`.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], c: f64) -> f64 {
    fold8_slice(x, |v| {
        let v = v as f64 - c;
        v * v
    })
}

/// `Σ a·b` (the products in f64), in [`fold8`]'s order, walking both slices in chunks of
/// eight so that no index is bounds-checked and the compiler vectorises the loop.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0.0f64; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &u), &w) in acc.iter_mut().zip(x).zip(y) {
            *s += u as f64 * w;
        }
    }
    for ((s, &u), &w) in acc.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *s += u as f64 * w;
    }
    acc.iter().sum()
}

/// [`dot`] of four rows `a` against one `b`: four independent chains, each the same sums
/// in the same order as [`dot`] (so the same bits).
#[inline(always)]
pub fn dot4(a: [&[f32]; 4], b: &[f64]) -> [f64; 4] {
    let n = b.len();
    assert!(a.iter().all(|r| r.len() == n));
    let (mut s0, mut s1, mut s2, mut s3) =
        ([0.0f64; LANES], [0.0; LANES], [0.0; LANES], [0.0; LANES]);
    let full = n / LANES * LANES;
    let [a0, a1, a2, a3] = a.map(|r| r[..full].chunks_exact(LANES));
    let rows = a0.zip(a1).zip(a2.zip(a3));
    #[inline(always)]
    fn add(s: &mut [f64; LANES], x: &[f32], y: &[f64]) {
        for ((s, &u), &w) in s.iter_mut().zip(x).zip(y) {
            *s += u as f64 * w;
        }
    }
    for (((x0, x1), (x2, x3)), y) in rows.zip(b[..full].chunks_exact(LANES)) {
        add(&mut s0, x0, y);
        add(&mut s1, x1, y);
        add(&mut s2, x2, y);
        add(&mut s3, x3, y);
    }
    let mut acc = [s0, s1, s2, s3];
    let mut out = [0.0f64; 4];
    for ((o, acc), row) in out.iter_mut().zip(&mut acc).zip(&a) {
        for ((s, &u), &w) in acc.iter_mut().zip(&row[full..]).zip(&b[full..]) {
            *s += u as f64 * w;
        }
        *o = acc.iter().sum();
    }
    out
}

/// [`fold8_slice`] of four rows of the same length at once, `f` given the row's index
/// and a value: four independent chains (a row's chain alone waits on each addition),
/// each the same sums in the same order as [`fold8_slice`] (so the same bits).
#[inline(always)]
fn fold8_rows4(rows: [&[f32]; 4], f: impl Fn(usize, f32) -> f64) -> [f64; 4] {
    let n = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == n));
    let mut acc = [[0.0f64; LANES]; 4];
    let full = n / LANES * LANES;
    let [c0, c1, c2, c3] = rows.map(|r| r[..full].chunks_exact(LANES));
    for ((x0, x1), (x2, x3)) in c0.zip(c1).zip(c2.zip(c3)) {
        for (r, x) in [x0, x1, x2, x3].into_iter().enumerate() {
            for (s, &v) in acc[r].iter_mut().zip(x) {
                *s += f(r, v);
            }
        }
    }
    let mut out = [0.0f64; 4];
    for (r, (o, a)) in out.iter_mut().zip(&mut acc).enumerate() {
        for (s, &v) in a.iter_mut().zip(&rows[r][full..]) {
            *s += f(r, v);
        }
        *o = a.iter().sum();
    }
    out
}

/// [`sum`] of four rows (the same bits).
#[inline(always)]
pub fn sum4(rows: [&[f32]; 4]) -> [f64; 4] {
    fold8_rows4(rows, |_, v| v as f64)
}

/// [`sum_sq_dev`] of four rows about their own `c` (the same bits).
#[inline(always)]
pub fn sum_sq_dev4(rows: [&[f32]; 4], c: [f64; 4]) -> [f64; 4] {
    fold8_rows4(rows, |r, v| {
        let v = v as f64 - c[r];
        v * v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_a_plain_loop() {
        for len in [0, 1, 7, 8, 9, 13, 16, 100, 512, 768] {
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..len).map(|i| (i as f64 * 0.11).cos()).collect();
            let plain: f64 = x.iter().map(|&v| v as f64).sum();
            // The slice walk adds in `fold8`'s order, bit for bit.
            assert_eq!(sum(&x).to_bits(), fold8(len, |i| x[i] as f64).to_bits());
            assert!(anytime_testkit::close(sum(&x), plain, 1e-12, 0.0));
            let dev: f64 = x.iter().map(|&v| (v as f64 - 0.25).powi(2)).sum();
            assert!(anytime_testkit::close(
                sum_sq_dev(&x, 0.25),
                dev,
                1e-12,
                0.0
            ));
            let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b).sum();
            assert!(anytime_testkit::close(dot(&x, &y), d, 1e-12, 0.0));
            // The slice walk adds in `fold8`'s order, bit for bit.
            let folded = fold8(len, |i| x[i] as f64 * y[i]);
            assert_eq!(dot(&x, &y).to_bits(), folded.to_bits());
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..len)
                        .map(|i| (i as f32 * 0.2 + r as f32).cos())
                        .collect()
                })
                .collect();
            let four = dot4([&rows[0], &rows[1], &rows[2], &rows[3]], &y);
            for (got, row) in four.iter().zip(&rows) {
                assert_eq!(got.to_bits(), dot(row, &y).to_bits());
            }
            let r4 = [&rows[0][..], &rows[1], &rows[2], &rows[3]];
            let c = [0.25, -1.5, 0.0, 3.0];
            let (sums, devs) = (sum4(r4), sum_sq_dev4(r4, c));
            for (r, row) in rows.iter().enumerate() {
                assert_eq!(sums[r].to_bits(), sum(row).to_bits());
                assert_eq!(devs[r].to_bits(), sum_sq_dev(row, c[r]).to_bits());
            }
        }
    }
}
