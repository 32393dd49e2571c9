//! Shared by the dense-block and masked-loss tests (CPU and wgpu): their shapes, inputs,
//! f64 references and comparisons. Each test binary uses a part of it.
#![allow(dead_code)]

use anytime_runtime::block::BlockDims;
use anytime_testkit::{close, max_abs, max_abs_diff};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[cfg(feature = "gpu")]
pub mod gpu;

/// A small block: every coordinate can be checked by finite differences.
pub const SMALL: BlockDims = BlockDims {
    width: 8,
    heads: 2,
    mlp: 32,
    tokens: 5,
    embed: 4,
};

/// A wider block, large enough for the GEMMs to split across threads.
pub const WIDE: BlockDims = BlockDims {
    width: 64,
    heads: 4,
    mlp: 256,
    tokens: 17,
    embed: 16,
};

/// `len` values uniform in `[−scale, scale)`, seeded.
pub fn random(len: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| scale * rng.gen_range(-1.0f32..1.0))
        .collect()
}

/// LayerNorm of one row in f64 (eps 1e-5, as CLIP).
pub fn layernorm(x: &[f64], w: &[f32], b: &[f32]) -> Vec<f64> {
    let d = x.len() as f64;
    let mean = x.iter().sum::<f64>() / d;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64)
        .collect()
}

/// `x Wᵀ + b` for one row in f64, `W` `[out, in]`.
pub fn linear(x: &[f64], w: &[f32], b: &[f32]) -> Vec<f64> {
    let inp = x.len();
    (0..b.len())
        .map(|o| b[o] as f64 + (0..inp).map(|i| w[o * inp + i] as f64 * x[i]).sum::<f64>())
        .collect()
}

/// Relative step of [`central`].
const H: f32 = 1e-2;

/// Central difference of `f` at `x` by the rounded step actually taken.
pub fn central(x: f32, mut f: impl FnMut(f32) -> f64) -> f64 {
    let h = H * x.abs().max(1.0);
    let (xp, xm) = (x + h, x - h);
    (f(xp) - f(xm)) / (xp as f64 - xm as f64)
}

/// Whether the gradient `g` is within the finite-difference tolerance of `fd` (`scale`:
/// the group's largest gradient); false when anything is not finite.
pub fn agrees(fd: f64, g: f32, scale: f64) -> bool {
    let tol = 1e-3 * fd.abs().max(g.abs() as f64) + 1e-3 * scale;
    close(g, fd, tol, 0.0)
}

/// GPU/CPU parity bound, relative to the tensor's largest CPU value.
pub const RTOL: f64 = 1e-5;

/// A report line for `what`: its largest error relative to the tensor's largest CPU
/// value, and whether that is within [`RTOL`] (NaN or ±inf on either side panics).
#[track_caller]
pub fn compare(what: &str, gpu: &[f32], cpu: &[f32]) -> (String, bool) {
    compare_rel(what, gpu, cpu, RTOL)
}

/// [`compare`] against `rtol` instead of [`RTOL`].
#[track_caller]
pub fn compare_rel(what: &str, gpu: &[f32], cpu: &[f32], rtol: f64) -> (String, bool) {
    let (diff, scale) = (max_abs_diff(gpu, cpu), max_abs(cpu));
    assert!(scale > 0.0, "{what}: the CPU values are all zero");
    let ok = diff <= rtol * scale;
    let mark = if ok { "" } else { "  <- over the tolerance" };
    let ratio = diff / scale;
    (
        format!("{what}: max diff {diff:e}, scale {scale:e}, ratio {ratio:e}{mark}"),
        ok,
    )
}

/// A report line for `what`: its largest error, and whether that is within the absolute
/// `bound` (NaN or ±inf on either side panics).
#[track_caller]
pub fn compare_abs(what: &str, gpu: &[f32], cpu: &[f32], bound: f64) -> (String, bool) {
    let diff = max_abs_diff(gpu, cpu);
    let ok = diff <= bound;
    let mark = if ok { "" } else { "  <- over the tolerance" };
    (
        format!("{what}: max diff {diff:e}, bound {bound:e}{mark}"),
        ok,
    )
}
