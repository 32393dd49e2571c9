//! SPEC §8's masked-token loss `L_r` on the GPU ([`GpuMasked`]) against the CPU's
//! `masked_gradients`: the loss, the twelve block tensors' gradients and those of the mask
//! token, its positional table `pos`, `W_r` and `b_r`, on small dims (batch sizes and
//! positions changing on one plan cache) and a wider shape. Runs on whatever adapter exists
//! (Mesa lavapipe in CI); without one every test logs a skip (`anytime_testkit::skip`) and
//! passes, unless `ANYTIME_EDGE_REQUIRE_GPU` is set (`.ci/run` sets it), which makes a
//! missing adapter a failure.
//!
//! Parity tolerance (f32 on both sides, different summation orders): the loss within
//! `1e-5` relative; per tensor, `max |gpu − cpu| ≤ 1e-5 · max |cpu|`.
#![cfg(feature = "gpu")]

use anytime_linalg::Gemm;
use anytime_runtime::block::{block_tensor_shapes, BlockDims, BlockParams};
use anytime_runtime::train::gpu::GpuMasked;
use anytime_runtime::train::{mask_positions, masked_gradients, MaskedHead, TrainError};
use anytime_testkit::close;

mod dense_common;
use dense_common::*;

/// `L_r` on a new context, or `None` (skip logged; a failure under
/// `ANYTIME_EDGE_REQUIRE_GPU`) when there is no adapter.
fn gpu(test: &str, dims: BlockDims) -> Option<GpuMasked> {
    match GpuMasked::new(dims) {
        Ok(g) => Some(g),
        Err(TrainError::NoAdapter) => {
            anytime_testkit::skip::gpu_absent(test);
            None
        }
        Err(e) => panic!("GPU masked-token loss: {e}"),
    }
}

/// `L_r` and its gradients for `batch` random images on both paths; everything compared.
fn check_parity(g: &mut GpuMasked, dims: &BlockDims, batch: usize, seed: u64) {
    let gemm = Gemm::default();
    let p = BlockParams::random(dims, seed);
    let head = MaskedHead::random(dims, seed + 1);
    let x = random(batch * dims.tokens_len(), 1.5, seed + 2);
    let pos = mask_positions(dims.tokens, batch, seed + 3);
    let cpu = masked_gradients(&gemm, dims, &p, &head, &x, batch, &pos);
    let got = g
        .gradients(&p, &head, &x, batch, &pos)
        .expect("gpu masked-token loss");

    let loss_ok = close(got.loss, cpu.loss, 0.0, RTOL);
    let mut lines = vec![(
        format!("loss: gpu {:e}, cpu {:e}", got.loss, cpu.loss),
        loss_ok,
    )];
    for (i, (name, _)) in block_tensor_shapes(dims).iter().enumerate() {
        lines.push(compare(
            name,
            got.block.tensors()[i],
            cpu.block.tensors()[i],
        ));
    }
    let head_names = ["mask token", "pos", "W_r", "b_r"];
    for (i, name) in head_names.iter().enumerate() {
        lines.push(compare(name, got.head.tensors()[i], cpu.head.tensors()[i]));
    }
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
fn gpu_masked_loss_matches_the_cpu_on_small_dims() {
    let Some(mut g) = gpu("gpu_masked_loss_matches_the_cpu_on_small_dims", SMALL) else {
        return;
    };
    // Two batch sizes and back (the plan rebuilt), then the same size with new parameters,
    // tokens and positions (the plan reused).
    for (batch, seed) in [(3, 1), (2, 11), (3, 21), (3, 41)] {
        check_parity(&mut g, &SMALL, batch, seed);
    }
}

#[test]
fn gpu_masked_loss_matches_the_cpu_on_a_wider_shape() {
    let Some(mut g) = gpu("gpu_masked_loss_matches_the_cpu_on_a_wider_shape", WIDE) else {
        return;
    };
    check_parity(&mut g, &WIDE, 2, 51);
}

#[test]
fn gpu_masked_loss_refuses_bad_positions_and_heads() {
    let Some(mut g) = gpu("gpu_masked_loss_refuses_bad_positions_and_heads", SMALL) else {
        return;
    };
    let p = BlockParams::random(&SMALL, 1);
    let head = MaskedHead::random(&SMALL, 2);
    let x = random(2 * SMALL.tokens_len(), 1.0, 3);
    let mut position = |pos: &[usize]| match g.gradients(&p, &head, &x, 2, pos) {
        Err(TrainError::Shape { found, .. }) => Some(found),
        Err(e) => panic!("{pos:?}: {e}"),
        Ok(_) => None,
    };
    assert_eq!(position(&[0, 2, 1, 3]), Some(0), "CLS masked");
    assert_eq!(position(&[1, 5, 1, 3]), Some(5), "past N");
    assert_eq!(position(&[2, 2, 1, 3]), Some(2), "repeated");
    assert_eq!(position(&[3, 2, 1, 3]), Some(2), "decreasing");
    assert_eq!(position(&[1, 2, 3]), Some(3), "not [B, K]");
    assert_eq!(position(&[]), Some(0), "K = 0");
    assert_eq!(position(&[1, 4, 2, 3]), None);
    let wide_head = MaskedHead::random(&WIDE, 2);
    assert!(matches!(
        g.gradients(&p, &wide_head, &x, 2, &[1, 2, 1, 2]),
        Err(TrainError::StateDims(_))
    ));
}
