//! `TrainBackend::private_step` (SPEC §7's learner loss) on the wgpu backend against the
//! CPU backend: from one tuned state, on the same batches of real and synthetic samples
//! with old-label distillation, the loss terms, the block's weights, `b`, the Adam moments
//! and the step count agree after 1 and after 3 steps, at learning-rate scale 1 and 0.1,
//! with batch sizes changing, without real samples (no local CE), and mixed with SPEC §4
//! steps; a refused batch changes nothing; repeated shapes create no buffer. Runs on
//! whatever adapter exists (Mesa lavapipe in CI); without one every test logs a skip
//! (`anytime_testkit::skip`) and passes, unless `ANYTIME_EDGE_REQUIRE_GPU` is set.
//!
//! On wgpu the block's forward, backward and AdamW run on the GPU and the loss at the
//! embedding ([`private_loss`], the CPU's own function) on the host, so the two paths
//! differ only by the block's f32 summation orders. Parity tolerances (those of
//! `train_gpu_masked_step.rs`; lr 1e-3 so that the updates are large enough to compare):
//! - loss terms: relative 1e-5 ([`RTOL`]); `correct` and the step count: equal;
//! - weights (block tensors and `b`): per tensor `max |θ_gpu − θ_cpu| ≤ 2e-3 · lr · Σ
//!   scales` (a step moves a weight by about lr·scale; the paths agree on every move to
//!   0.2 % of one);
//! - Adam moments: per tensor `max |gpu − cpu| ≤ 1e-4 · max |cpu|`.
//!
//! Measured on lavapipe: loss ≤ 2e-7 relative; weights ≤ 5 % of the bound (`b`: the same
//! bits); moments ≤ 2.2e-5 relative.
#![cfg(feature = "gpu")]

use anytime_runtime::block::{l2_normalise, BlockDims};
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{
    private_loss, Batch, CpuBackend, PrivateBatch, PrivateStats, TrainBackend, TrainError,
};
use anytime_testkit::close;

mod dense_common;
use dense_common::gpu::*;
use dense_common::*;

/// Learned labels `K` of every batch (the first [`N_LOCAL`]... are not: see [`Data`]).
const N_LABELS: usize = 4;

/// The owned inputs of a private batch: `b` samples of which the first `real` are real,
/// [`N_LABELS`] learned labels, the last two the current period's and the first two old
/// (distilled at `mu` when `mu > 0`).
struct Data {
    tokens: Vec<f32>,
    real: usize,
    labels: Vec<u32>,
    text: Vec<f32>,
    local_labels: Vec<u32>,
    local_text: Vec<f32>,
    n_local: usize,
    old_text: Vec<f32>,
    n_old: usize,
    old_target: Vec<f32>,
    mu: f32,
}

impl Data {
    fn new(dims: &BlockDims, b: usize, real: usize, mu: f32, seed: u64) -> Self {
        let e = dims.embed;
        let tokens = random(b * dims.tokens_len(), 1.5, seed);
        let mut text = random(N_LABELS * e, 1.0, seed + 1);
        l2_normalise(&mut text, e);
        // Real samples of the current labels (2, 3); synthetic ones of every label.
        let labels: Vec<u32> = (0..b)
            .map(|i| (if i < real { 2 + (i % 2) } else { i % N_LABELS }) as u32)
            .collect();
        let (n_local, n_old) = if real > 0 { (2, 2) } else { (0, 2) };
        let local_labels = labels[..real].iter().map(|&l| l - 2).collect();
        let local_text = if real > 0 {
            text[2 * e..].to_vec()
        } else {
            Vec::new()
        };
        let old_text = text[..2 * e].to_vec();
        let old_target = random(b * n_old, 0.6, seed + 2);
        Data {
            tokens,
            real,
            labels,
            text,
            local_labels,
            local_text,
            n_local,
            old_text,
            n_old,
            old_target,
            mu,
        }
    }

    fn batch(&self) -> PrivateBatch<'_> {
        PrivateBatch {
            tokens: &self.tokens,
            real: self.real,
            labels: &self.labels,
            text: &self.text,
            n_labels: N_LABELS,
            local_labels: &self.local_labels,
            local_text: &self.local_text,
            n_local: self.n_local,
            old_text: &self.old_text,
            n_old: self.n_old,
            old_target: &self.old_target,
            mu: self.mu,
        }
    }
}

