//! How a test that needs data the machine lacks says so: a visible line instead of a
//! silent pass, and a failure where the data is required (CI sets
//! `ANYTIME_EDGE_REQUIRE_DATA=1`).

use std::io::Write;

/// Set to `1` where every dataset and asset a test asks for must be present (CI).
pub const REQUIRE_DATA_ENV: &str = "ANYTIME_EDGE_REQUIRE_DATA";
/// A file every skip is appended to (CI prints it at the end of the run).
pub const SKIP_LOG_ENV: &str = "ANYTIME_EDGE_SKIP_LOG";

/// Reports that `test` cannot run because `reason`: panics when data is required,
/// otherwise prints the reason on stderr and appends it to `$ANYTIME_EDGE_SKIP_LOG`.
pub fn data_absent(test: &str, reason: &str) {
    if std::env::var(REQUIRE_DATA_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {REQUIRE_DATA_ENV}=1 requires it");
    }
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
