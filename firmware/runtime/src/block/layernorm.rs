//! LayerNorm over the last axis (eps 1e-5): forward, and its backward rule.

/// LayerNorm epsilon of CLIP.
pub(crate) const LN_EPS: f32 = 1e-5;

/// Normalises each of the `rows` rows of `x` (`[rows, d]`): writes `xhat = (x − μ)·rstd`,
/// `rstd = 1/sqrt(var + eps)` and `y = xhat·w + b`. Statistics accumulate in f64.
pub(crate) fn layernorm_forward(
    x: &[f32],
    d: usize,
    w: &[f32],
    b: &[f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
    y: &mut [f32],
) {
    let rows = rstd.len();
    assert!(x.len() == rows * d && xhat.len() == rows * d && y.len() == rows * d);
    assert!(w.len() == d && b.len() == d);
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let rs = 1.0 / (var + LN_EPS as f64).sqrt();
        rstd[r] = rs as f32;
        let (xh, yr) = (&mut xhat[r * d..(r + 1) * d], &mut y[r * d..(r + 1) * d]);
        for i in 0..d {
            let h = ((xr[i] as f64 - mean) * rs) as f32;
            xh[i] = h;
            yr[i] = h * w[i] + b[i];
        }
    }
}

/// `y = xhat·w + b` again from saved `xhat` (rows of width `d`).
pub(crate) fn layernorm_affine(xhat: &[f32], d: usize, w: &[f32], b: &[f32], y: &mut [f32]) {
    for (xr, yr) in xhat.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        for i in 0..d {
            yr[i] = xr[i] * w[i] + b[i];
        }
    }
}

/// Backward of LayerNorm. Given `dy`, saved `xhat` and `rstd` and the scale `w`:
/// **adds** `dx = rstd·(ĝ − mean(ĝ) − xhat·mean(ĝ·xhat))` with `ĝ = dy·w` to `dx`, and,
/// when `dwb` is given, **adds** `Σ dy·xhat` and `Σ dy` to the scale and shift gradients.
pub(crate) fn layernorm_backward(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    mut dwb: Option<(&mut [f32], &mut [f32])>,
) {
    let d = w.len();
    let rows = rstd.len();
    assert!(dy.len() == rows * d && xhat.len() == rows * d && dx.len() == rows * d);
    let mut g = vec![0.0f32; d];
    for r in 0..rows {
        let (dyr, xr) = (&dy[r * d..(r + 1) * d], &xhat[r * d..(r + 1) * d]);
        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
        for i in 0..d {
            g[i] = dyr[i] * w[i];
            sg += g[i] as f64;
            sgx += (g[i] * xr[i]) as f64;
        }
        let (mg, mgx) = ((sg / d as f64) as f32, (sgx / d as f64) as f32);
        let dxr = &mut dx[r * d..(r + 1) * d];
        for i in 0..d {
            dxr[i] += rstd[r] * (g[i] - mg - xr[i] * mgx);
        }
        if let Some((dw, db)) = dwb.as_mut() {
            for i in 0..d {
                dw[i] += dyr[i] * xr[i];
                db[i] += dyr[i];
            }
        }
    }
}
