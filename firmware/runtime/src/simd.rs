//! The instruction-set builds of the kernel bodies (`anytime_linalg::build_of!`), and
//! the test helper that runs each.

pub(crate) use anytime_linalg::simd::Build;

/// The builds of `kernel` (narrow extension `narrow`) this CPU runs, baseline first, for
/// `test` to check each against the baseline; logs (through `anytime_testkit::skip`)
/// which ran and which this CPU lacks, so the CI log names both.
#[cfg(test)]
pub(crate) fn builds_to_test(test: &str, kernel: &str, narrow: &str) -> Vec<Build> {
    let (here, absent): (Vec<Build>, Vec<Build>) =
        Build::ALL.into_iter().partition(|b| b.runs_here(narrow));
    let names = |v: &[Build]| {
        v.iter()
            .map(|b| format!("{b:?} ({})", b.needs(narrow)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    anytime_testkit::skip::ran(test, &format!("{kernel} builds {}", names(&here)));
    if !absent.is_empty() {
        let why = format!("{kernel} builds {}: this CPU lacks them", names(&absent));
        anytime_testkit::skip::not_here(test, &why);
    }
    here
}
