//! LayerNorm over the last axis (eps 1e-5): forward, and its backward rule.

use crate::simd::Build;
use anytime_linalg::sums;

/// LayerNorm epsilon of CLIP.
pub(crate) const LN_EPS: f32 = 1e-5;

/// Normalises each row of `x` (`[rows, d]`): writes `xhat = (x − μ)·rstd` and
/// `rstd = 1/sqrt(var + eps)`. Statistics accumulate in f64 (see [`sums`]), with the
/// widest vectors the CPU has: the sums' eight partial sums are fixed lanes and every
/// operation is exact IEEE arithmetic (Rust never fuses a multiply and an add), so every
/// build gives the same bits; the baseline SSE2 build does two f64 lanes per instruction.
pub(crate) fn layernorm_normalise(x: &[f32], d: usize, xhat: &mut [f32], rstd: &mut [f32]) {
    normalise_with(Build::widest(NARROW), x, d, xhat, rstd)
}

/// The 256-bit extension of [`normalise_body`]'s narrow build.
const NARROW: &str = "avx2";

/// [`layernorm_normalise`] in the given build (panics when the CPU lacks it).
fn normalise_with(build: Build, x: &[f32], d: usize, xhat: &mut [f32], rstd: &mut [f32]) {
    let rows = rstd.len();
    assert!(x.len() == rows * d && xhat.len() == rows * d);
    anytime_linalg::build_of!(
        build,
        "avx2",
        normalise_body(x: &[f32], d: usize, xhat: &mut [f32], rstd: &mut [f32]) -> ()
    )
}

/// The body of [`layernorm_normalise`], compiled into each build: four rows at a time
/// (their sums are four independent chains; one row's waits on each addition), with the
/// same sums in the same order as one row at a time, then the rows left one by one.
#[inline(always)]
fn normalise_body(x: &[f32], d: usize, xhat: &mut [f32], rstd: &mut [f32]) {
    let write = |xr: &[f32], xh: &mut [f32], mean: f64, var: f64| {
        let r = 1.0 / (var + LN_EPS as f64).sqrt();
        for (h, &v) in xh.iter_mut().zip(xr) {
            *h = ((v as f64 - mean) * r) as f32;
        }
        r as f32
    };
    let quads = rstd.len() / 4 * 4;
    let (x4, x1) = x.split_at(quads * d);
    let (h4, h1) = xhat.split_at_mut(quads * d);
    let (r4, r1) = rstd.split_at_mut(quads);
    for ((xq, hq), rq) in x4
        .chunks_exact(4 * d)
        .zip(h4.chunks_exact_mut(4 * d))
        .zip(r4.chunks_exact_mut(4))
    {
        let rows: [&[f32]; 4] = std::array::from_fn(|i| &xq[i * d..(i + 1) * d]);
        let mean = sums::sum4(rows).map(|s| s / d as f64);
        let var = sums::sum_sq_dev4(rows, mean).map(|s| s / d as f64);
        for (i, (xh, rs)) in hq.chunks_exact_mut(d).zip(rq).enumerate() {
            *rs = write(rows[i], xh, mean[i], var[i]);
        }
    }
    for ((xr, xh), rs) in x1
        .chunks_exact(d)
        .zip(h1.chunks_exact_mut(d))
        .zip(r1.iter_mut())
    {
        let mean = sums::sum(xr) / d as f64;
        let var = sums::sum_sq_dev(xr, mean) / d as f64;
        *rs = write(xr, xh, mean, var);
    }
}

/// [`layernorm_normalise`], and `y = xhat·w + b`.
pub(crate) fn layernorm_forward(
    x: &[f32],
    d: usize,
    w: &[f32],
    b: &[f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    y: &mut [f32],
) {
    assert!(w.len() == d && b.len() == d && y.len() == xhat.len());
    layernorm_normalise(x, d, xhat, rstd);
    layernorm_affine(xhat, d, w, b, y);
}

/// `y = xhat·w + b` again from saved `xhat` (rows of width `d`).
pub(crate) fn layernorm_affine(xhat: &[f32], d: usize, w: &[f32], b: &[f32], y: &mut [f32]) {
    for (xr, yr) in xhat.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        for i in 0..d {
            yr[i] = xr[i] * w[i] + b[i];
        }
    }
}

