//! Float comparisons for tests: a NaN or an infinity on either side fails the comparison
//! (with its index), whatever the tolerance.

/// A value a comparison reads as `f64`.
pub trait Float: Copy + core::fmt::Debug {
    fn to_f64(self) -> f64;
}

impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

impl<T: Float> Float for &T {
    fn to_f64(self) -> f64 {
        (*self).to_f64()
    }
}

/// Whether `|got − want| ≤ atol + rtol·|want|` with both finite (false for NaN or ±inf,
/// and for a NaN tolerance).
pub fn close(got: impl Float, want: impl Float, atol: impl Float, rtol: impl Float) -> bool {
    let (g, w) = (got.to_f64(), want.to_f64());
    let tol = atol.to_f64() + rtol.to_f64() * w.abs();
    g.is_finite() && w.is_finite() && (g - w).abs() <= tol
}

/// The first index at which `a` or `b` holds a non-finite value, or a description of a
/// length mismatch.
fn first_bad<A: Float, B: Float>(a: &[A], b: &[B]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths differ: {} vs {}", a.len(), b.len()));
    }
    let bad = |v: f64| !v.is_finite();
    a.iter()
        .zip(b)
        .position(|(x, y)| bad(x.to_f64()) || bad(y.to_f64()))
        .map(|i| format!("non-finite value at [{i}]: {:?} vs {:?}", a[i], b[i]))
}

/// `max |a[i] − b[i]|` in f64. Panics (at the caller) when the lengths differ or any value
/// of either slice is NaN or infinite, so a result is always a finite number.
#[track_caller]
pub fn max_abs_diff<A: Float, B: Float>(a: &[A], b: &[B]) -> f64 {
    if let Some(why) = first_bad(a, b) {
        panic!("max_abs_diff: {why}");
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
}

/// `max |a[i]|` in f64. Panics (at the caller) when any value is NaN or infinite.
#[track_caller]
pub fn max_abs<A: Float>(a: &[A]) -> f64 {
    if let Some(i) = a.iter().position(|x| !x.to_f64().is_finite()) {
        panic!("max_abs: non-finite value at [{i}]: {:?}", a[i]);
    }
    a.iter().map(|x| x.to_f64().abs()).fold(0.0, f64::max)
}

/// Asserts `|got[i] − want[i]| ≤ atol + rtol·|want[i]|` for every `i`, with every value
/// finite and the lengths equal; the message names `what`, the worst index and its error.
#[track_caller]
pub fn assert_close<A: Float, B: Float>(what: &str, got: &[A], want: &[B], atol: f64, rtol: f64) {
    if let Some(why) = first_bad(got, want) {
        panic!("{what}: {why}");
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: [{i}] got {:?}, want {:?} (|diff| {:e} > {atol:e} + {rtol:e}·|want|)",
            got[i],
            want[i],
            (got[i].to_f64() - want[i].to_f64()).abs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[test]
    fn close_is_false_for_nan_and_both_infinities() {
        assert!(close(1.0f32, 1.0f64, 0.0, 0.0));
        assert!(close(1.0f32, 1.1f32, 0.2, 0.0));
        assert!(!close(1.0f32, 1.1f32, 0.05, 0.0));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(!close(bad, 1.0f32, 1e30, 1e30), "{bad} as got");
            assert!(!close(1.0f32, bad, 1e30, 1e30), "{bad} as want");
            assert!(!close(bad, bad, 1e30, 1e30), "{bad} on both sides");
        }
        assert!(!close(f64::NAN, 0.0f64, f64::INFINITY, 0.0));
    }

    #[test]
    fn max_abs_diff_and_max_abs_panic_on_nan_and_both_infinities() {
        assert_eq!(max_abs_diff(&[1.0f32, 2.0], &[1.5f32, 2.0]), 0.5);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(panics(|| {
                max_abs_diff(&[0.0f32, bad], &[0.0f32, 0.0]);
            }));
            assert!(panics(|| {
                max_abs_diff(&[bad, 0.0f32], &[0.0f64, 0.0]);
            }));
            assert!(panics(|| {
                max_abs_diff(&[0.0f32], &[bad]);
            }));
        }
        assert!(panics(|| {
            max_abs_diff(&[0.0f32], &[0.0f32, 0.0]);
        }));
        assert_eq!(max_abs(&[1.0f32, -3.0]), 3.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(panics(|| {
                max_abs(&[1.0f32, bad]);
            }));
        }
    }

    #[test]
    fn assert_close_fails_on_nan_and_both_infinities_at_any_tolerance() {
        assert_close("ok", &[1.0f32, 2.0], &[1.0f64, 2.001], 1e-2, 0.0);
        assert!(panics(|| assert_close(
            "far",
            &[1.0f32],
            &[2.0f32],
            0.5,
            0.0
        )));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(panics(|| assert_close(
                "got",
                &[bad],
                &[0.0f32],
                1e30,
                1e30
            )));
            assert!(panics(|| assert_close(
                "want",
                &[0.0f32],
                &[bad],
                1e30,
                1e30
            )));
            assert!(panics(|| assert_close("both", &[bad], &[bad], 1e30, 1e30)));
        }
        assert!(panics(|| assert_close(
            "len",
            &[0.0f32],
            &[0.0f32; 2],
            1.0,
            0.0
        )));
    }
}