/// One private step on each backend; the stats must agree.
fn private_both(
    (cpu, gpu): (&mut CpuBackend, &mut GpuBackend),
    data: &Data,
    scale: f32,
) -> PrivateStats {
    let batch = data.batch();
    let c = cpu.private_step(&batch, scale).expect("CPU private step");
    let g = gpu.private_step(&batch, scale).expect("GPU private step");
    for (name, got, want) in [
        ("loss", g.loss, c.loss),
        ("local", g.local, c.local),
        ("balanced", g.balanced, c.balanced),
        ("distill", g.distill, c.distill),
    ] {
        assert!(
            close(got, want, 1e-12, RTOL),
            "{name}: gpu {got:e}, cpu {want:e}"
        );
    }
    assert_eq!((g.correct, g.batch, g.step), (c.correct, c.batch, c.step));
    eprintln!(
        "private step {}: loss gpu {:e}, cpu {:e}",
        g.step, g.loss, c.loss
    );
    g
}

/// Every tensor of both backends' states compared (see the module docs for the bounds;
/// `steps` is the sum of the learning-rate scales so far); the report, after asserting
/// that every line is within its bound.
fn check_states(what: &str, (cpu, gpu): (&mut CpuBackend, &mut GpuBackend), steps: f64) -> String {
    let (c, g) = (cpu.state().unwrap(), gpu.state().unwrap());
    let lines = tuned_state_lines(&cpu.dims(), &g, &c, steps);
    let report = assert_report(what, gpu, &lines);
    assert_eq!(g.optim.step, c.optim.step, "{what}: steps");
    report
}

/// Private steps on `dims` at `scale`, batch `(B, real)` per step; the states compared
/// after the steps `check_after` (1-based).
fn check_private_steps(test: &str, scale: f32, batches: &[(usize, usize)], check_after: &[usize]) {
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(test, dims, 1) else {
        return;
    };
    let start = gpu.state().unwrap();
    for (s, &(b, real)) in batches.iter().enumerate() {
        let data = Data::new(&dims, b, real, 0.5, 10 + 10 * s as u64);
        let stats = private_both((&mut cpu, &mut gpu), &data, scale);
        assert!(stats.distill > 0.0 && stats.balanced > 0.0);
        assert_eq!(stats.local > 0.0, real > 0, "{stats:?}");
        let steps = s + 1;
        if check_after.contains(&steps) {
            let what = format!("{steps} private steps at scale {scale}");
            let report = check_states(&what, (&mut cpu, &mut gpu), scale as f64 * steps as f64);
            eprintln!("{report}");
        }
    }
    let end = gpu.state().unwrap();
    assert_ne!(end.params, start.params, "the block did not move");
    assert_ne!(end.other_bias, start.other_bias, "b did not move");
}

#[test]
fn gpu_private_step_matches_the_cpu_after_1_and_3_steps() {
    const TEST: &str = "gpu_private_step_matches_the_cpu_after_1_and_3_steps";
    // Batch sizes 5, 4, 5 (2 real, the rest synthetic): a second plan, then the first kept.
    check_private_steps(TEST, 1.0, &[(5, 2), (4, 2), (5, 2)], &[1, 3]);
}

#[test]
fn gpu_private_step_matches_the_cpu_at_lr_scale_0_1() {
    const TEST: &str = "gpu_private_step_matches_the_cpu_at_lr_scale_0_1";
    check_private_steps(TEST, 0.1, &[(5, 2), (4, 1), (5, 2)], &[1, 3]);
}

/// Without real samples (synthetic ones alone): no local CE, the balanced CE and the
/// distillation alone.
#[test]
fn gpu_private_step_without_real_samples_matches_the_cpu() {
    const TEST: &str = "gpu_private_step_without_real_samples_matches_the_cpu";
    check_private_steps(TEST, 1.0, &[(4, 0), (4, 0), (3, 0)], &[1, 3]);
}

/// The host half of the GPU step is the CPU's loss: at the GPU's own embeddings (read by
/// `loss_embed`) and `b`, [`private_loss`] gives the stats the step reports.
#[test]
fn gpu_private_step_reports_the_loss_of_its_embeddings() {
    const TEST: &str = "gpu_private_step_reports_the_loss_of_its_embeddings";
    let dims = SMALL;
    let Some((_, mut gpu)) = pair(TEST, dims, 5) else {
        return;
    };
    let data = Data::new(&dims, 5, 2, 0.5, 6);
    let batch = data.batch();
    let (_, emb) = gpu
        .loss_embed(&Batch {
            tokens: batch.tokens,
            labels: batch.labels,
            text: batch.text,
            n_labels: batch.n_labels,
        })
        .unwrap();
    let b = gpu.state().unwrap().other_bias;
    let (mut want, _, _) = private_loss(gpu.config(), &emb, dims.embed, &batch, b);
    want.step = 1;
    assert_eq!(gpu.private_step(&batch, 1.0).unwrap(), want);
}

