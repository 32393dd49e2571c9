//! `TrainBackend::masked_step` (SPEC §8's `L_r`) on the wgpu backend against the CPU
//! backend: from one tuned state and one masked state, on the same batches, the loss, the
//! block's weights and Adam moments, both step counts and every tensor of the
//! `MaskedState` agree after 1 and after 3 steps, at learning-rate scale 1 and 0.1, with
//! batch sizes changing (the plan rebuilt); mixed with contrastive steps they still agree;
//! a refused step changes nothing; and `GpuMasked` runs on the backend's context. Runs on
//! whatever adapter exists (Mesa lavapipe in CI); without one every test logs a skip
//! (`anytime_testkit::skip`) and passes, unless `ANYTIME_EDGE_REQUIRE_GPU` is set.
//!
//! Parity tolerances (those of `train_gpu.rs` and `train_gpu_masked.rs`; lr 1e-3 so that
//! the updates are large enough to compare):
//! - loss: relative 1e-5 ([`RTOL`]);
//! - weights (block tensors, `b`, mask token, `pos`, `W_r`, `b_r`): per tensor
//!   `max |θ_gpu − θ_cpu| ≤ 2e-3 · lr · Σ scales` (a step moves a weight by about lr·scale;
//!   the paths agree on every move to 0.2 % of one);
//! - Adam moments: per tensor `max |gpu − cpu| ≤ 1e-4 · max |cpu|` (`train_gpu.rs`'s
//!   gradient bound: the moments are running means of the gradient and its square);
//! - step counts: equal; `b` and its moments, untouched by `L_r`: the same bits.
//!
//! Measured on lavapipe: loss ≤ 6.3e-8 relative; weights ≤ 9e-8 on the small dims (1.2 %
//! of the bound) and 7.2e-7 on the wider shape (18 %); moments ≤ 6.3e-7 relative.
#![cfg(feature = "gpu")]

use anytime_linalg::Gemm;
use anytime_runtime::block::{l2_normalise, BlockDims};
use anytime_runtime::train::gpu::{GpuBackend, GpuMasked};
use anytime_runtime::train::{
    mask_positions, masked_gradients, Batch, CpuBackend, MaskedBatch, MaskedHead, MaskedState,
    TrainBackend, TrainError, TunedState, HEAD_TENSORS,
};
use anytime_testkit::close;

mod dense_common;
use dense_common::gpu::*;
use dense_common::*;

/// A masked state with a random head (a zero `W_r` would give the block no gradient) and
/// zero moments.
fn masked_state(dims: &BlockDims, seed: u64) -> MaskedState {
    MaskedState::fresh(dims, MaskedHead::random(dims, seed))
}

/// One masked step on each backend from its own masked state; the stats must agree.
fn masked_both(
    (cpu, gpu): (&mut CpuBackend, &mut GpuBackend),
    (cm, gm): (&mut MaskedState, &mut MaskedState),
    tokens: &[f32],
    seed: u64,
    scale: f32,
) {
    let batch = MaskedBatch { tokens, seed };
    let c = cpu.masked_step(&batch, cm, scale).expect("CPU masked step");
    let g = gpu.masked_step(&batch, gm, scale).expect("GPU masked step");
    assert!(
        close(g.loss, c.loss, 0.0, RTOL),
        "L_r: gpu {:e}, cpu {:e}",
        g.loss,
        c.loss
    );
    assert_eq!(
        (g.batch, g.step, g.head_step),
        (c.batch, c.step, c.head_step)
    );
    let ratio = (g.loss - c.loss).abs() / c.loss.abs();
    eprintln!("L_r: gpu {:e}, cpu {:e}, ratio {ratio:e}", g.loss, c.loss);
}

/// Tensor `i` of `s`'s head ([`HEAD_TENSORS`] order): weights, first and second moments.
fn head_part(s: &MaskedState, i: usize) -> [&[f32]; 3] {
    [&s.head, &s.m, &s.v].map(|h| h.tensors()[i])
}

