//! The wgpu backend against the shared numeric checks (`train_common`, the same bodies the
//! CPU backend runs) and against the CPU backend itself (parity of gradients, of one step
//! and of ten steps). Runs on whatever adapter exists (Mesa lavapipe in CI); without one
//! every test logs a skip (`anytime_testkit::skip`) and passes, unless `ANYTIME_EDGE_REQUIRE_GPU` is set
//! (`.ci/run` sets it), which makes a missing adapter a failure.
//!
//! Parity tolerances (f32 on both sides, different summation orders, LayerNorm statistics
//! and the loss in f64 on the CPU and f32 on the GPU):
//! - loss: relative 1e-5;
//! - gradients: per tensor, `max |g_gpu − g_cpu| ≤ 1e-4 · max |g_cpu|` (measured on
//!   lavapipe with the tiny model: ≤ 2e-6 relative);
//! - weights after AdamW (lr 1e-3, so updates are large enough to compare): per tensor,
//!   `max |θ_gpu − θ_cpu| ≤ 2e-3 · lr · steps` (Adam normalises the gradient, so a step
//!   moves every weight by about lr; the bound says the two paths moved every weight the
//!   same way to within 0.2 % of one step), and the same bound on `b`. Measured on
//!   lavapipe: 1.5e-8 after one step, 5.5e-7 after ten (bounds 2e-6 and 2e-5).
#![cfg(feature = "gpu")]

mod train_common;

