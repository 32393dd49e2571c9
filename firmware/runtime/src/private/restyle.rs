//! The restyled replay of the private learner: the new sample's own tokens, standardised
//! per channel over its `N` tokens, then given an old label's published per-channel mean
//! and variance (the adaptive instance normalisation of style transfer, on tokens).
//!
//! The result keeps the real sample's token structure (what separates the generator's
//! sets from real ones, BENCHMARKS.md "Data-free class-incremental") and carries the old
//! label's statistics. Its CLS token (token 0) is then drawn from the old label's CLS
//! statistics ([`draw_cls`]): the frozen block's answer follows that token, so without it
//! a restyled sample still looks like the new sample's label. It is made inside the
//! sample's own step and never stored.

use anytime_core::rng::SplitMix64;

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

/// Sets the CLS token (the first `D = mean.len()` values of `tokens`) to a draw from the
/// per-channel normal of `mean` and `var` (a label's published CLS statistics).
pub fn draw_cls(
    tokens: &mut [f32],
    mean: &[f32],
    var: &[f32],
    rng: &mut SplitMix64,
) -> Result<(), PrivateError> {
    let d = mean.len();
    if var.len() != d {
        return Err(PrivateError::Shape {
            what: "CLS variances",
            expected: d,
            found: var.len(),
        });
    }
    if d == 0 || tokens.len() < d {
        return Err(PrivateError::Shape {
            what: "tokens holding a CLS token of D values",
            expected: d.max(1),
            found: tokens.len(),
        });
    }
    if mean.iter().any(|v| !v.is_finite()) || var.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(PrivateError::NonFinite {
            what: "CLS statistics",
        });
    }
    for ((t, &m), &v) in tokens.iter_mut().zip(mean).zip(var) {
        *t = m + v.sqrt() * rng.normal();
    }
    Ok(())
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

    /// The CLS token's draws have the label's mean and variance per channel; the other
    /// tokens are left as they were.
    #[test]
    fn cls_draws_carry_the_labels_cls_statistics() {
        let (d, n, draws) = (3usize, 2usize, 20_000usize);
        let mean = [2.0f32, -1.0, 0.0];
        let var = [4.0f32, 0.25, 0.0];
        let mut rng = SplitMix64::new(5);
        let mut sums = [[0.0f64; 2]; 3];
        for i in 0..draws {
            let mut t: Vec<f32> = (0..n * d).map(|j| (i + j) as f32).collect();
            let rest = t[d..].to_vec();
            draw_cls(&mut t, &mean, &var, &mut rng).unwrap();
            assert_eq!(t[d..], rest[..], "only the CLS token changes");
            for c in 0..d {
                sums[c][0] += f64::from(t[c]);
                sums[c][1] += f64::from(t[c]).powi(2);
            }
        }
        for c in 0..d {
            let m = sums[c][0] / draws as f64;
            let v = sums[c][1] / draws as f64 - m * m;
            let (want_m, want_v) = (f64::from(mean[c]), f64::from(var[c]));
            // 4 standard errors of the mean and of the variance
            let se = (want_v / draws as f64).sqrt();
            assert!(
                (m - want_m).abs() <= 4.0 * se + 1e-6,
                "channel {c}: mean {m}"
            );
            let se_v = want_v * (2.0 / draws as f64).sqrt();
            assert!(
                (v - want_v).abs() <= 4.0 * se_v + 1e-6,
                "channel {c}: var {v}"
            );
        }
        // a draw is `mean + √var · z` for the generator's next normals `z`, whatever the
        // token held; a CLS token alone (N = 1) is drawn too
        let mut a = vec![0.0f32; d];
        let mut b = vec![9.0f32; d];
        draw_cls(&mut a, &mean, &var, &mut SplitMix64::new(1)).unwrap();
        draw_cls(&mut b, &mean, &var, &mut SplitMix64::new(1)).unwrap();
        assert_eq!(a, b);
        let mut z = SplitMix64::new(1);
        let want: Vec<f32> = (0..d)
            .map(|c| mean[c] + var[c].sqrt() * z.normal())
            .collect();
        assert_eq!(a, want);
    }

    #[test]
    fn bad_cls_statistics_are_refused() {
        let mut rng = SplitMix64::new(0);
        let mut t = [1.0f32, 2.0, 3.0, 4.0];
        assert!(draw_cls(&mut t, &[0.0, 0.0], &[1.0, 1.0], &mut rng).is_ok());
        assert!(draw_cls(&mut t, &[0.0, 0.0], &[1.0], &mut rng).is_err());
        assert!(draw_cls(&mut t, &[], &[], &mut rng).is_err());
        assert!(draw_cls(&mut t[..1], &[0.0, 0.0], &[1.0, 1.0], &mut rng).is_err());
        assert!(draw_cls(&mut t, &[f32::NAN, 0.0], &[1.0, 1.0], &mut rng).is_err());
        assert!(draw_cls(&mut t, &[0.0, 0.0], &[-1.0, 1.0], &mut rng).is_err());
        assert!(draw_cls(&mut t, &[0.0, 0.0], &[f32::INFINITY, 1.0], &mut rng).is_err());
        let before = t;
        assert!(draw_cls(&mut t, &[0.0, f32::NAN], &[1.0, 1.0], &mut rng).is_err());
        assert_eq!(t, before, "a refusal changes nothing");
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