/// Every tensor of both backends' states and both masked states compared (see the module
/// docs for the bounds; `steps` is the sum of the learning-rate scales so far); the
/// report, after asserting that every line is within its bound.
fn check_states(
    what: &str,
    (cpu, gpu): (&mut CpuBackend, &mut GpuBackend),
    (cm, gm): (&MaskedState, &MaskedState),
    steps: f64,
) -> String {
    let (c, g) = (cpu.state().unwrap(), gpu.state().unwrap());
    let bound = 2e-3 * LR as f64 * steps;
    let mut lines = tuned_state_lines(&cpu.dims(), &g, &c, steps);
    for (i, name) in HEAD_TENSORS.iter().enumerate() {
        let ([gh, gm_, gv], [ch, cm_, cv]) = (head_part(gm, i), head_part(cm, i));
        lines.push(compare_abs(name, gh, ch, bound));
        lines.push(compare_rel(&format!("m {name}"), gm_, cm_, MOMENT_RTOL));
        lines.push(compare_rel(&format!("v {name}"), gv, cv, MOMENT_RTOL));
    }
    let report = assert_report(what, gpu, &lines);
    assert_eq!(g.optim.step, c.optim.step, "{what}: block steps");
    assert_eq!(gm.step, cm.step, "{what}: masked-head steps");
    report
}

/// Masked steps on `dims` at `scale` with the batch sizes `batches`; the states compared
/// after the steps `check_after` (1-based).
fn check_masked_steps(
    test: &str,
    dims: BlockDims,
    scale: f32,
    batches: &[usize],
    check_after: &[usize],
) {
    let Some((mut cpu, mut gpu)) = pair(test, dims, 1) else {
        return;
    };
    let start = gpu.state().unwrap();
    let plan_bytes = gpu.memory().plan;
    let mut cm = masked_state(&dims, 2);
    let mut gm = cm.clone();
    for (s, &b) in batches.iter().enumerate() {
        let tokens = random(b * dims.tokens_len(), 1.5, 10 + s as u64);
        let backends = (&mut cpu, &mut gpu);
        masked_both(backends, (&mut cm, &mut gm), &tokens, 20 + s as u64, scale);
        let steps = s + 1;
        if check_after.contains(&steps) {
            let what = format!("{steps} masked steps at scale {scale}");
            let backends = (&mut cpu, &mut gpu);
            let report = check_states(&what, backends, (&cm, &gm), scale as f64 * steps as f64);
            eprintln!("{report}");
        }
    }
    // `b` has no gradient in `L_r`: neither path touches it or its moments.
    for s in [cpu.state().unwrap(), gpu.state().unwrap()] {
        let b = |s: &TunedState| [s.other_bias, s.optim.m_bias, s.optim.v_bias].map(f32::to_bits);
        assert_eq!(b(&s), b(&start), "b or its moments moved");
        assert_ne!(s.params, start.params, "the block did not move");
    }
    assert_ne!(
        gm.head,
        masked_state(&dims, 2).head,
        "the head did not move"
    );
    assert!(gpu.memory().plan > plan_bytes, "L_r's plan is not counted");
}

#[test]
fn gpu_masked_step_matches_the_cpu_after_1_and_3_steps() {
    const TEST: &str = "gpu_masked_step_matches_the_cpu_after_1_and_3_steps";
    // Batch sizes 3, 2, 3: the plan rebuilt twice.
    check_masked_steps(TEST, SMALL, 1.0, &[3, 2, 3], &[1, 3]);
}

#[test]
fn gpu_masked_step_matches_the_cpu_at_lr_scale_0_1() {
    const TEST: &str = "gpu_masked_step_matches_the_cpu_at_lr_scale_0_1";
    check_masked_steps(TEST, SMALL, 0.1, &[3, 2, 3], &[1, 3]);
}

