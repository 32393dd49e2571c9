//! SPEC §8's threshold `S*`, chosen by cross-validation on the first time steps of a
//! stream rather than fixed.

use serde::{Deserialize, Serialize};

/// Time steps at the start of a stream that the evaluation of a candidate trains on
/// (SPEC §8).
pub const CV_TIME_STEPS: u32 = 3;

/// One candidate's validation accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SStarScore {
    pub s_star: u32,
    pub accuracy: f64,
}

/// The chosen `S*` and the scores it was chosen from (ascending `S*`, each once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SStarChoice {
    pub s_star: u32,
    /// Time steps each candidate was trained on ([`CV_TIME_STEPS`]).
    pub time_steps: u32,
    pub scores: Vec<SStarScore>,
}

/// Why no `S*` was chosen.
#[derive(Debug, thiserror::Error)]
pub enum SStarError<E> {
    #[error("no candidate S* to choose from")]
    NoCandidates,
    #[error("evaluating S* = {s_star}: {source}")]
    Evaluate {
        s_star: u32,
        #[source]
        source: E,
    },
    #[error("evaluating S* = {s_star} gave the accuracy {accuracy}, not a finite number")]
    NotFinite { s_star: u32, accuracy: f64 },
}

/// Evaluates every distinct candidate once, in ascending order, with `evaluate` (a fresh
/// learner trained on the stream's first [`CV_TIME_STEPS`] time steps with that `S*`,
/// returning its validation accuracy), and returns the candidate of the highest accuracy;
/// among equal accuracies, the smallest `S*`. An evaluation error, or an accuracy that is
/// NaN or infinite, stops the choice.
pub fn choose_s_star<E>(
    candidates: &[u32],
    mut evaluate: impl FnMut(u32) -> Result<f64, E>,
) -> Result<SStarChoice, SStarError<E>> {
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut scores = Vec::with_capacity(sorted.len());
    for s_star in sorted {
        let accuracy =
            evaluate(s_star).map_err(|source| SStarError::Evaluate { s_star, source })?;
        if !accuracy.is_finite() {
            return Err(SStarError::NotFinite { s_star, accuracy });
        }
        scores.push(SStarScore { s_star, accuracy });
    }
    // Ascending S*: only a strictly better accuracy replaces the best so far.
    let best = scores
        .iter()
        .copied()
        .reduce(|best, s| if s.accuracy > best.accuracy { s } else { best })
        .ok_or(SStarError::NoCandidates)?;
    Ok(SStarChoice {
        s_star: best.s_star,
        time_steps: CV_TIME_STEPS,
        scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic validation curve with its optimum at 24: a learner that under-uses
    /// its budget below, and forgets at the full rate above.
    fn curve(s_star: u32) -> f64 {
        let x = s_star as f64;
        0.8 - 1e-4 * (x - 24.0).powi(2)
    }

    #[test]
    fn s_star_is_the_best_candidate_of_the_data() {
        let mut asked = Vec::new();
        let choice = choose_s_star(&[48, 0, 24, 12, 36, 24], |s| {
            asked.push(s);
            Ok::<_, std::convert::Infallible>(curve(s))
        })
        .unwrap();
        assert_eq!(choice.s_star, 24);
        assert_eq!(asked, [0, 12, 24, 36, 48], "each candidate once, ascending");
        let table: Vec<u32> = choice.scores.iter().map(|s| s.s_star).collect();
        assert_eq!(table, asked);
        assert!(choice.scores.iter().all(|s| s.accuracy == curve(s.s_star)));
        assert_eq!(choice.time_steps, 3);
        // Another curve, another choice: nothing is fixed.
        let late = choose_s_star(&[0, 12, 24, 36, 48], |s| {
            Ok::<_, std::convert::Infallible>(s as f64 / 100.0)
        })
        .unwrap();
        assert_eq!(late.s_star, 48);
        // The record goes through JSON unchanged.
        let json = serde_json::to_string(&choice).unwrap();
        assert_eq!(serde_json::from_str::<SStarChoice>(&json).unwrap(), choice);
    }

    #[test]
    fn ties_go_to_the_smaller_s_star() {
        let flat = |s: u32| Ok::<_, std::convert::Infallible>(if s >= 10 { 0.5 } else { 0.4 });
        let choice = choose_s_star(&[30, 10, 20, 5], flat).unwrap();
        assert_eq!(choice.s_star, 10);
    }

    #[test]
    fn no_candidate_a_failed_or_non_finite_evaluation_chooses_nothing() {
        let ok = |_| Ok::<f64, String>(0.5);
        assert!(matches!(
            choose_s_star(&[], ok),
            Err(SStarError::NoCandidates)
        ));
        let failing = |s: u32| {
            if s == 8 {
                Err("diverged".to_string())
            } else {
                Ok(0.5)
            }
        };
        match choose_s_star(&[4, 8, 16], failing) {
            Err(SStarError::Evaluate { s_star: 8, source }) => assert_eq!(source, "diverged"),
            other => panic!("{other:?}"),
        }
        let nan = |s: u32| Ok::<f64, String>(if s == 16 { f64::NAN } else { 0.9 });
        let e = choose_s_star(&[4, 16], nan).unwrap_err();
        assert!(matches!(e, SStarError::NotFinite { s_star: 16, .. }), "{e}");
    }
}
