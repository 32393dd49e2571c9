//! The CPU backend against the shared numeric checks (`train_common`), plus CPU-only
//! properties: determinism and bit-exact resume from a saved tuned state.

mod train_common;

use anytime_runtime::block::{load_block, BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::adamw::adamw_update;
use anytime_runtime::train::{
    load_tuned, save_tuned, CpuBackend, CpuOptions, TrainBackend, TrainConfig, TrainError,
    TunedState,
};
use train_common::*;

const CPU: Make<CpuBackend> = CpuBackend::new;

#[test]
fn train_cpu_param_gradients_match_finite_differences() {
    check_param_gradients(CPU, TrainConfig::default());
}

#[test]
fn train_cpu_param_gradients_match_finite_differences_at_small_logit_scale() {
    check_param_gradients(
        CPU,
        TrainConfig {
            logit_scale: 10.0,
            ..TrainConfig::default()
        },
    );
}

#[test]
fn train_cpu_token_gradients_match_finite_differences() {
    check_token_gradients(CPU, TrainConfig::default());
}

#[test]
fn train_cpu_step_contract() {
    check_step_contract(CPU);
}

#[test]
fn train_cpu_learns_a_fixed_batch_on_the_tiny_model() {
    let (dims, p, h) = tiny_block();
    check_learning(CPU, dims, p, h, 60);
}

#[test]
fn train_cpu_resume_is_bit_exact() {
    let dims = SMALL;
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let head = FrozenHead::random(&dims, 71);
    let start = TunedState::fresh(&dims, BlockParams::random(&dims, 70));
    let batches: Vec<Data> = (0..6).map(|i| random_data(&dims, 3, 4, 80 + i)).collect();

    let mut straight = CpuBackend::new(dims, cfg.clone(), head.clone(), start.clone()).unwrap();
    for d in &batches {
        straight.step(&d.batch()).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tuned.safetensors");
    let mut first = CpuBackend::new(dims, cfg.clone(), head.clone(), start).unwrap();
    for d in &batches[..3] {
        first.step(&d.batch()).unwrap();
    }
    save_tuned(&path, &dims, &first.state().unwrap(), &head, Some("5eed")).unwrap();
    let (loaded, head2, learner) = load_tuned(&path, &dims).unwrap();
    assert_eq!(learner.as_deref(), Some("5eed"));
    assert_eq!(head2, head);
    assert_eq!(loaded.optim.step, 3);
    let mut resumed = CpuBackend::new(dims, cfg, head2, loaded).unwrap();
    for d in &batches[3..] {
        resumed.step(&d.batch()).unwrap();
    }
    let (a, b) = (straight.state().unwrap(), resumed.state().unwrap());
    let bits = |s: &TunedState| -> Vec<u32> {
        s.params
            .tensors()
            .iter()
            .flat_map(|t| t.iter().map(|x| x.to_bits()))
            .collect()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a, b);
    // The saved file is also a valid last_block.safetensors.
    let (p, _) = load_block(&path, &dims).unwrap();
    assert_eq!(p, first.state().unwrap().params);
}

/// Shapes large enough that the MLP and weight-gradient GEMMs are split across threads.
const WIDE: BlockDims = BlockDims {
    width: 128,
    heads: 4,
    mlp: 512,
    tokens: 10,
    embed: 32,
};

#[test]
fn train_cpu_steps_do_not_depend_on_the_thread_count() {
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let head = FrozenHead::random(&WIDE, 91);
    let start = TunedState::fresh(&WIDE, BlockParams::random(&WIDE, 90));
    let batches: Vec<Data> = (0..3).map(|i| random_data(&WIDE, 40, 6, 92 + i)).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut be = CpuBackend::new(WIDE, cfg.clone(), head.clone(), start.clone()).unwrap();
            let stats: Vec<f32> = batches
                .iter()
                .map(|d| be.step(&d.batch()).unwrap().loss)
                .collect();
            let (_, g) = be.gradients(&batches[0].batch()).unwrap();
            (stats, be.state().unwrap(), g)
        })
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one.0, three.0, "losses");
    assert!(
        one.1 == three.1,
        "tuned states differ between 1 and 3 threads"
    );
    assert!(one.2 == three.2, "gradients differ between 1 and 3 threads");
}

#[test]
fn train_cpu_keeping_workers_awake_changes_no_result_and_every_step_ends() {
    // Four threads: three keepers, so that a keeper can be picked up by a worker that
    // is itself waiting for part of the step (it must give way, not block the step).
    // The steps run on another thread, so that a step that never ends fails the test
    // at the deadline instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let cfg = TrainConfig {
            lr: 1e-3,
            ..TrainConfig::default()
        };
        let head = FrozenHead::random(&WIDE, 95);
        let start = TunedState::fresh(&WIDE, BlockParams::random(&WIDE, 96));
        let batches: Vec<Data> = (0..4).map(|i| random_data(&WIDE, 40, 6, 97 + i)).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let run = |awake: bool| {
            pool.install(|| {
                let options = CpuOptions {
                    keep_awake: awake,
                    ..CpuOptions::default()
                };
                let (dims, cfg, head) = (WIDE, cfg.clone(), head.clone());
                let mut be =
                    CpuBackend::with_options(dims, cfg, head, start.clone(), options).unwrap();
                let losses: Vec<f32> = batches
                    .iter()
                    .map(|d| be.step(&d.batch()).unwrap().loss)
                    .collect();
                (losses, be.state().unwrap())
            })
        };
        let _ = tx.send((run(true), run(false)));
    });
    let (on, off) = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("8 small steps did not end within 300 s (or the step panicked)");
    assert_eq!(on.0, off.0, "losses");
    assert!(
        on.1 == off.1,
        "tuned states differ with and without kept-awake workers"
    );
}