/// Bad input is refused with its own error and changes nothing on the GPU backend; the
/// next good step then gives the CPU's result; once a shape has been seen, private steps
/// of it create no buffer.
#[test]
fn gpu_refused_private_step_changes_nothing() {
    const TEST: &str = "gpu_refused_private_step_changes_nothing";
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(TEST, dims, 30) else {
        return;
    };
    let data = Data::new(&dims, 5, 2, 0.5, 31);
    private_both((&mut cpu, &mut gpu), &data, 1.0);
    let t0 = gpu.state().unwrap();
    // After the state's read (its staging buffer is kept for the next reads).
    let created = gpu.buffers_created();

    let ok = data.batch();
    let nan_target: Vec<f32> = data.old_target.iter().map(|_| f32::NAN).collect();
    let mut nan_tokens = data.tokens.clone();
    nan_tokens[7] = f32::INFINITY;
    let bad_labels = [0u32, 1, 2, 3, N_LABELS as u32];
    for (bad, what) in [
        (
            PrivateBatch {
                tokens: &data.tokens[1..],
                ..ok
            },
            "short tokens",
        ),
        (
            PrivateBatch {
                tokens: &nan_tokens,
                ..ok
            },
            "infinite token",
        ),
        (
            PrivateBatch {
                old_target: &nan_target,
                ..ok
            },
            "NaN targets",
        ),
        (
            PrivateBatch {
                labels: &bad_labels,
                ..ok
            },
            "label out of range",
        ),
        (PrivateBatch { real: 6, ..ok }, "more real than B"),
        (
            PrivateBatch {
                local_labels: &[],
                ..ok
            },
            "local labels missing",
        ),
        (PrivateBatch { mu: -1.0, ..ok }, "negative μ"),
        (
            PrivateBatch {
                labels: &[],
                tokens: &[],
                old_target: &[],
                real: 0,
                local_labels: &[],
                ..ok
            },
            "empty batch",
        ),
    ] {
        assert!(gpu.private_step(&bad, 1.0).is_err(), "{what} accepted");
    }
    for scale in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let e = gpu.private_step(&ok, scale).unwrap_err();
        assert!(matches!(e, TrainError::LrScale(_)), "{scale}: {e}");
    }
    assert_eq!(
        gpu.state().unwrap(),
        t0,
        "a refused step changed the GPU state"
    );
    // The same batch, accepted, still gives the CPU's step, and creates no buffer.
    private_both((&mut cpu, &mut gpu), &data, 1.0);
    private_both((&mut cpu, &mut gpu), &Data::new(&dims, 5, 1, 0.5, 32), 1.0);
    let report = check_states("after refused steps", (&mut cpu, &mut gpu), 3.0);
    eprintln!("{report}");
    assert_eq!(
        gpu.buffers_created(),
        created,
        "private steps of a seen shape created a buffer"
    );
}

/// SPEC §4 steps and private steps interleaved, at both scales and on shared and other
/// plans, give the same states on both backends.
#[test]
fn gpu_private_and_contrastive_steps_interleaved_match_the_cpu() {
    const TEST: &str = "gpu_private_and_contrastive_steps_interleaved_match_the_cpu";
    let dims = SMALL;
    let Some((mut cpu, mut gpu)) = pair(TEST, dims, 40) else {
        return;
    };
    // (private?, B, scale): the contrastive batches of 5 share the private ones' plan
    // (B = 5, |Y| = 4); those of 3 have their own.
    let plan = [
        (false, 5, 1.0f32),
        (true, 5, 1.0),
        (true, 5, 0.1),
        (false, 3, 0.1),
        (true, 5, 1.0),
        (false, 5, 1.0),
        (true, 3, 1.0),
    ];
    let mut steps = 0.0;
    for (i, &(private, b, scale)) in plan.iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        let data = Data::new(&dims, b, 2, 0.3, seed);
        if private {
            private_both((&mut cpu, &mut gpu), &data, scale);
        } else {
            let batch = Batch {
                tokens: &data.tokens,
                labels: &data.labels,
                text: &data.text,
                n_labels: N_LABELS,
            };
            let c = cpu.step_scaled(&batch, scale).expect("CPU step");
            let g = gpu.step_scaled(&batch, scale).expect("GPU step");
            assert!(close(g.loss, c.loss, 0.0, RTOL), "{} vs {}", g.loss, c.loss);
            assert_eq!(g.step, c.step);
        }
        steps += scale as f64;
    }
    let report = check_states("interleaved", (&mut cpu, &mut gpu), steps);
    eprintln!("{report}");
    assert_eq!(gpu.state().unwrap().optim.step, plan.len() as u64);
}
