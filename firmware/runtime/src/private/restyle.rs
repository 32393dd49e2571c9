//! The restyled replay of the private learner: the new sample's own tokens, standardised
//! per channel over its `N` tokens, then given an old label's published per-channel mean
//! and variance (the adaptive instance normalisation of style transfer, on tokens).
//!
//! The result keeps the real sample's token structure (what separates the generator's
//! sets from real ones, BENCHMARKS.md "Data-free class-incremental") and carries the old
//! label's statistics. It is made inside the sample's own step and never stored.

use super::error::PrivateError;

/// A channel whose spread over the sample's tokens is below this is taken as constant:
/// its restyled values are the label's mean.
pub const MIN_SPREAD: f32 = 1e-6;

/// `tokens` (`[N, D]`, `D = mean.len()`) restyled to the per-channel `mean` and `var`
/// (a label's published statistics): `(x − m_c) / s_c · √var_c + mean_c`, with `m_c`,
/// `s_c` the channel's mean and population standard deviation over the `N` tokens.
pub fn restyle(tokens: &[f32], mean: &[f32], var: &[f32]) -> Result<Vec<f32>, PrivateError> {
    let d = mean.len();
    if var.len() != d {
        return Err(PrivateError::Shape {
            what: "restyle variances",
            expected: d,
            found: var.len(),
        });
    }
    if d == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(d) {
        return Err(PrivateError::Shape {
            what: "restyle tokens (a multiple of D)",
            expected: d.max(1),
            found: tokens.len(),
        });
    }
    if tokens.iter().chain(mean).any(|v| !v.is_finite())
        || var.iter().any(|v| !(v.is_finite() && *v >= 0.0))
    {
        return Err(PrivateError::NonFinite {
            what: "restyle input",
        });
    }
    let n = tokens.len() / d;
    let mut out = vec![0.0f32; tokens.len()];
    for c in 0..d {
        let column = || tokens.iter().skip(c).step_by(d).map(|&v| f64::from(v));
        let m = column().sum::<f64>() / n as f64;
        let s = (column().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64).sqrt();
        let sd = f64::from(var[c]).sqrt();
        let scale = if s < f64::from(MIN_SPREAD) {
            0.0
        } else {
            sd / s
        };
        for (o, v) in out.iter_mut().skip(c).step_by(d).zip(column()) {
            *o = ((v - m) * scale + f64::from(mean[c])) as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_testkit::assert_close;

    /// Each channel of the result has the label's mean and variance over the tokens, and
    /// the sample's own standardised values.
    #[test]
    fn restyled_channels_carry_the_labels_statistics() {
        // N = 4, D = 3; channel 2 is constant.
        let tokens = [
            1.0f32, -1.0, 5.0, //
            3.0, 1.0, 5.0, //
            -1.0, 5.0, 5.0, //
            1.0, 3.0, 5.0,
        ];
        let mean = [10.0f32, -1.0, 0.5];
        let var = [4.0f32, 0.25, 9.0];
        let out = restyle(&tokens, &mean, &var).unwrap();
        // Channel 0: m = 1, s = √2, values (0, 2, −2, 0) / √2 · 2 + 10; channel 1: m = 2,
        // s = √5.
        let r2 = std::f32::consts::SQRT_2;
        let want = [
            10.0,
            -1.0 + (-1.0 - 2.0) / 5f32.sqrt() * 0.5,
            0.5, //
            10.0 + 2.0 * r2,
            -1.0 + (1.0 - 2.0) / 5f32.sqrt() * 0.5,
            0.5, //
            10.0 - 2.0 * r2,
            -1.0 + (5.0 - 2.0) / 5f32.sqrt() * 0.5,
            0.5, //
            10.0,
            -1.0 + (3.0 - 2.0) / 5f32.sqrt() * 0.5,
            0.5,
        ];
        assert_close("restyled", &out, &want, 1e-5, 1e-5);
        for c in 0..3 {
            let col: Vec<f64> = out
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&v| f64::from(v))
                .collect();
            let m = col.iter().sum::<f64>() / 4.0;
            let v = col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 4.0;
            assert!(
                (m - f64::from(mean[c])).abs() < 1e-5,
                "mean of channel {c}: {m}"
            );
            let want_var = if c == 2 { 0.0 } else { f64::from(var[c]) };
            assert!((v - want_var).abs() < 1e-4, "variance of channel {c}: {v}");
        }
    }

    #[test]
    fn bad_shapes_and_values_are_refused() {
        let t = [1.0f32, 2.0, 3.0, 4.0];
        let ok = restyle(&t, &[0.0, 0.0], &[1.0, 1.0]).unwrap();
        assert_eq!(ok.len(), 4);
        assert!(restyle(&t, &[0.0, 0.0], &[1.0]).is_err());
        assert!(restyle(&t, &[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0]).is_err());
        assert!(restyle(&[], &[0.0], &[1.0]).is_err());
        assert!(restyle(&t, &[], &[]).is_err());
        assert!(restyle(&[1.0, f32::NAN, 3.0, 4.0], &[0.0, 0.0], &[1.0, 1.0]).is_err());
        assert!(restyle(&t, &[f32::INFINITY, 0.0], &[1.0, 1.0]).is_err());
        assert!(restyle(&t, &[0.0, 0.0], &[-1.0, 1.0]).is_err());
        assert!(restyle(&t, &[0.0, 0.0], &[f32::NAN, 1.0]).is_err());
    }
}
