//! The wgpu step-parity tests' shared set-up: one tuned state on both backends, and the
//! tuned state's tensors compared (see `train_gpu_masked_step.rs` for the bounds).

use anytime_runtime::block::{block_tensor_shapes, BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{CpuBackend, TrainBackend, TrainConfig, TrainError, TunedState};
use anytime_testkit::close;

use super::{compare_abs, compare_rel};

/// Learning rate of every parity test (scaled per step).
pub const LR: f32 = 1e-3;
/// Bound on the Adam moments, relative to the tensor's largest CPU value.
pub const MOMENT_RTOL: f64 = 1e-4;

/// The default configuration at [`LR`].
pub fn config() -> TrainConfig {
    TrainConfig {
        lr: LR,
        ..TrainConfig::default()
    }
}

/// Both backends from one random tuned state (`b` = 0.3), or `None` (skip logged; a
/// failure under `ANYTIME_EDGE_REQUIRE_GPU`) when there is no adapter.
pub fn pair(test: &str, dims: BlockDims, seed: u64) -> Option<(CpuBackend, GpuBackend)> {
    let mut state = TunedState::fresh(&dims, BlockParams::random(&dims, seed));
    state.other_bias = 0.3;
    let head = FrozenHead::random(&dims, seed + 1);
    let gpu = match GpuBackend::new(dims, config(), head.clone(), state.clone()) {
        Ok(g) => g,
        Err(TrainError::NoAdapter) => {
            anytime_testkit::skip::gpu_absent(test);
            return None;
        }
        Err(e) => panic!("GPU backend: {e}"),
    };
    let cpu = CpuBackend::new(dims, config(), head, state).expect("CPU backend");
    Some((cpu, gpu))
}

/// Block tensor `i` of `s`: weights, first and second moments.
fn block_part(s: &TunedState, i: usize) -> [&[f32]; 3] {
    [&s.params, &s.optim.m, &s.optim.v].map(|t| t.tensors()[i])
}

/// Report lines for every tensor of the GPU's tuned state `g` against the CPU's `c`: the
/// weights and `b` within `2e-3 · LR · steps` (`steps`: the sum of the learning-rate
/// scales so far), the moments within [`MOMENT_RTOL`].
pub fn tuned_state_lines(
    dims: &BlockDims,
    g: &TunedState,
    c: &TunedState,
    steps: f64,
) -> Vec<(String, bool)> {
    let bound = 2e-3 * LR as f64 * steps;
    let mut lines = Vec::new();
    for (i, (name, _)) in block_tensor_shapes(dims).iter().enumerate() {
        let ([gp, gm, gv], [cp, cm, cv]) = (block_part(g, i), block_part(c, i));
        lines.push(compare_abs(name, gp, cp, bound));
        lines.push(compare_rel(&format!("m {name}"), gm, cm, MOMENT_RTOL));
        lines.push(compare_rel(&format!("v {name}"), gv, cv, MOMENT_RTOL));
    }
    lines.push(compare_abs("b", &[g.other_bias], &[c.other_bias], bound));
    for (got, want, name) in [
        (g.optim.m_bias, c.optim.m_bias, "m b"),
        (g.optim.v_bias, c.optim.v_bias, "v b"),
    ] {
        let ok = close(got, want, 0.0, MOMENT_RTOL);
        lines.push((format!("{name}: gpu {got:e}, cpu {want:e}"), ok));
    }
    lines
}

/// `lines` as one report headed by `what`, after asserting every line is within bounds.
#[track_caller]
pub fn assert_report(what: &str, gpu: &GpuBackend, lines: &[(String, bool)]) -> String {
    let report: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    let report = format!(
        "{what}, {:?} on {}:\n{}",
        gpu.dims(),
        gpu.adapter(),
        report.join("\n")
    );
    assert!(lines.iter().all(|(_, ok)| *ok), "{report}");
    report
}
