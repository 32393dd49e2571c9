//! `bench-train`'s comparison of GEMM libraries on the training step's product shapes:
//! ours ([`Gemm`] with its default kernels), `matrixmultiply` alone (what ours runs on
//! aarch64, through its NEON kernel), and the `gemm` crate (NEON and AVX-512 microkernels),
//! on the same threads and the same operands, in alternating rounds. Each product is
//! checked against ours before it is timed.

use std::time::Instant;

use anyhow::{ensure, Result};
use anytime_linalg::{AlignedVec, Gemm, GemmOptions, MatMut, MatRef};
use serde_json::json;

use super::median;

/// The libraries, in the order of the table's columns.
pub const LIBRARIES: [&str; 3] = ["ours", "matrixmultiply", "gemm crate"];

/// `[m,k]·[k,n]` (`w_t`: the right operand is a row-major `[n,k]` weight read transposed,
/// as the block's `X·Wᵀ` products are) and what it is in the step.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub w_t: bool,
    pub what: &'static str,
}

/// The shapes timed at batch `b` with the block's width `d` and MLP width `h`.
pub fn step_shapes(b: usize, d: usize, h: usize, tokens: usize) -> Vec<Shape> {
    vec![
        Shape {
            m: b,
            k: d,
            n: h,
            w_t: true,
            what: "CLS rows . W_fc^T (MLP up)",
        },
        Shape {
            m: b,
            k: h,
            n: d,
            w_t: true,
            what: "CLS rows . W_proj^T (MLP down)",
        },
        Shape {
            m: b * tokens,
            k: d,
            n: h,
            w_t: false,
            what: "all tokens . B (the roofline's product)",
        },
    ]
}

/// One shape's median GFLOP/s per library over the rounds, and the largest difference
/// from ours, relative to the largest magnitude of ours.
pub struct Timing {
    pub shape: Shape,
    pub gflops: [f64; 3],
    pub max_rel_diff: f64,
}

struct Operands {
    a: AlignedVec,
    w: AlignedVec,
}

impl Operands {
    fn new(s: &Shape) -> Self {
        Operands {
            a: (0..s.m * s.k)
                .map(|i| ((i * 7919) % 13) as f32 * 0.1 - 0.6)
                .collect(),
            w: (0..s.k * s.n)
                .map(|i| ((i * 104_729) % 11) as f32 * 0.1 - 0.5)
                .collect(),
        }
    }

    fn rhs(&self, s: &Shape) -> MatRef<'_> {
        if s.w_t {
            MatRef::new(&self.w, s.n, s.k, s.k).t()
        } else {
            MatRef::new(&self.w, s.k, s.n, s.n)
        }
    }
}

