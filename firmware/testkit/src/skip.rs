//! How a test that cannot run here says so: a line in the skip log CI prints at the end of
//! its test step (`cargo test` captures a passing test's stdout and stderr, so a printed
//! reason alone never reaches the log), and a failure where CI requires what is missing.
//!
//! Every line goes to stderr and is appended to the file `$ANYTIME_EDGE_SKIP_LOG` names
//! (`.ci/run` sets it and prints the file). Three kinds of absence:
//! - [`data_absent`]: a dataset or asset; fails under `ANYTIME_EDGE_REQUIRE_DATA=1`;
//! - [`gpu_absent`]: a GPU adapter; fails under `ANYTIME_EDGE_REQUIRE_GPU=1`;
//! - [`not_here`]: something no setting can provide on this machine (an instruction set
//!   the CPU lacks, a kernel feature); never fails.
//!
//! [`ran`] writes what did run where that varies by machine (which SIMD builds were
//! checked), so the log says both.

use std::io::Write;

/// Set to `1` where every dataset and asset a test asks for must be present (CI).
pub const REQUIRE_DATA_ENV: &str = "ANYTIME_EDGE_REQUIRE_DATA";
/// Set (to anything but empty or `0`) where a GPU adapter must exist (CI, with lavapipe).
pub const REQUIRE_GPU_ENV: &str = "ANYTIME_EDGE_REQUIRE_GPU";
/// A file every skip (and every [`ran`] line) is appended to.
pub const SKIP_LOG_ENV: &str = "ANYTIME_EDGE_SKIP_LOG";

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Writes `line` to stderr and appends it to `$ANYTIME_EDGE_SKIP_LOG` (one `write` per
/// line, so lines from test processes running at once do not interleave).
fn log(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match opened {
            Ok(mut f) => {
                if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                    panic!("{SKIP_LOG_ENV}={}: {e}", path.to_string_lossy());
                }
            }
            Err(e) => panic!("{SKIP_LOG_ENV}={}: {e}", path.to_string_lossy()),
        }
    }
}

/// `test` cannot run because data it needs is absent (`reason`): panics under
/// `ANYTIME_EDGE_REQUIRE_DATA=1`, else logs `SKIPPED test: reason`.
#[track_caller]
pub fn data_absent(test: &str, reason: &str) {
    if required(REQUIRE_DATA_ENV) {
        panic!("{test}: {reason}, and {REQUIRE_DATA_ENV}=1 requires it");
    }
    log(&format!("SKIPPED {test}: {reason}"));
}

/// `test` cannot run because there is no GPU adapter: panics under
/// `ANYTIME_EDGE_REQUIRE_GPU`, else logs `SKIPPED test: no GPU adapter ...`.
#[track_caller]
pub fn gpu_absent(test: &str) {
    if required(REQUIRE_GPU_ENV) {
        panic!("{test}: no GPU adapter, and {REQUIRE_GPU_ENV} is set (CI installs lavapipe)");
    }
    log(&format!(
        "SKIPPED {test}: no GPU adapter (install mesa-vulkan-drivers for lavapipe)"
    ));
}

/// `test` (or a part of it) cannot run on this machine because `reason` (e.g. the CPU
/// lacks AVX-512F): logs `SKIPPED test: reason`, never fails.
pub fn not_here(test: &str, reason: &str) {
    log(&format!("SKIPPED {test}: {reason}"));
}

/// Logs `RAN test: what`, for what runs on some machines and not others.
pub fn ran(test: &str, what: &str) {
    log(&format!("RAN {test}: {what}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test sets the environment (tests in a binary share it): the log receives both
    /// kinds of line, and a requirement turns a skip into a failure.
    #[test]
    fn skips_reach_the_log_and_fail_where_required() {
        let dir = std::env::temp_dir().join(format!("anytime-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("skips.log");
        let _ = std::fs::remove_file(&path);
        // The only test of this binary, so nothing else reads the environment meanwhile.
        std::env::set_var(SKIP_LOG_ENV, &path);
        std::env::remove_var(REQUIRE_DATA_ENV);
        std::env::remove_var(REQUIRE_GPU_ENV);
        data_absent("t1", "no data");
        gpu_absent("t2");
        not_here("t3", "no AVX-512F");
        ran("t4", "AVX2 build");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "SKIPPED t1: no data");
        assert!(lines[1].starts_with("SKIPPED t2: no GPU adapter"));
        assert_eq!(lines[2], "SKIPPED t3: no AVX-512F");
        assert_eq!(lines[3], "RAN t4: AVX2 build");
        std::env::set_var(REQUIRE_DATA_ENV, "1");
        std::env::set_var(REQUIRE_GPU_ENV, "1");
        assert!(std::panic::catch_unwind(|| data_absent("t5", "no data")).is_err());
        assert!(std::panic::catch_unwind(|| gpu_absent("t6")).is_err());
        not_here("t7", "never required");
        std::env::remove_var(REQUIRE_DATA_ENV);
        std::env::remove_var(REQUIRE_GPU_ENV);
        std::env::remove_var(SKIP_LOG_ENV);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
