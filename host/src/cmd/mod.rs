pub mod bench_encode;
pub mod bench_learn;
pub mod bench_store;
pub mod bench_train;
mod gemm_libs;
pub mod inspect_store;
pub mod simulate;

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The median of `v` (the upper one of an even count; NaN when empty), sorting `v`.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Writes a benchmark report to `target/bench/<name>` (or `$ANYTIME_EDGE_BENCH_DIR/<name>`)
/// and returns its path.
pub fn bench_out(name: &str, report: &serde_json::Value) -> Result<PathBuf> {
    let dir = std::env::var_os("ANYTIME_EDGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