/// Runs library `lib` (an index into [`LIBRARIES`]) once into `c`; returns its seconds.
fn run_once(lib: usize, s: &Shape, ops: &Operands, c: &mut [f32], threads: usize) -> f64 {
    let t = Instant::now();
    let a = MatRef::new(&ops.a, s.m, s.k, s.k);
    match lib {
        0 | 1 => {
            let opts = if lib == 0 {
                GemmOptions::default()
            } else {
                GemmOptions::MATRIXMULTIPLY
            };
            Gemm::new(opts).matmul(a, ops.rhs(s), MatMut::new(c, s.m, s.n, s.n), false);
        }
        _ => {
            // Column and row strides of the right operand as the `gemm` crate takes them.
            let (rhs_cs, rhs_rs) = if s.w_t { (s.k, 1) } else { (1, s.n) };
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: every pointer covers its matrix at the strides given (`a`: m×k
            // row-major; `w`: k·n elements read as k×n at (rhs_rs, rhs_cs); `c`: m×n
            // row-major, not aliased), and `read_dst` is false, so `c` is only written.
            unsafe {
                gemm::gemm(
                    s.m,
                    s.n,
                    s.k,
                    c.as_mut_ptr(),
                    1,
                    s.n as isize,
                    false,
                    ops.a.as_ptr(),
                    1,
                    s.k as isize,
                    ops.w.as_ptr(),
                    rhs_cs as isize,
                    rhs_rs as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    }
    std::hint::black_box(&c);
    t.elapsed().as_secs_f64()
}

/// The largest difference between `c` and `ours`, relative to the largest magnitude of
/// `ours`; infinite when either holds a value that is not finite.
fn rel_diff(c: &[f32], ours: &[f32]) -> f64 {
    if c.len() != ours.len() || c.iter().chain(ours).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = ours.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    c.iter()
        .zip(ours)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0f64, f64::max)
        / scale.max(f64::MIN_POSITIVE)
}

/// Times every library on `shape` in `rounds` alternating rounds (after a checked
/// warm-up of each).
pub fn time_shape(shape: Shape, rounds: usize, threads: usize) -> Result<Timing> {
    let ops = Operands::new(&shape);
    let mut outs: Vec<Vec<f32>> = (0..LIBRARIES.len())
        .map(|_| vec![0.0; shape.m * shape.n])
        .collect();
    for (lib, c) in outs.iter_mut().enumerate() {
        run_once(lib, &shape, &ops, c, threads);
    }
    let mut max_rel_diff = 0.0f64;
    for (lib, c) in outs.iter().enumerate().skip(1) {
        let d = rel_diff(c, &outs[0]);
        ensure!(
            d < 1e-4,
            "{} differs from ours on {}x{}x{} by {d:e} of the largest value",
            LIBRARIES[lib],
            shape.m,
            shape.k,
            shape.n
        );
        max_rel_diff = max_rel_diff.max(d);
    }
    let flop = 2.0 * (shape.m * shape.k * shape.n) as f64;
    let mut secs: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        for (lib, c) in outs.iter_mut().enumerate() {
            secs[lib].push(run_once(lib, &shape, &ops, c, threads));
        }
    }
    let gflops = secs.map(|mut v| flop / median(&mut v) / 1e9);
    Ok(Timing {
        shape,
        gflops,
        max_rel_diff,
    })
}

/// Prints the table of `timings`.
pub fn print(timings: &[Timing], rounds: usize) {
    println!(
        "\nGEMM libraries on the step's shapes (GFLOP/s, medians of {rounds} alternating rounds)"
    );
    println!(
        "{:<44} {:>8} {:>15} {:>11} {:>11}",
        "product", LIBRARIES[0], LIBRARIES[1], LIBRARIES[2], "gemm / ours"
    );
    for t in timings {
        let s = &t.shape;
        println!(
            "{:<44} {:>8.1} {:>15.1} {:>11.1} {:>11.2}",
            format!("{}x{}x{} {}", s.m, s.k, s.n, s.what),
            t.gflops[0],
            t.gflops[1],
            t.gflops[2],
            t.gflops[2] / t.gflops[0]
        );
    }
}

/// The timings as JSON rows.
pub fn json(timings: &[Timing]) -> serde_json::Value {
    timings
        .iter()
        .map(|t| {
            json!({
                "m": t.shape.m, "k": t.shape.k, "n": t.shape.n,
                "w_transposed": t.shape.w_t, "what": t.shape.what,
                "gflops_ours": t.gflops[0],
                "gflops_matrixmultiply": t.gflops[1],
                "gflops_gemm_crate": t.gflops[2],
                "max_rel_diff_from_ours": t.max_rel_diff,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every library gives ours's numbers on a small product of each form (the check
    /// `time_shape` makes before timing), and a wrong stride would fail it.
    #[test]
    fn every_library_computes_the_same_product() {
        for w_t in [false, true] {
            let s = Shape {
                m: 5,
                k: 7,
                n: 9,
                w_t,
                what: "test",
            };
            let t = time_shape(s, 1, 1).unwrap();
            assert!(t.max_rel_diff < 1e-6, "{w_t}: {}", t.max_rel_diff);
            assert!(t.gflops.iter().all(|g| g.is_finite() && *g > 0.0));
        }
    }

    #[test]
    fn a_value_that_is_not_finite_is_an_infinite_difference() {
        assert_eq!(rel_diff(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_diff(&[1.0, 3.0], &[1.0, 2.0]) - 0.5).abs() < 1e-12);
        for bad in [f32::NAN, f32::INFINITY] {
            assert_eq!(rel_diff(&[1.0, bad], &[1.0, 2.0]), f64::INFINITY);
            assert_eq!(rel_diff(&[1.0, 2.0], &[bad, 2.0]), f64::INFINITY);
        }
        assert_eq!(rel_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    #[test]
    fn the_transposed_form_reads_the_weight_as_rows() {
        let s = Shape {
            m: 1,
            k: 2,
            n: 2,
            w_t: true,
            what: "test",
        };
        let ops = Operands {
            a: [1.0, 10.0].into_iter().collect(),
            // rows of W: [1, 2] and [3, 4]; a·Wᵀ = [21, 43]
            w: [1.0, 2.0, 3.0, 4.0].into_iter().collect(),
        };
        for (lib, name) in LIBRARIES.iter().enumerate() {
            let mut c = vec![0.0; 2];
            run_once(lib, &s, &ops, &mut c, 1);
            assert_eq!(c, [21.0, 43.0], "{name}");
        }
    }
}