#[test]
fn gpu_masked_step_matches_the_cpu_on_a_wider_shape() {
    const TEST: &str = "gpu_masked_step_matches_the_cpu_on_a_wider_shape";
    check_masked_steps(TEST, WIDE, 1.0, &[2, 2], &[2]);
}

/// Bad input is refused with its own error and changes nothing on the GPU backend (its
/// state, the caller's masked state); the next good step then gives the CPU's result.
#[test]
fn gpu_refused_masked_step_changes_nothing() {
    const TEST: &str = "gpu_refused_masked_step_changes_nothing";
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(TEST, dims, 30) else {
        return;
    };
    let mut gm = masked_state(&dims, 31);
    let mut cm = gm.clone();
    // A good step first, so that a plan exists and the state is not the initial one.
    let tokens = random(2 * dims.tokens_len(), 1.0, 32);
    masked_both((&mut cpu, &mut gpu), (&mut cm, &mut gm), &tokens, 1, 1.0);
    let (t0, m0) = (gpu.state().unwrap(), gm.clone());

    let ok = MaskedBatch {
        tokens: &tokens,
        seed: 2,
    };
    let short = MaskedBatch {
        tokens: &tokens[1..],
        ..ok
    };
    let none = MaskedBatch { tokens: &[], ..ok };
    let long: Vec<f32> = tokens.iter().chain(&tokens[..5]).copied().collect();
    let long = MaskedBatch {
        tokens: &long,
        ..ok
    };
    for b in [short, none, long] {
        let e = refuse(&mut gpu, &b, &mut gm, 1.0);
        assert!(matches!(e, TrainError::Shape { .. }), "{e}");
    }
    for bad in [f32::NAN, f32::INFINITY] {
        let mut t = tokens.clone();
        t[7] = bad;
        let e = refuse(&mut gpu, &MaskedBatch { tokens: &t, ..ok }, &mut gm, 1.0);
        assert!(matches!(e, TrainError::NonFinite { .. }), "{e}");
    }
    for scale in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let e = refuse(&mut gpu, &ok, &mut gm, scale);
        assert!(matches!(e, TrainError::LrScale(_)), "{scale}: {e}");
    }
    let other = BlockDims {
        width: 16,
        heads: 2,
        ..dims
    };
    let mut wrong = MaskedState::init(&other, 33);
    let e = refuse(&mut gpu, &ok, &mut wrong, 1.0);
    assert!(matches!(e, TrainError::MaskedStateDims(_)), "{e}");
    assert_eq!(wrong, MaskedState::init(&other, 33));
    let mut odd_moment = gm.clone();
    odd_moment.v = MaskedHead::zeros(&BlockDims { tokens: 4, ..dims });
    let e = refuse(&mut gpu, &ok, &mut odd_moment, 1.0);
    assert!(matches!(e, TrainError::MaskedStateDims(_)), "{e}");

    assert_eq!(
        gpu.state().unwrap(),
        t0,
        "a refused step changed the GPU state"
    );
    assert_eq!(gm, m0, "a refused step changed the masked state");
    // The same batch, accepted, still gives the CPU's step.
    masked_both((&mut cpu, &mut gpu), (&mut cm, &mut gm), &tokens, 2, 1.0);
    let report = check_states("after refused steps", (&mut cpu, &mut gpu), (&cm, &gm), 2.0);
    eprintln!("{report}");
}

/// The error of a masked step that must be refused.
fn refuse(
    gpu: &mut GpuBackend,
    batch: &MaskedBatch<'_>,
    m: &mut MaskedState,
    s: f32,
) -> TrainError {
    gpu.masked_step(batch, m, s)
        .expect_err("a bad masked step was accepted")
}

/// A contrastive batch of `b` random token sets over `n` labels.
fn contrastive(dims: &BlockDims, b: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let tokens = random(b * dims.tokens_len(), 1.5, seed);
    let labels = (0..b).map(|i| (i % n) as u32).collect();
    let mut text = random(n * dims.embed, 1.0, seed + 1);
    l2_normalise(&mut text, dims.embed);
    (tokens, labels, text)
}

