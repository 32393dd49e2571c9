//! Without an adapter the wgpu backend reports `NoAdapter`; the default choice trains on the
//! CPU path and says why, and an explicit GPU choice fails instead of falling back. A test
//! binary of its own: it sets a process-wide environment variable (`WGPU_BACKEND`).
#![cfg(feature = "gpu")]

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{
    choose_backend, BackendChoice, BackendReason, Batch, TrainConfig, TrainError, TunedState,
};

const DIMS: BlockDims = BlockDims {
    width: 8,
    heads: 2,
    mlp: 16,
    tokens: 5,
    embed: 4,
};

fn parts() -> (TrainConfig, FrozenHead, TunedState) {
    (
        TrainConfig::default(),
        FrozenHead::random(&DIMS, 2),
        TunedState::fresh(&DIMS, BlockParams::random(&DIMS, 1)),
    )
}

#[test]
fn train_fallback_to_the_cpu_path() {
    // A backend list with no adapter on this platform: wgpu finds nothing.
    let absent = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    std::env::set_var("WGPU_BACKEND", absent);

    let (cfg, head, state) = parts();
    let err = GpuBackend::new(DIMS, cfg.clone(), head.clone(), state.clone())
        .expect_err("no adapter expected with WGPU_BACKEND=metal");
    assert!(matches!(err, TrainError::NoAdapter), "got {err}");

    let (mut be, training) =
        choose_backend(BackendChoice::Auto, DIMS, cfg, head, state).expect("fallback backend");
    assert_eq!(be.name(), "cpu");
    assert_eq!(training.backend, "cpu");
    assert_eq!(training.reason, BackendReason::NoAdapter);
    assert_eq!(training.to_string(), "cpu: no GPU adapter");
    // The fallback trains.
    let tokens = vec![0.5f32; 2 * DIMS.tokens_len()];
    let text = vec![0.5f32; 2 * DIMS.embed];
    let batch = Batch {
        tokens: &tokens,
        labels: &[0, 1],
        text: &text,
        n_labels: 2,
    };
    assert_eq!(be.step(&batch).expect("step").step, 1);

    // The GPU asked for and absent: an error, not a silent CPU run.
    let (cfg, head, state) = parts();
    let err = choose_backend(BackendChoice::Gpu, DIMS, cfg, head, state)
        .err()
        .expect("no adapter: the explicit GPU choice fails");
    assert!(matches!(err, TrainError::NoAdapter), "got {err}");

    // The CPU asked for.
    std::env::remove_var("WGPU_BACKEND");
    let (cfg, head, state) = parts();
    let (be, training) =
        choose_backend(BackendChoice::Cpu, DIMS, cfg, head, state).expect("cpu backend");
    assert_eq!(be.name(), "cpu");
    assert_eq!(training.reason, BackendReason::CpuAsked);
}