use anytime_runtime::block::{block_tensor_shapes, BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{CpuBackend, TrainBackend, TrainConfig, TrainError, TunedState};
use anytime_testkit::{close, max_abs, max_abs_diff};
use train_common::*;

const GPU: Make<GpuBackend> = GpuBackend::new;
const CPU: Make<CpuBackend> = CpuBackend::new;

/// Whether an adapter exists; logs `test`'s skip when not (a failure under
/// `ANYTIME_EDGE_REQUIRE_GPU`).
fn gpu_available(test: &str) -> bool {
    let dims = SMALL;
    let state = TunedState::fresh(&dims, BlockParams::random(&dims, 1));
    match GpuBackend::new(
        dims,
        TrainConfig::default(),
        FrozenHead::random(&dims, 2),
        state,
    ) {
        Ok(_) => true,
        Err(TrainError::NoAdapter) => {
            anytime_testkit::skip::gpu_absent(test);
            false
        }
        Err(e) => panic!("GPU backend: {e}"),
    }
}

#[test]
fn train_gpu_param_gradients_match_finite_differences() {
    if gpu_available("train_gpu_param_gradients_match_finite_differences") {
        check_param_gradients(GPU, TrainConfig::default());
    }
}

#[test]
fn train_gpu_param_gradients_match_finite_differences_at_small_logit_scale() {
    if gpu_available("train_gpu_param_gradients_match_finite_differences_at_small_logit_scale") {
        check_param_gradients(
            GPU,
            TrainConfig {
                logit_scale: 10.0,
                ..TrainConfig::default()
            },
        );
    }
}

#[test]
fn train_gpu_token_gradients_match_finite_differences() {
    if gpu_available("train_gpu_token_gradients_match_finite_differences") {
        check_token_gradients(GPU, TrainConfig::default());
    }
}

#[test]
fn train_gpu_step_contract() {
    if gpu_available("train_gpu_step_contract") {
        check_step_contract(GPU);
    }
}

#[test]
fn train_gpu_learns_a_fixed_batch_on_the_tiny_model() {
    if gpu_available("train_gpu_learns_a_fixed_batch_on_the_tiny_model") {
        let (dims, p, h) = tiny_block();
        check_learning(GPU, dims, p, h, 60);
    }
}

/// Both backends on the tiny dims from the same state, config and head.
fn both(cfg: &TrainConfig) -> (BlockDims, CpuBackend, GpuBackend) {
    let (dims, p, h) = tiny_block();
    let mut state = TunedState::fresh(&dims, p);
    state.other_bias = 0.2;
    let cpu = CPU(dims, cfg.clone(), h.clone(), state.clone()).expect("cpu backend");
    let gpu = GPU(dims, cfg.clone(), h, state).expect("gpu backend");
    (dims, cpu, gpu)
}

#[test]
fn train_gpu_gradients_match_the_cpu_path() {
    if !gpu_available("train_gpu_gradients_match_the_cpu_path") {
        return;
    }
    let cfg = TrainConfig::default();
    let (dims, mut cpu, mut gpu) = both(&cfg);
    let data = random_data(&dims, 4, 5, 90);
    let (sc, gc) = cpu.gradients(&data.batch()).unwrap();
    let (sg, gg) = gpu.gradients(&data.batch()).unwrap();
    assert!(
        close(sg.loss, sc.loss, 1e-5 * sc.loss.abs().max(1.0), 0.0),
        "loss cpu {} gpu {}",
        sc.loss,
        sg.loss
    );
    assert_eq!(sc.correct, sg.correct);
    let names = block_tensor_shapes(&dims);
    let mut report = vec![];
    for (i, (name, _)) in names.iter().enumerate() {
        let (c, g) = (gc.params.tensors()[i], gg.params.tensors()[i]);
        let (diff, scale) = (max_abs_diff(c, g), max_abs(c));
        report.push(format!("{name}: max diff {diff:e}, scale {scale:e}"));
        assert!(diff <= 1e-4 * scale, "{name}: {diff:e} vs scale {scale:e}");
    }
    let (diff, scale) = (max_abs_diff(&gc.tokens, &gg.tokens), max_abs(&gc.tokens));
    report.push(format!("tokens: max diff {diff:e}, scale {scale:e}"));
    assert!(diff <= 1e-4 * scale, "tokens: {diff:e} vs scale {scale:e}");
    let tol = 1e-4 * gc.other_bias.abs().max(1e-3) as f64;
    assert!(
        close(gg.other_bias, gc.other_bias, tol, 0.0),
        "b: {gg:?} vs {gc:?}"
    );
    eprintln!("gradient parity:\n{}", report.join("\n"));
}

/// Runs `steps` steps on both backends (a new batch each step) and compares the states.
fn check_step_parity(steps: usize) {
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let (dims, mut cpu, mut gpu) = both(&cfg);
    for s in 0..steps {
        let data = random_data(&dims, 4, 5, 100 + s as u64);
        let sc = cpu.step(&data.batch()).unwrap();
        let sg = gpu.step(&data.batch()).unwrap();
        assert!(
            close(sg.loss, sc.loss, 1e-4 * sc.loss.abs().max(1.0), 0.0),
            "step {s}: loss cpu {} gpu {}",
            sc.loss,
            sg.loss
        );
        assert_eq!(sc.step, sg.step);
    }
    let (c, g) = (cpu.state().unwrap(), gpu.state().unwrap());
    assert_eq!(c.optim.step, steps as u64);
    assert_eq!(g.optim.step, steps as u64);
    let tol = 2e-3 * cfg.lr as f64 * steps as f64;
    let names = block_tensor_shapes(&dims);
    let mut report = vec![];
    for (i, (name, _)) in names.iter().enumerate() {
        let diff = max_abs_diff(c.params.tensors()[i], g.params.tensors()[i]);
        report.push(format!("{name}: max |Δθ| {diff:e}"));
        assert!(diff <= tol, "{name}: weights differ by {diff:e} > {tol:e}");
    }
    let diff = max_abs_diff(&[c.other_bias], &[g.other_bias]);
    report.push(format!("b: |Δ| {diff:e}"));
    assert!(diff <= tol, "b differs by {diff:e}");
    eprintln!(
        "after {steps} step(s), tolerance {tol:e}:\n{}",
        report.join("\n")
    );
}

#[test]
fn train_gpu_one_step_matches_the_cpu_path() {
    if gpu_available("train_gpu_one_step_matches_the_cpu_path") {
        check_step_parity(1);
    }
}

#[test]
fn train_gpu_ten_steps_match_the_cpu_path() {
    if gpu_available("train_gpu_ten_steps_match_the_cpu_path") {
        check_step_parity(10);
    }
}

#[test]
fn train_gpu_state_round_trips_and_batch_shapes_change() {
    if !gpu_available("train_gpu_state_round_trips_and_batch_shapes_change") {
        return;
    }
    let mut gpu = small_backend(GPU, TrainConfig::default(), 5);
    let s0 = gpu.state().unwrap();
    // Shapes change between calls: a plan per shape (the third finds the first's kept).
    for (b, y) in [(3, 5), (2, 2), (3, 5)] {
        let data = random_data(&SMALL, b, y, 7);
        let st = gpu.step(&data.batch()).unwrap();
        assert_eq!(st.batch, b);
    }
    assert_eq!(gpu.state().unwrap().optim.step, 3);
    gpu.set_state(&s0).unwrap();
    assert_eq!(gpu.state().unwrap(), s0);
}

/// A learning-rate scale moves the GPU's weights as it moves the CPU's (the parity bound
/// of `check_step_parity` at the scaled rate); a bad scale is refused. (The masked step's
/// parity is `train_gpu_masked_step.rs`'s.)
#[test]
fn train_gpu_lr_scale_matches_the_cpu_path() {
    if !gpu_available("train_gpu_lr_scale_matches_the_cpu_path") {
        return;
    }
    let (scale, steps) = (0.1f32, 2);
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let (dims, mut cpu, mut gpu) = both(&cfg);
    let start = cpu.state().unwrap();
    for s in 0..steps {
        let data = random_data(&dims, 4, 5, 300 + s as u64);
        cpu.step_scaled(&data.batch(), scale).unwrap();
        gpu.step_scaled(&data.batch(), scale).unwrap();
    }
    let (c, g) = (cpu.state().unwrap(), gpu.state().unwrap());
    let tol = 2e-3 * (cfg.lr * scale) as f64 * steps as f64;
    for (i, (name, _)) in block_tensor_shapes(&dims).iter().enumerate() {
        let diff = max_abs_diff(c.params.tensors()[i], g.params.tensors()[i]);
        assert!(diff <= tol, "{name}: weights differ by {diff:e} > {tol:e}");
        let moved = max_abs_diff(c.params.tensors()[i], start.params.tensors()[i]);
        assert!(moved > 0.0 && moved < 1.5 * (cfg.lr * scale) as f64 * steps as f64);
    }
    assert!(matches!(
        gpu.step_scaled(&random_data(&dims, 4, 5, 1).batch(), f32::NAN),
        Err(TrainError::LrScale(_))
    ));
}

/// The learner's pattern (issue 17): a batch-1 probe (`loss_embed`) and a batch-32 step
/// over the same labels, alternating. Once each shape has been seen, the backend keeps
/// both plans and its read-back buffers: further calls create no GPU buffer, both plans
/// count in `memory()`, and a kept plan answers as a fresh one does.
#[test]
fn train_gpu_alternating_probes_and_steps_create_no_buffer() {
    if !gpu_available("train_gpu_alternating_probes_and_steps_create_no_buffer") {
        return;
    }
    let (dims, p, h) = tiny_block();
    let cfg = TrainConfig::default();
    let mut gpu = GPU(dims, cfg.clone(), h.clone(), TunedState::fresh(&dims, p)).unwrap();
    let n_labels = 3;
    let step = random_data(&dims, 32, n_labels, 11);
    let probe = random_data(&dims, 1, n_labels, 12);
    gpu.loss_embed(&probe.batch()).unwrap();
    let probe_plan = gpu.memory().plan;
    gpu.step(&step.batch()).unwrap();
    let both_plans = gpu.memory().plan;
    assert!(both_plans > 2 * probe_plan, "a batch of 32 needs more");
    let created = gpu.buffers_created();
    let mut last = None;
    for _ in 0..5 {
        last = Some(gpu.loss_embed(&probe.batch()).unwrap());
        let st = gpu.step(&step.batch()).unwrap();
        assert!(st.loss.is_finite());
    }
    assert_eq!(
        gpu.buffers_created(),
        created,
        "alternating probes and steps of seen shapes create no buffer"
    );

    // The probe's kept plan answers as a fresh backend's does, from the same weights.
    let (stats, emb) = gpu.loss_embed(&probe.batch()).unwrap();
    assert_eq!(gpu.memory().plan, both_plans, "the step's plan is kept too");
    assert_ne!(
        Some(stats.loss),
        last.map(|(s, _)| s.loss),
        "the steps moved the loss"
    );
    let mut fresh = GPU(dims, cfg, h, gpu.state().unwrap()).unwrap();
    let (fresh_stats, fresh_emb) = fresh.loss_embed(&probe.batch()).unwrap();
    assert_eq!(stats.loss, fresh_stats.loss);
    assert_eq!(emb, fresh_emb);
}
