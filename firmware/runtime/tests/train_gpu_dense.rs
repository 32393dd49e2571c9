//! The dense block on the GPU ([`GpuDense`]) against the CPU's `dense_forward` and
//! `dense_backward`: the output tokens, the twelve block tensors' gradients and the input
//! tokens' gradient, on small dims (two batch sizes on one plan cache) and a wider shape.
//! Runs on whatever adapter exists (Mesa lavapipe in CI); without one every test logs a
//! skip (`anytime_testkit::skip`) and passes, unless `ANYTIME_EDGE_REQUIRE_GPU` is set
//! (`.ci/run` sets it), which makes a missing adapter a failure.
//!
//! Parity tolerance (f32 on both sides, different summation orders, LayerNorm statistics in
//! f64 on the CPU and f32 on the GPU): per tensor, `max |gpu − cpu| ≤ 1e-5 · max |cpu|`.
#![cfg(feature = "gpu")]

use anytime_linalg::Gemm;
use anytime_runtime::block::{
    block_tensor_shapes, dense_backward, dense_forward, BlockDims, BlockParams,
};
use anytime_runtime::train::gpu::GpuDense;
use anytime_runtime::train::TrainError;

mod dense_common;
use dense_common::*;

/// A dense block on a new context, or `None` (skip logged; a failure under
/// `ANYTIME_EDGE_REQUIRE_GPU`) when there is no adapter.
fn gpu(test: &str, dims: BlockDims) -> Option<GpuDense> {
    match GpuDense::new(dims) {
        Ok(g) => Some(g),
        Err(TrainError::NoAdapter) => {
            anytime_testkit::skip::gpu_absent(test);
            None
        }
        Err(e) => panic!("GPU dense block: {e}"),
    }
}

/// Forward and backward of `batch` random images on both paths; every tensor compared.
fn check_parity(g: &mut GpuDense, dims: &BlockDims, batch: usize, seed: u64) {
    let gemm = Gemm::default();
    let p = BlockParams::random(dims, seed);
    let x = random(batch * dims.tokens_len(), 2.0, seed + 1);
    let d_out = random(x.len(), 1.0, seed + 2);
    let saved = dense_forward(&gemm, dims, &p, &x, batch);
    let mut grads = BlockParams::zeros(dims);
    let mut d_tokens = vec![f32::NAN; x.len()];
    dense_backward(
        &gemm,
        dims,
        &p,
        &saved,
        &d_out,
        &mut grads,
        Some(&mut d_tokens),
    );

    let out = g.forward(&p, &x, batch).expect("gpu forward");
    let (g_grads, g_tokens) = g.backward(&p, &x, batch, &d_out).expect("gpu backward");
    let mut lines = vec![compare("out", &out, &saved.out)];
    for (i, (name, _)) in block_tensor_shapes(dims).iter().enumerate() {
        lines.push(compare(name, g_grads.tensors()[i], grads.tensors()[i]));
    }
    lines.push(compare("tokens", &g_tokens, &d_tokens));
    // The key bias cancels in every query's softmax: both paths write its gradient as
    // exact zeros (round-off there would be blown up by AdamW).
    let key_bias = |g: &BlockParams| g.in_proj_b[dims.width..2 * dims.width].to_vec();
    let zeros = vec![0.0f32; dims.width];
    assert_eq!(key_bias(&grads), zeros, "CPU key-bias gradient");
    assert_eq!(key_bias(&g_grads), zeros, "GPU key-bias gradient");
    let report: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    let report = format!(
        "{dims:?}, B = {batch} on {}, tolerance {RTOL:e}:\n{}",
        g.adapter(),
        report.join("\n")
    );
    assert!(lines.iter().all(|(_, ok)| *ok), "{report}");
    eprintln!("{report}");
}

#[test]
fn gpu_dense_block_matches_the_cpu_on_small_dims() {
    let Some(mut g) = gpu("gpu_dense_block_matches_the_cpu_on_small_dims", SMALL) else {
        return;
    };
    // Two batch sizes and back (the plan rebuilt), then the same size with new parameters
    // and tokens (the plan reused).
    for (batch, seed) in [(3, 1), (2, 11), (3, 21), (3, 41)] {
        check_parity(&mut g, &SMALL, batch, seed);
    }
}

#[test]
fn gpu_dense_block_matches_the_cpu_on_a_wider_shape() {
    let Some(mut g) = gpu("gpu_dense_block_matches_the_cpu_on_a_wider_shape", WIDE) else {
        return;
    };
    check_parity(&mut g, &WIDE, 2, 31);
}

#[test]
fn gpu_dense_block_refuses_inputs_of_other_shapes() {
    let Some(mut g) = gpu("gpu_dense_block_refuses_inputs_of_other_shapes", SMALL) else {
        return;
    };
    let p = BlockParams::random(&SMALL, 1);
    let x = random(2 * SMALL.tokens_len(), 1.0, 2);
    assert!(matches!(
        g.forward(&p, &x[1..], 2),
        Err(TrainError::Shape {
            what: "tokens (B·N·D)",
            ..
        })
    ));
    assert!(matches!(
        g.forward(&p, &[], 0),
        Err(TrainError::Shape {
            what: "batch size",
            ..
        })
    ));
    assert!(matches!(
        g.backward(&p, &x, 2, &x[1..]),
        Err(TrainError::Shape {
            what: "d_out (B·N·D)",
            ..
        })
    ));
    let other = BlockParams::random(&WIDE, 1);
    assert!(matches!(
        g.forward(&other, &x, 2),
        Err(TrainError::StateDims(_))
    ));
    assert_eq!(g.forward(&p, &x, 2).expect("forward").len(), x.len());
}
