//! Which backend the device binary trains on, and the line that says why: by default wgpu
//! only on a hardware adapter, never on a software one (llvmpipe/lavapipe), which trains
//! hundreds of times slower than the CPU path; `--gpu` (or `ANYTIME_EDGE_TRAIN=gpu`) takes
//! any adapter. With lavapipe alone (CI) the default trains on the CPU and names lavapipe.
//! Commands that do not train never look for an adapter.
#![cfg(all(unix, feature = "gpu"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anytime_runtime::block::{BlockDims, BlockParams, FrozenHead};
use anytime_runtime::train::{
    choose_backend, BackendChoice, BackendReason, TrainConfig, TrainError, TunedState,
};

mod common;
use common::bin;

/// What the shaders crate logs (at debug level) whenever it looks for an adapter.
const PROBE: &str = "looking for a GPU adapter";

fn image(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tiny-clip/images")
        .join(name)
}

/// The binary with none of the settings these tests vary, and the condition under which
/// Mesa's Vulkan device-select layer prints "error: XDG_RUNTIME_DIR is invalid ..." when
/// an adapter is looked for (no XDG_RUNTIME_DIR).
fn edge() -> Command {
    let mut c = bin();
    c.env_remove("ANYTIME_EDGE_TRAIN")
        .env_remove("RUST_LOG")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT");
    c
}

/// `learn` one image into `state`, with `extra` arguments.
fn learn(state: &Path, extra: &[&str]) -> Command {
    let mut c = edge();
    c.args(["learn", "--state"])
        .arg(state)
        .args(extra)
        .args(["--label", "red square"])
        .arg(image("red_square.png"));
    c
}

fn run(mut c: Command) -> (Output, String) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, err)
}

/// The explicit GPU choice in this process: the best adapter of any kind (name, API and
/// type) and whether it is a software one; `None` without an adapter.
fn best_adapter() -> Option<(String, bool)> {
    let dims = BlockDims {
        width: 8,
        heads: 2,
        mlp: 16,
        tokens: 5,
        embed: 4,
    };
    let chosen = choose_backend(
        BackendChoice::Gpu,
        dims,
        TrainConfig::default(),
        FrozenHead::random(&dims, 2),
        TunedState::fresh(&dims, BlockParams::random(&dims, 1)),
    );
    match chosen {
        Ok((_, t)) => match t.reason {
            BackendReason::GpuAsked { adapter, software } => Some((adapter, software)),
            other => panic!("the GPU asked for, chosen for {other}"),
        },
        Err(TrainError::NoAdapter) => {
            assert!(
                std::env::var("ANYTIME_EDGE_REQUIRE_GPU")
                    .map_or(true, |v| v.is_empty() || v == "0"),
                "no GPU adapter, and ANYTIME_EDGE_REQUIRE_GPU is set (CI installs lavapipe)"
            );
            None
        }
        Err(e) => panic!("GPU backend: {e}"),
    }
}

#[test]
fn learn_trains_on_a_software_adapter_only_when_asked() {
    let best = best_adapter();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");

    // The default.
    let (o, err) = run(learn(&state, &[]));
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("error:"),
        "a probe that did not fail the command prints no error line: {err}"
    );
    match &best {
        Some((adapter, true)) => {
            // `adapter` is "NAME (API, Cpu)"; the line names the adapter by its NAME.
            let name = adapter.rsplit_once(" (").map_or(&adapter[..], |(n, _)| n);
            let line = format!(
                "training on cpu: the only GPU adapter is a software one ({name}); \
                 --gpu trains on it"
            );
            assert!(err.contains(&line), "expected `{line}` in: {err}");
        }
        Some((adapter, false)) => {
            let line = format!("training on wgpu: GPU adapter {adapter}");
            assert!(err.contains(&line), "expected `{line}` in: {err}");
        }
        None => assert!(err.contains("training on cpu: no GPU adapter"), "{err}"),
    }

    // Asked for: the GPU, whatever its kind; by the flag or the setting.
    for (extra, env, by) in [
        (&["--gpu"][..], None, "--gpu"),
        (&[][..], Some("gpu"), "ANYTIME_EDGE_TRAIN=gpu"),
    ] {
        let mut c = learn(&state, extra);
        if let Some(v) = env {
            c.env("ANYTIME_EDGE_TRAIN", v);
        }
        let (o, err) = run(c);
        match &best {
            Some((adapter, software)) => {
                assert!(o.status.success(), "{err}");
                assert!(!err.contains("error:"), "{err}");
                let line = format!("training on wgpu: asked for ({by}), on {adapter}");
                assert!(err.contains(&line), "expected `{line}` in: {err}");
                assert_eq!(
                    err.contains("a software adapter slower than the CPU path"),
                    *software,
                    "{err}"
                );
            }
            None => {
                assert!(!o.status.success(), "{err}");
                assert!(err.contains("no GPU adapter available"), "{err}");
            }
        }
    }

    // Asked for: the CPU, without looking for an adapter.
    let mut c = learn(&state, &["--cpu"]);
    c.env("RUST_LOG", "anytime_shaders=debug");
    let (o, err) = run(c);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("training on cpu: asked for (--cpu)"), "{err}");
    assert!(!err.contains(PROBE), "--cpu looked for an adapter: {err}");
    let mut c = learn(&state, &[]);
    c.env("ANYTIME_EDGE_TRAIN", "cpu");
    let (o, err) = run(c);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("training on cpu: asked for (ANYTIME_EDGE_TRAIN=cpu)"),
        "{err}"
    );

    // Refused: both flags, or a setting the binary does not know.
    let (o, err) = run(learn(&state, &["--cpu", "--gpu"]));
    assert!(!o.status.success());
    assert!(err.contains("cannot be used with"), "{err}");
    let mut c = learn(&state, &[]);
    c.env("ANYTIME_EDGE_TRAIN", "fast");
    let (o, err) = run(c);
    assert!(!o.status.success());
    assert!(
        err.contains("ANYTIME_EDGE_TRAIN=fast: expected cpu, gpu or auto"),
        "{err}"
    );
}

#[test]
fn predict_never_looks_for_an_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("learner");
    let labels = "red square,green circle,blue triangle";

    // The log line is there when an adapter is looked for: `learn` by default.
    let mut c = learn(&state, &[]);
    c.env("RUST_LOG", "anytime_shaders=debug");
    let (o, err) = run(c);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(PROBE), "no `{PROBE}` in: {err}");

    // Zero-shot, and with the learner (also with the old `--cpu`).
    for extra in [&[][..], &["--state"][..], &["--cpu", "--state"][..]] {
        let mut c = edge();
        c.env("RUST_LOG", "anytime_shaders=debug")
            .args(["predict", "--labels", labels])
            .args(extra);
        if !extra.is_empty() {
            c.arg(&state);
        }
        c.arg(image("green_circle.png"));
        let (o, err) = run(c);
        assert!(o.status.success(), "{extra:?}: {err}");
        assert!(!err.contains(PROBE), "predict {extra:?} looked: {err}");
        assert!(!err.contains("error"), "predict {extra:?}: {err}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("green circle"));
    }
}