/// Backward through the normalisation alone: given `ĝ = d loss / d xhat` (`[rows, d]`),
/// **adds** `dx = rstd·(ĝ − mean(ĝ) − xhat·mean(ĝ·xhat))` to `dx`.
pub(crate) fn normalise_backward(g: &[f32], xhat: &[f32], rstd: &[f32], dx: &mut [f32]) {
    let d = g.len() / rstd.len().max(1);
    assert!(g.len() == rstd.len() * d && xhat.len() == g.len() && dx.len() == g.len());
    for (((gr, xr), dxr), &rs) in g
        .chunks_exact(d)
        .zip(xhat.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .zip(rstd)
    {
        let sg = sums::sum(gr);
        let sgx = sums::fold8(d, |i| (gr[i] * xr[i]) as f64);
        let (mg, mgx) = ((sg / d as f64) as f32, (sgx / d as f64) as f32);
        for i in 0..d {
            dxr[i] += rs * (gr[i] - mg - xr[i] * mgx);
        }
    }
}

/// Backward of LayerNorm. Given `dy`, saved `xhat` and `rstd` and the scale `w`:
/// **adds** the input gradient (see [`normalise_backward`], with `ĝ = dy·w`) to `dx`, and,
/// when `dwb` is given, **adds** `Σ dy·xhat` and `Σ dy` to the scale and shift gradients.
pub(crate) fn layernorm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dwb: Option<(&mut [f32], &mut [f32])>,
) {
    let d = w.len();
    let rows = rstd.len();
    assert!(dy.len() == rows * d && xhat.len() == rows * d && dx.len() == rows * d);
    let mut g = vec![0.0f32; dy.len()];
    for (gr, dyr) in g.chunks_exact_mut(d).zip(dy.chunks_exact(d)) {
        for i in 0..d {
            gr[i] = dyr[i] * w[i];
        }
    }
    normalise_backward(&g, xhat, rstd, dx);
    if let Some((dw, db)) = dwb {
        for (dyr, xr) in dy.chunks_exact(d).zip(xhat.chunks_exact(d)) {
            for i in 0..d {
                dw[i] += dyr[i] * xr[i];
                db[i] += dyr[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build this CPU runs (baseline, AVX2, AVX-512) gives the baseline build's
    /// bits, on widths with and without a tail of the eight partial sums.
    #[test]
    fn layernorm_vector_builds_give_the_baseline_bits() {
        const TEST: &str = "layernorm_vector_builds_give_the_baseline_bits";
        for build in crate::simd::builds_to_test(TEST, "LayerNorm", NARROW) {
            check_build(build);
        }
    }

    fn check_build(build: Build) {
        for d in [1usize, 7, 8, 13, 768] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * d)
                .map(|i| 3.0 * (i as f32 * 0.37).sin() + 0.01 * i as f32)
                .collect();
            let (mut h1, mut r1) = (vec![0.0; rows * d], vec![0.0; rows]);
            let (mut h2, mut r2) = (h1.clone(), r1.clone());
            normalise_with(build, &x, d, &mut h1, &mut r1);
            normalise_with(Build::Baseline, &x, d, &mut h2, &mut r2);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&h1), bits(&h2), "{build:?}, d = {d}");
            assert_eq!(bits(&r1), bits(&r2), "{build:?}, d = {d}");
            // Four rows at a time give what one row at a time does.
            for (r, xr) in x.chunks_exact(d).enumerate() {
                let mean = sums::sum(xr) / d as f64;
                let var = sums::sum_sq_dev(xr, mean) / d as f64;
                let rs = 1.0 / (var + LN_EPS as f64).sqrt();
                assert_eq!((rs as f32).to_bits(), r1[r].to_bits(), "d = {d}, row {r}");
                for (i, &v) in xr.iter().enumerate() {
                    let h = ((v as f64 - mean) * rs) as f32;
                    assert_eq!(h.to_bits(), h1[r * d + i].to_bits(), "d = {d}, row {r}");
                }
            }
        }
    }
}
