//! Which backend `choose_backend` picks on the adapters of this machine: by default wgpu
//! only on a hardware adapter, never on a software one (llvmpipe/lavapipe, SwiftShader,
//! WARP), which trains hundreds of times slower than the CPU path; the explicit GPU choice
//! takes any adapter. With lavapipe alone (CI) the default is the CPU path, naming lavapipe.
//! Without an adapter the test checks the fallback and passes, unless
//! `ANYTIME_EDGE_REQUIRE_GPU` is set (`.ci/run` sets it), which makes that a failure.
#![cfg(feature = "gpu")]

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::gpu::GpuBackend;
use anytime_runtime::train::{
    choose_backend, BackendChoice, BackendReason, TrainConfig, TrainError, TunedState,
};

const DIMS: BlockDims = BlockDims {
    width: 8,
    heads: 2,
    mlp: 16,
    tokens: 5,
    embed: 4,
};

fn choose(choice: BackendChoice) -> Result<(&'static str, BackendReason), TrainError> {
    let (be, training) = choose_backend(
        choice,
        DIMS,
        TrainConfig::default(),
        FrozenHead::random(&DIMS, 2),
        TunedState::fresh(&DIMS, BlockParams::random(&DIMS, 1)),
    )?;
    assert_eq!(be.name(), training.backend);
    Ok((training.backend, training.reason))
}

fn require_gpu() -> bool {
    std::env::var("ANYTIME_EDGE_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn train_choice_keeps_off_software_adapters_unless_asked() {
    // The best adapter of any kind, as the GPU tests open it.
    let best = GpuBackend::new(
        DIMS,
        TrainConfig::default(),
        FrozenHead::random(&DIMS, 2),
        TunedState::fresh(&DIMS, BlockParams::random(&DIMS, 1)),
    );
    let (described, name, software) = match best {
        Ok(gpu) => (
            gpu.adapter(),
            gpu.context().info.name.clone(),
            gpu.context().is_software(),
        ),
        Err(TrainError::NoAdapter) => {
            assert!(
                !require_gpu(),
                "no GPU adapter, and ANYTIME_EDGE_REQUIRE_GPU is set (CI installs lavapipe)"
            );
            assert_eq!(
                choose(BackendChoice::Auto).unwrap(),
                ("cpu", BackendReason::NoAdapter)
            );
            assert!(matches!(
                choose(BackendChoice::Gpu),
                Err(TrainError::NoAdapter)
            ));
            eprintln!("no GPU adapter: only the fallback was checked");
            return;
        }
        Err(e) => panic!("GPU backend: {e}"),
    };
    eprintln!("best adapter: {described}");

    let auto = choose(BackendChoice::Auto).expect("default choice");
    if software {
        assert_eq!(
            auto,
            ("cpu", BackendReason::SoftwareOnly { adapter: name }),
            "the default must not train on a software adapter"
        );
    } else {
        assert_eq!(
            auto,
            (
                "wgpu",
                BackendReason::Hardware {
                    adapter: described.clone()
                }
            )
        );
    }
    assert_eq!(
        choose(BackendChoice::Gpu).expect("explicit GPU choice"),
        (
            "wgpu",
            BackendReason::GpuAsked {
                adapter: described,
                software
            }
        ),
        "asked for, the GPU is used whatever its kind"
    );
    assert_eq!(
        choose(BackendChoice::Cpu).unwrap(),
        ("cpu", BackendReason::CpuAsked)
    );
}
