//! Without an adapter the wgpu backend reports `NoAdapter` and `best_backend` trains on the
//! CPU path. A test binary of its own: it sets process-wide environment variables
//! (`WGPU_BACKEND`, `ANYTIME_EDGE_TRAIN`), so its checks run in one test, in order.
#![cfg(feature = "gpu")]

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::gpu::{best_backend, GpuBackend};
use anytime_runtime::train::{Batch, TrainConfig, TrainError, TunedState};

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
    std::env::remove_var("ANYTIME_EDGE_TRAIN");

    let (cfg, head, state) = parts();
    let err = GpuBackend::new(DIMS, cfg.clone(), head.clone(), state.clone())
        .expect_err("no adapter expected with WGPU_BACKEND=metal");
    assert!(matches!(err, TrainError::NoAdapter), "got {err}");

    let mut be = best_backend(DIMS, cfg, head, state).expect("fallback backend");
    assert_eq!(be.name(), "cpu");
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

    // Forcing the CPU path works whatever adapters exist.
    std::env::remove_var("WGPU_BACKEND");
    std::env::set_var("ANYTIME_EDGE_TRAIN", "cpu");
    let (cfg, head, state) = parts();
    let be = best_backend(DIMS, cfg, head, state).expect("cpu backend");
    assert_eq!(be.name(), "cpu");
}
