//! The arithmetic of SPEC §2 prediction on plain `f32` slices: softmax, the tuned
//! model's split into `P̃_t(y|x)` (over `Y`, without "other") and `P_t(other|x)`,
//! and the OCW mixture `P(y|x) = α(y) P̃_t(y|x) + (1−α(y)) P_o(y|x)`.
//!
//! The weights α come from [`crate::ocw::OcwState::alphas_into`]. The mixture is
//! returned as the SPEC defines it, **not renormalised**: with different α per
//! label it need not sum to 1 (each term is a convex combination of two
//! probabilities, so every value stays in `[0, 1]`). Ranking and argmax are what
//! the learner uses; call [`normalise`] when a distribution is wanted.

use crate::Error;

/// Numerically stable softmax in place (subtracts the maximum first).
/// An empty slice is left as it is.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Softmax of `logits` into `out` (same length).
pub fn softmax(logits: &[f32], out: &mut [f32]) -> Result<(), Error> {
    if logits.len() != out.len() {
        return Err(Error::InvalidShape);
    }
    out.copy_from_slice(logits);
    softmax_in_place(out);
    Ok(())
}

/// From the tuned logits over `Y ∪ {other}` (`|Y|` label logits, then `b` last),
/// writes `P̃_t(y|x)` (softmax over `Y` alone) into `over_labels` (length `|Y|`)
/// and returns `P_t(other|x)` (the "other" entry of the softmax over `Y ∪ {other}`).
pub fn tuned_probabilities(
    logits_with_other: &[f32],
    over_labels: &mut [f32],
) -> Result<f32, Error> {
    let (&other, labels) = logits_with_other.split_last().ok_or(Error::InvalidShape)?;
    softmax(labels, over_labels)?;
    let max = labels.iter().copied().fold(other, f32::max);
    let e_other = libm::expf(other - max);
    let e_labels: f32 = labels.iter().map(|&l| libm::expf(l - max)).sum();
    Ok(e_other / (e_other + e_labels))
}

/// OCW mixture: `out[i] = α[i] tuned[i] + (1−α[i]) original[i]`.
///
/// `tuned` is `P̃_t` over `Y`, `original` is `P_o` over `Y`, `alphas` the per-label
/// weights in `[0, 1]`; all four slices have length `|Y|`.
pub fn mix(tuned: &[f32], original: &[f32], alphas: &[f32], out: &mut [f32]) -> Result<(), Error> {
    let n = out.len();
    if tuned.len() != n || original.len() != n || alphas.len() != n {
        return Err(Error::InvalidShape);
    }
    for (((o, &t), &p), &a) in out.iter_mut().zip(tuned).zip(original).zip(alphas) {
        *o = a * t + (1.0 - a) * p;
    }
    Ok(())
}

/// Scales `x` to sum to 1; leaves it unchanged when its sum is not positive.
pub fn normalise(x: &mut [f32]) {
    let sum: f32 = x.iter().sum();
    if sum > 0.0 {
        for v in x.iter_mut() {
            *v /= sum;
        }
    }
}

