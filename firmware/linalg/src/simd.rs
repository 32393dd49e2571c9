//! Which instruction-set build of a kernel body runs (see the `build_of!` macro): the
//! widest one the CPU has in normal use, each one in turn in the tests.

/// A build of a kernel body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Compiled for the target's baseline (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// Compiled with the body's 256-bit extension (`"avx"` or `"avx2"`; x86-64 only).
    Narrow,
    /// Compiled with AVX-512F (x86-64 only).
    Avx512,
}

impl Build {
    /// Every build, baseline first.
    pub const ALL: [Build; 3] = [Build::Baseline, Build::Narrow, Build::Avx512];

    /// Whether this CPU runs the build whose narrow extension is `narrow` (`"avx"` or
    /// `"avx2"`), detected at run time.
    pub fn runs_here(self, narrow: &str) -> bool {
        match self {
            Build::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Build::Narrow => match narrow {
                "avx" => is_x86_feature_detected!("avx"),
                "avx2" => is_x86_feature_detected!("avx2"),
                _ => panic!("no narrow build `{narrow}`"),
            },
            #[cfg(target_arch = "x86_64")]
            Build::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                let _ = narrow; // x86-64 extensions only
                false
            }
        }
    }

    /// The widest build this CPU runs.
    pub fn widest(narrow: &str) -> Build {
        [Build::Avx512, Build::Narrow]
            .into_iter()
            .find(|b| b.runs_here(narrow))
            .unwrap_or(Build::Baseline)
    }

    /// The instructions the build needs, for messages.
    pub fn needs(self, narrow: &str) -> &str {
        match self {
            Build::Baseline => "the baseline",
            Build::Narrow => narrow,
            Build::Avx512 => "AVX-512F",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widest_build_runs_here_and_the_baseline_always_does() {
        for narrow in ["avx", "avx2"] {
            assert!(Build::Baseline.runs_here(narrow));
            assert!(Build::widest(narrow).runs_here(narrow));
            let here: Vec<Build> = Build::ALL
                .into_iter()
                .filter(|b| b.runs_here(narrow))
                .collect();
            assert_eq!(here[0], Build::Baseline);
            assert_eq!(*here.last().unwrap(), Build::widest(narrow));
        }
    }
}