/// Contrastive and masked steps interleaved, at both scales, give the same states on
/// both backends (`b` included: the contrastive steps move it).
#[test]
fn gpu_masked_and_contrastive_steps_interleaved_match_the_cpu() {
    const TEST: &str = "gpu_masked_and_contrastive_steps_interleaved_match_the_cpu";
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(TEST, dims, 40) else {
        return;
    };
    let mut cm = masked_state(&dims, 41);
    let mut gm = cm.clone();
    // (masked?, scale)
    let plan = [
        (false, 1.0f32),
        (true, 1.0),
        (true, 0.1),
        (false, 0.1),
        (true, 1.0),
        (false, 1.0),
    ];
    let mut steps = 0.0;
    for (i, &(masked, scale)) in plan.iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        if masked {
            let tokens = random(3 * dims.tokens_len(), 1.5, seed);
            masked_both(
                (&mut cpu, &mut gpu),
                (&mut cm, &mut gm),
                &tokens,
                seed,
                scale,
            );
        } else {
            let (tokens, labels, text) = contrastive(&dims, 4, 3, seed);
            let batch = Batch {
                tokens: &tokens,
                labels: &labels,
                text: &text,
                n_labels: 3,
            };
            let c = cpu.step_scaled(&batch, scale).expect("CPU step");
            let g = gpu.step_scaled(&batch, scale).expect("GPU step");
            assert!(close(g.loss, c.loss, 0.0, RTOL), "{} vs {}", g.loss, c.loss);
            assert_eq!(g.step, c.step);
        }
        steps += scale as f64;
    }
    let report = check_states("interleaved", (&mut cpu, &mut gpu), (&cm, &gm), steps);
    eprintln!("{report}");
    assert_eq!(gpu.state().unwrap().optim.step, plan.len() as u64);
    assert_eq!(gm.step, plan.iter().filter(|(m, _)| *m).count() as u64);
}

/// [`GpuMasked`] on the backend's own context (one device): its `L_r` from the backend's
/// current state is the loss the backend's next masked step reports, and the standalone
/// run leaves the backend's buffers alone.
#[test]
fn gpu_masked_shares_the_backends_context() {
    const TEST: &str = "gpu_masked_shares_the_backends_context";
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(TEST, dims, 60) else {
        return;
    };
    let mut alone = GpuMasked::with_context(gpu.context().clone(), dims).expect("GpuMasked");
    let mut gm = masked_state(&dims, 61);
    let mut cm = gm.clone();
    let tokens = random(2 * dims.tokens_len(), 1.5, 62);
    let state = gpu.state().unwrap();
    let positions = mask_positions(dims.tokens, 2, 63);
    let standalone = alone
        .gradients(&state.params, &gm.head, &tokens, 2, &positions)
        .expect("GpuMasked on the backend's context");
    let cpu_grads = masked_gradients(
        &Gemm::default(),
        &dims,
        &state.params,
        &gm.head,
        &tokens,
        2,
        &positions,
    );
    assert!(close(standalone.loss, cpu_grads.loss, 0.0, RTOL));
    assert_eq!(
        gpu.state().unwrap(),
        state,
        "GpuMasked changed the backend's buffers"
    );
    let batch = MaskedBatch {
        tokens: &tokens,
        seed: 63,
    };
    let stepped = gpu.masked_step(&batch, &mut gm, 1.0).expect("masked step");
    assert!(
        close(stepped.loss, standalone.loss, 0.0, RTOL),
        "backend {:e}, GpuMasked {:e}",
        stepped.loss,
        standalone.loss
    );
    cpu.masked_step(&batch, &mut cm, 1.0)
        .expect("CPU masked step");
    check_states("beside a GpuMasked", (&mut cpu, &mut gpu), (&cm, &gm), 1.0);
}