/// The dot product `a·b` over the shorter of the two, summed in order in `f32` (the
/// cosine of two L2-normalised embeddings).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Index of the largest value (the first one on ties); `None` for an empty slice.
/// NaNs never win.
pub fn argmax(x: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocw::{LabelStats, OcwState};

    /// Within 1e-6, both finite.
    fn close(a: f32, b: f32) -> bool {
        anytime_testkit::close(a, b, 1e-6, 0.0)
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut p = [0.0; 3];
        // exp(100) overflows f32: only the max-shifted form gets this right
        softmax(&[100.0, 100.0, 100.0 + libm::logf(2.0)], &mut p).unwrap();
        let near = |a: f32, b: f32| anytime_testkit::close(a, b, 1e-5, 0.0);
        assert!(
            near(p[0], 0.25) && near(p[1], 0.25) && near(p[2], 0.5),
            "{p:?}"
        );
        let mut q = [-1e4f32, 0.0];
        softmax_in_place(&mut q);
        assert!(close(q[1], 1.0) && q[0] >= 0.0);
        assert_eq!(softmax(&[1.0], &mut p), Err(Error::InvalidShape));
        softmax_in_place(&mut []);
    }

    #[test]
    fn tuned_split() {
        // logits over Y = {a, b} and other: [ln 1, ln 3, ln 4] → P over all = [1, 3, 4]/8
        let logits = [0.0, libm::logf(3.0), libm::logf(4.0)];
        let mut p = [0.0; 2];
        let other = tuned_probabilities(&logits, &mut p).unwrap();
        assert!(close(other, 0.5));
        assert!(close(p[0], 0.25) && close(p[1], 0.75), "{p:?}");
        // only "other": P̃ over an empty Y, P(other) = 1
        assert!(close(tuned_probabilities(&[3.0], &mut []).unwrap(), 1.0));
        assert_eq!(tuned_probabilities(&[], &mut []), Err(Error::InvalidShape));
        assert_eq!(
            tuned_probabilities(&logits, &mut [0.0; 3]),
            Err(Error::InvalidShape)
        );
    }

    #[test]
    fn mix_is_per_label_convex_combination() {
        let mut out = [0.0; 3];
        mix(
            &[0.2, 0.3, 0.5],
            &[0.6, 0.2, 0.2],
            &[1.0, 0.5, 0.0],
            &mut out,
        )
        .unwrap();
        assert!(close(out[0], 0.2) && close(out[1], 0.25) && close(out[2], 0.2));
        normalise(&mut out);
        assert!(close(out.iter().sum::<f32>(), 1.0));
        // Any one slice of the wrong length is refused.
        let (two, one) = ([0.5f32, 0.5], [0.5f32]);
        for (t, o, a) in [
            (&one[..], &two[..], &two[..]),
            (&two, &one, &two),
            (&two, &two, &one),
        ] {
            assert_eq!(mix(t, o, a, &mut out[..2]), Err(Error::InvalidShape));
        }
        assert_eq!(mix(&two, &two, &two, &mut out), Err(Error::InvalidShape));
    }

    #[test]
    fn normalise_leaves_a_zero_sum_alone() {
        let mut z = [0.0f32; 3];
        normalise(&mut z);
        assert_eq!(z, [0.0; 3]);
        let mut v = [1.0f32, 3.0];
        normalise(&mut v);
        assert_eq!(v, [0.25, 0.75]);
    }

    #[test]
    fn dot_is_the_sum_of_products_over_the_shorter_slice() {
        assert_eq!(dot(&[1.0, 2.0, -3.0], &[4.0, 0.5, 2.0]), -1.0);
        assert_eq!(dot(&[2.0, 3.0], &[5.0]), 10.0);
        assert_eq!(dot(&[], &[1.0]), 0.0);
    }

    #[test]
    fn argmax_rules() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5]), Some(1));
        assert_eq!(argmax(&[0.5, f32::NAN, 0.7]), Some(2));
        assert_eq!(argmax(&[f32::NAN]), None);
    }

    /// The certain-expectation OCW test at the level of the arithmetic: a label the
    /// tuned model has always got right (and the original never) takes the tuned
    /// distribution's value, a label never trained on takes the original's, and the
    /// answer follows.
    #[test]
    fn ocw_picks_tuned_for_learned_labels_and_original_for_others() {
        let mut ocw = OcwState::<8>::new();
        for _ in 0..10 {
            ocw.observe(0, true, false).unwrap(); // label 0: c_t = 1, c_o = 0
        }
        let labels = [0u16, 1, 2]; // 1 and 2 never trained on
        let mut alphas = [0.0; 3];
        ocw.alphas_into(&labels, None, &mut alphas).unwrap();

        // The tuned model is sure of label 0; the original prefers label 2.
        let tuned = [0.9, 0.05, 0.05];
        let original = [0.1, 0.3, 0.6];
        let mut p = [0.0; 3];
        mix(&tuned, &original, &alphas, &mut p).unwrap();
        assert!(close(p[0], tuned[0]), "learned label takes P̃_t: {p:?}");
        assert_eq!(p[1], original[1], "untrained label takes P_o");
        assert_eq!(p[2], original[2], "untrained label takes P_o");
        assert_eq!(argmax(&p), Some(0));

        // Same image, but now the tuned model does not favour label 0: the original
        // model's choice among untrained labels wins.
        let tuned = [0.05, 0.9, 0.05];
        mix(&tuned, &original, &alphas, &mut p).unwrap();
        assert_eq!(argmax(&p), Some(2));

        // A label the tuned model always got wrong and the original always right
        // is left to the original model.
        ocw.insert(
            1,
            LabelStats {
                c_tuned: 0.0,
                c_original: 1.0,
                n: 50,
            },
        )
        .unwrap();
        ocw.alphas_into(&labels, None, &mut alphas).unwrap();
        assert_eq!(alphas[1], 0.0);
        mix(&tuned, &original, &alphas, &mut p).unwrap();
        assert_eq!(p[1], original[1]);

        // α' with P_t(other|x) = 1 hands every label back to the original model.
        ocw.alphas_into(&labels, Some(1.0), &mut alphas).unwrap();
        assert_eq!(alphas, [0.0; 3]);
    }
}