/// Every bit of a state: weights, moments, `b` and its moments, the step count.
fn state_bits(s: &TunedState) -> Vec<u32> {
    let o = &s.optim;
    [&s.params, &o.m, &o.v]
        .iter()
        .flat_map(|p| p.tensors().into_iter().flatten().map(|x| x.to_bits()))
        .chain([s.other_bias, o.m_bias, o.v_bias].map(f32::to_bits))
        .chain([o.step as u32])
        .collect()
}

/// A step with the weight matrices' update fused into backward gives the bits of AdamW
/// applied to the gradients that `gradients` returns, and those of the unfused step, on
/// shapes whose weights are a whole number of the fused strips (32 rows) and not.
#[test]
fn train_cpu_fused_update_is_adamw_of_the_gradients_bit_for_bit() {
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    for (dims, seed) in [(WIDE, 200), (SMALL, 300), (tiny_block().0, 400)] {
        let head = FrozenHead::random(&dims, seed);
        let start = TunedState::fresh(&dims, BlockParams::random(&dims, seed + 1));
        let batches: Vec<Data> = (0..3)
            .map(|i| random_data(&dims, 7, 5, seed + 2 + i))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let new = |s: &TunedState| {
                CpuBackend::new(dims, cfg.clone(), head.clone(), s.clone()).unwrap()
            };
            let mut fused = new(&start);
            let mut want = start.clone();
            for d in &batches {
                let loss = fused.step(&d.batch()).unwrap().loss;
                let (stats, g) = new(&want).gradients(&d.batch()).unwrap();
                assert_eq!(loss.to_bits(), stats.loss.to_bits());
                let (p, o) = (&mut want.params, &mut want.optim);
                adamw_update(
                    &dims,
                    &cfg,
                    o,
                    p,
                    &mut want.other_bias,
                    &g.params,
                    g.other_bias,
                );
                let got = fused.state().unwrap();
                assert!(
                    state_bits(&got) == state_bits(&want),
                    "{dims:?}: the fused step is not AdamW of the gradients"
                );
            }
            let mut unfused = new(&start);
            unfused.set_options(CpuOptions {
                fused_update: false,
                ..unfused.options()
            });
            for d in &batches {
                unfused.step(&d.batch()).unwrap();
            }
            assert!(
                state_bits(&unfused.state().unwrap()) == state_bits(&want),
                "{dims:?}: the unfused step differs"
            );
        });
    }
}

/// `step_scaled` at scale 1 gives the bits of AdamW of the gradients at the configured
/// rate (those of `step`), and at 0.1 the bits of AdamW at a tenth of it: a first update
/// a tenth as large. Scales that are not finite and positive are refused, changing
/// nothing.
#[test]
fn train_cpu_lr_scale_one_is_the_plain_step_and_a_tenth_moves_a_tenth() {
    let cfg = TrainConfig {
        lr: 1e-3,
        ..TrainConfig::default()
    };
    let dims = SMALL;
    let head = FrozenHead::random(&dims, 500);
    let start = TunedState::fresh(&dims, BlockParams::random(&dims, 501));
    let batches: Vec<Data> = (0..3).map(|i| random_data(&dims, 4, 3, 502 + i)).collect();
    let new = |s: &TunedState| CpuBackend::new(dims, cfg.clone(), head.clone(), s.clone()).unwrap();
    for scale in [1.0f32, 0.1] {
        let scaled = TrainConfig {
            lr: cfg.lr * scale,
            ..cfg.clone()
        };
        let mut be = new(&start);
        let mut want = start.clone();
        for d in &batches {
            be.step_scaled(&d.batch(), scale).unwrap();
            let (_, g) = new(&want).gradients(&d.batch()).unwrap();
            let (p, o, b) = (&mut want.params, &mut want.optim, &mut want.other_bias);
            adamw_update(&dims, &scaled, o, p, b, &g.params, g.other_bias);
            assert!(
                state_bits(&be.state().unwrap()) == state_bits(&want),
                "scale {scale}: not AdamW at {} of the gradients",
                scaled.lr
            );
        }
    }
    let (mut plain, mut one) = (new(&start), new(&start));
    for d in &batches {
        let (a, b) = (
            plain.step(&d.batch()).unwrap(),
            one.step_scaled(&d.batch(), 1.0),
        );
        assert_eq!(a, b.unwrap());
    }
    assert!(state_bits(&plain.state().unwrap()) == state_bits(&one.state().unwrap()));

    // The first update moves the block in proportion to the rate.
    let moved = |scale: f32| -> Vec<f64> {
        let mut be = new(&start);
        be.step_scaled(&batches[0].batch(), scale).unwrap();
        let after = be.state().unwrap();
        let pairs = after
            .params
            .tensors()
            .into_iter()
            .zip(start.params.tensors());
        pairs
            .flat_map(|(a, s)| a.iter().zip(s).map(|(&a, &s)| a as f64 - s as f64))
            .collect()
    };
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (full, tenth) = (moved(1.0), moved(0.1));
    assert!(norm(&full) > 0.0);
    let ratio = norm(&tenth) / norm(&full);
    assert!(anytime_testkit::close(ratio, 0.1, 0.0, 1e-2), "{ratio}");

    let mut be = new(&start);
    for bad in [0.0f32, -0.1, f32::NAN, f32::INFINITY] {
        match be.step_scaled(&batches[0].batch(), bad) {
            Err(TrainError::LrScale(s)) => assert_eq!(s.to_bits(), bad.to_bits()),
            other => panic!("scale {bad}: {other:?}"),
        }
    }
    assert!(state_bits(&be.state().unwrap()) == state_bits(&start));
}
