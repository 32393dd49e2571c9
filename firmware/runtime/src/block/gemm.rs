//! The one safe wrapper over the GEMMs: `matrixmultiply::sgemm`, and on x86-64 with AVX2
//! and FMA our thin kernel ([`super::thin`]) for `A·Wᵀ` with few rows, and for `A·B`
//! with few rows and a short reduction.
//!
//! Matrices are row-major with an explicit row stride (`ld*`, in elements), so a block of
//! rows or columns inside a larger buffer (the CLS rows of a batch, the k/v columns of a
//! fused projection) is used in place; transposed operands are expressed as swapped
//! strides, never copied. `acc = false` overwrites `C`, `acc = true` adds to it.
//! Large products run on the rayon pool (see [`gemm`]).

/// Elements a strided `rows × cols` matrix spans (0 when empty).
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// GEMMs smaller than this (FLOPs, 2 per multiply-add) run on the calling thread: below
/// it, handing work to another thread costs more than it saves.
const PAR_MIN_FLOP: usize = 1 << 22;

/// Columns or rows of `C` per parallel part are a multiple of this (the kernels' tile).
const PAR_ALIGN: usize = 16;

/// `C`'s base pointer, shared by the parts of one split GEMM, each writing its own
/// disjoint block of rows or columns.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: only used inside `split_gemm`, where every part writes a disjoint block of C.
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

impl SharedC {
    /// The pointer (a method, so that closures capture the whole `SharedC`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `[start, end)` of part `i` of `len` split into `parts` aligned pieces.
fn part(len: usize, parts: usize, i: usize) -> (usize, usize) {
    let per = len.div_ceil(parts).div_ceil(PAR_ALIGN) * PAR_ALIGN;
    ((i * per).min(len), ((i + 1) * per).min(len))
}

/// `C[m×n] (+)= op(A)[m×k] · op(B)[k×n]` with general strides `(row, col)` per operand.
///
/// Large products are split across the rayon pool along the longer side of `C` (the
/// output columns of a batch × weight product, the rows of a weight gradient), each part
/// one `sgemm` call over its own block of `C`. A product with few rows (the batch's CLS
/// rows times a weight) is computed as `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so that the library packs
/// the weight in row panels and the few rows once. Every element of `C` is the same sum
/// of the same products however the work is split or transposed, so results do not
/// depend on the number of threads. With `par` false, everything runs on the calling
/// thread (a product inside a task that is itself one of many parallel ones).
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    par: bool,
) {
    assert!(
        span(m, k, a_strides.0, a_strides.1) <= a.len(),
        "gemm: A too short"
    );
    assert!(
        span(k, n, b_strides.0, b_strides.1) <= b.len(),
        "gemm: B too short"
    );
    assert!(span(m, n, ldc, 1) <= c.len(), "gemm: C too short");
    assert!(n <= ldc || m <= 1, "gemm: C rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    let a = Operand {
        ptr: a.as_ptr() as usize,
        strides: a_strides,
    };
    let b = Operand {
        ptr: b.as_ptr() as usize,
        strides: b_strides,
    };
    let c = SharedC(c.as_mut_ptr());
    // SAFETY (both calls): the asserts above bound every element read in A and B and
    // written in C by the slices' lengths; C's rows do not overlap (n <= ldc); C comes
    // from a unique borrow, so it aliases neither A nor B.
    #[cfg(target_arch = "x86_64")]
    if unsafe { thin_gemm(m, k, n, a, b, c, ldc, acc, par) } {
        return;
    }
    let beta = if acc { 1.0 } else { 0.0 };
    unsafe {
        if m < SWAP_BELOW && n >= 4 * m {
            let t = |o: Operand| Operand {
                ptr: o.ptr,
                strides: (o.strides.1, o.strides.0),
            };
            split_gemm(n, k, m, t(b), t(a), c, (1, ldc), beta, par);
        } else {
            split_gemm(m, k, n, a, b, c, (ldc, 1), beta, par);
        }
    }
}

/// Products `A·Wᵀ` with at most this many rows use the thin kernel where the CPU has it.
#[cfg(target_arch = "x86_64")]
const THIN_MAX: usize = 64;

/// Products `A·B` (B row-major) with at most [`THIN_MAX`] rows and at most this long a
/// reduction use the thin kernel's broadcast form (per image `P·X̂` over 50 tokens, per
/// head `q_h·W_k,h` and `d_o,h·W_v,h` over 64 rows); a longer one only on its AVX-512
/// build, which takes B in chunks of rows (see `block/thin.rs`): the AVX2 build lost to
/// matrixmultiply there.
#[cfg(target_arch = "x86_64")]
const THIN_NN_MAX_K: usize = 64;

/// Runs `C (+)= A·B` on the thin kernel ([`super::thin`]) when the CPU has it and the
/// product has few rows and is either `A·Wᵀ` (A and W both contiguous along `k`) or
/// `A·B` with B row-major and a short reduction (the broadcast form; with AVX-512 also
/// for a transposed A); returns whether it did.
///
/// # Safety
/// As for [`split_gemm`], with `C` row-major (row stride `ldc`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn thin_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: Operand,
    b: Operand,
    c: SharedC,
    ldc: usize,
    acc: bool,
    par: bool,
) -> bool {
    use super::thin::{self, Mat, Mat2};
    if !thin::available() {
        return false;
    }
    let reduction_ok = k <= THIN_NN_MAX_K || thin::avx512_active();
    let short_nn = b.strides.1 == 1 && reduction_ok && m <= THIN_MAX;
    if short_nn && (a.strides.1 == 1 || thin::avx512_active()) {
        // A·B with B row-major and a short reduction: the broadcast form (on AVX-512 also
        // for a transposed A, the backward of a per-image or per-head product).
        let a = Mat2 {
            ptr: a.ptr as *const f32,
            rs: a.strides.0,
            cs: a.strides.1,
        };
        let b = Mat {
            ptr: b.ptr as *const f32,
            ld: b.strides.0,
        };
        // SAFETY: the caller's guarantees; a transposed A only where the CPU has
        // AVX-512F (checked just above); the parts write disjoint column blocks of C.
        for_parts(n, par_flops(par, m, k, n), |cols| unsafe {
            thin::nn(m, k, a, b, c.ptr(), ldc, acc, cols)
        });
        return true;
    }
    if m > THIN_MAX || a.strides.1 != 1 || b.strides.0 != 1 {
        return false;
    }
    // W = Bᵀ is [n, k] row-major.
    let a = Mat {
        ptr: a.ptr as *const f32,
        ld: a.strides.0,
    };
    let w = Mat {
        ptr: b.ptr as *const f32,
        ld: b.strides.1,
    };
    // SAFETY: the caller's guarantees; the parts write disjoint column blocks of C.
    for_parts(n, par_flops(par, m, k, n), |cols| unsafe {
        thin::nt(m, k, a, w, c.ptr(), ldc, acc, cols)
    });
    true
}

/// The FLOPs by which [`for_parts`] splits a product: none (one part, on this thread)
/// unless `par`.
fn par_flops(par: bool, m: usize, k: usize, n: usize) -> usize {
    if par {
        2 * m * k * n
    } else {
        0
    }
}

/// Runs `run(lo, hi)` over `0..len` split into aligned parts, one per rayon thread when
/// the product has at least [`PAR_MIN_FLOP`] FLOPs (else in one part, on this thread).
fn for_parts(len: usize, flops: usize, run: impl Fn((usize, usize)) + Sync) {
    let parts = if flops >= PAR_MIN_FLOP {
        rayon::current_num_threads().min(len / PAR_ALIGN).max(1)
    } else {
        1
    };
    if parts == 1 {
        return run((0, len));
    }
    let run = &run;
    rayon::scope(|s| {
        for i in 1..parts {
            s.spawn(move |_| run(part(len, parts, i)));
        }
        run(part(len, parts, 0));
    });
}

/// A read-only operand: its address (as an integer, to cross threads) and strides.
#[derive(Clone, Copy)]
struct Operand {
    ptr: usize,
    strides: (usize, usize),
}

/// Products with fewer rows than this (and at least four times as many columns) are
/// computed transposed.
const SWAP_BELOW: usize = 64;

/// `C (+)= A·B` split along C's longer side into one `sgemm` call per part.
///
/// # Safety
/// `a`, `b` must be valid for reads and `c` for writes of every element the strides
/// address for these sizes; `c`'s elements are distinct and alias neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn split_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: Operand,
    b: Operand,
    c: SharedC,
    c_strides: (usize, usize),
    beta: f32,
    par: bool,
) {
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let is = |x: usize| x as isize;
    for_parts(long, par_flops(par, m, k, n), |(lo, hi)| {
        if lo == hi {
            return;
        }
        // Rows [lo, hi) of A and C, or columns [lo, hi) of B and C.
        let (rows, cols, a_off, b_off, c_off) = if by_rows {
            (hi - lo, n, lo * a.strides.0, 0, lo * c_strides.0)
        } else {
            (m, hi - lo, 0, lo * b.strides.1, lo * c_strides.1)
        };
        // SAFETY: a part only narrows the caller's ranges, and the parts write disjoint
        // row or column blocks of C.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                1.0,
                (a.ptr as *const f32).add(a_off),
                is(a.strides.0),
                is(a.strides.1),
                (b.ptr as *const f32).add(b_off),
                is(b.strides.0),
                is(b.strides.1),
                beta,
                c.ptr().add(c_off),
                is(c_strides.0),
                is(c_strides.1),
            );
        }
    });
}

/// `C (+)= A · B`: `A` is `[m, k]` (row stride `lda`), `B` is `[k, n]` (row stride `ldb`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nn(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (lda, 1), b, (ldb, 1), c, ldc, acc, true);
}

/// `C (+)= A · Bᵀ`: `A` is `[m, k]`, `B` is stored `[n, k]` (a PyTorch `Linear` weight).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (lda, 1), b, (1, ldb), c, ldc, acc, true);
}

/// `C (+)= Aᵀ · B`: `A` is stored `[k, m]`, `B` is `[k, n]` (weight gradients `dYᵀ·X`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_tn(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, (1, lda), b, (ldb, 1), c, ldc, acc, true);
}

/// `C (+)= op(A)·op(B)` with general `(row, col)` strides per operand, on the calling
/// thread only (a product inside one of many parallel tasks): `(lda, 1)` is a row-major
/// A, `(1, lda)` a transposed one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_here(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    gemm(m, k, n, a, a_strides, b, b_strides, c, ldc, acc, false);
}

/// Turns the thin-GEMM kernel (`block/thin.rs`, x86-64 with AVX2 and FMA) on or off for
/// the whole process (on by default), so that a benchmark can compare them with
/// `matrixmultiply` in one run. No effect where it does not exist.
pub fn set_thin_kernels(on: bool) {
    #[cfg(target_arch = "x86_64")]
    super::thin::set_enabled(on);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = on;
}

/// Turns the thin kernel's AVX-512 builds on or off for the whole process (on by
/// default; the AVX2 builds run instead), for same-run comparisons. No effect where the
/// CPU lacks AVX-512F.
pub fn set_thin_avx512(on: bool) {
    #[cfg(target_arch = "x86_64")]
    super::thin::set_avx512(on);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = on;
}

/// Whether the thin kernel's AVX-512 build is in use (the kernel in use, AVX-512 on, and
/// the CPU has AVX-512F).
pub fn thin_avx512_active() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::thin::available() && super::thin::avx512_active();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the thin-GEMM kernel is in use (on, and the CPU has AVX2 and FMA).
pub fn thin_kernels_active() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::thin::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Public entry for benchmarks: `C = A · B`, all contiguous row-major, split across the
/// rayon pool as the training step's GEMMs are.
pub fn sgemm_nn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    matmul_nn(m, k, n, a, k, b, n, c, n, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thin kernel's AVX2 and AVX-512 builds exist on x86-64 only (`block/thin.rs`
    /// tests them there); elsewhere the log says they never run.
    #[cfg(not(target_arch = "x86_64"))]
    #[test]
    fn thin_kernel_builds_are_named_where_they_do_not_exist() {
        anytime_testkit::skip::not_here(
            "thin_kernel_builds_are_named_where_they_do_not_exist",
            "thin GEMM AVX2+FMA and AVX-512 builds: x86-64 only (matrixmultiply runs here)",
        );
    }

    fn naive(
        m: usize,
        k: usize,
        n: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) * b(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn block_gemm_variants_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.23).cos()).collect();
        let at: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.19).sin()).collect();
        let mut c = vec![1.0; m * n];
        matmul_nn(m, k, n, &a, k, &b, n, &mut c, n, false);
        let want = naive(m, k, n, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        anytime_testkit::assert_close("nn", &c, &want, 1e-5, 0.0);
        matmul_nt(m, k, n, &a, k, &bt, k, &mut c, n, false);
        let want = naive(m, k, n, |i, p| a[i * k + p], |p, j| bt[j * k + p]);
        anytime_testkit::assert_close("nt", &c, &want, 1e-5, 0.0);
        let mut c2 = c.clone();
        matmul_tn(m, k, n, &at, m, &b, n, &mut c2, n, true);
        let want2 = naive(m, k, n, |i, p| at[p * m + i], |p, j| b[p * n + j]);
        let added: Vec<f32> = c2.iter().zip(&c).map(|(x, c)| x - c).collect();
        anytime_testkit::assert_close("tn", &added, &want2, 1e-5, 0.0);
    }

    /// The split and transposed paths (sizes above the parallel threshold, strided and
    /// accumulating operands) against a plain loop, and bit-identical on 1 and 3 threads.
    #[test]
    fn block_gemm_split_and_transposed_paths_match_naive_on_any_thread_count() {
        let cases = [
            (20, 300, 700),
            (300, 40, 400),
            (700, 32, 300),
            (64, 128, 512),
        ];
        for (m, k, n) in cases {
            assert!(2 * m * k * n >= PAR_MIN_FLOP);
            let lda = k + 3;
            let a: Vec<f32> = (0..m * lda).map(|i| (i as f32 * 0.37).sin()).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.05).sin()).collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut c = c0.clone();
                pool.install(|| matmul_nt(m, k, n, &a, lda, &bt, k, &mut c, n, true));
                c
            };
            let (one, three) = (run(1), run(3));
            assert_eq!(
                one, three,
                "thread count changed the result for {m}x{k}x{n}"
            );
            let want = naive(m, k, n, |i, p| a[i * lda + p], |p, j| bt[j * k + p]);
            for ((x, w), c) in three.iter().zip(&want).zip(&c0) {
                assert!(anytime_testkit::close(x - c, *w, 1e-3, 1e-3), "{m}x{k}x{n}");
            }
        }
    }

    /// `len` test values `sin(i·f)`.
    fn sines(len: usize, f: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * f).sin()).collect()
    }

    /// Runs `product(c, acc)` on a copy of `c0` (`[m, ldc]`) in pools of 1 and 3 threads,
    /// for `acc` false and true: both results bit-identical, and `c0` (when `acc`) plus
    /// `want` (`[m, n]`) within f32 rounding.
    fn check_threads_and_naive(
        (m, k, n): (usize, usize, usize),
        ldc: usize,
        want: &[f32],
        product: impl Fn(&mut [f32], bool) + Sync,
    ) {
        let c0 = sines(m * ldc, 0.05);
        for acc in [false, true] {
            let run = |threads: usize| {
                let mut c = c0.clone();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| product(&mut c, acc));
                c
            };
            let (one, three) = (run(1), run(3));
            assert_eq!(one, three, "{m}x{k}x{n}: thread count changed the result");
            for i in 0..m {
                for j in 0..n {
                    let base = if acc { c0[i * ldc + j] } else { 0.0 };
                    let (got, w) = (one[i * ldc + j] - base, want[i * n + j]);
                    assert!(
                        anytime_testkit::close(got, w, 1e-4, 1e-4),
                        "{m}x{k}x{n} acc={acc}"
                    );
                }
            }
        }
    }

    /// The thin kernel's broadcast shape `A·B` (B row-major) with few rows and a short
    /// reduction (matrixmultiply where the CPU lacks it), with row and column tails,
    /// strided and accumulating operands, small and split across threads.
    #[test]
    fn block_gemm_thin_broadcast_shape_matches_naive_on_any_thread_count() {
        for (m, k, n) in [
            (12, 50, 768),
            (13, 64, 50),
            (7, 3, 33),
            (64, 64, 519),
            (1, 1, 7),
            (9, 200, 70),
            (32, 65, 129),
        ] {
            let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
            let (a, b) = (sines(m * lda, 0.37), sines(k * ldb, 0.11)); // B [k, n]
            let want = naive(m, k, n, |i, p| a[i * lda + p], |p, j| b[p * ldb + j]);
            check_threads_and_naive((m, k, n), ldc, &want, |c, acc| {
                matmul_nn(m, k, n, &a, lda, &b, ldb, c, ldc, acc)
            });
        }
    }

    /// The thin kernel's shape `A·Wᵀ` with few rows (matrixmultiply where the CPU lacks
    /// it), with row, column and reduction tails, strided and accumulating operands,
    /// small and split across threads: against a plain loop, and bit-identical on 1 and
    /// 3 threads.
    #[test]
    fn block_gemm_thin_shape_matches_naive_on_any_thread_count() {
        if !thin_kernels_active() {
            println!("thin kernel not in use on this CPU: testing the fallback");
        }
        for (m, k, n) in [
            (13, 77, 50),
            (4, 9, 31),
            (30, 301, 500),
            (64, 300, 519),
            (1, 5, 7),
        ] {
            let (lda, ldw, ldc) = (k + 2, k + 1, n + 1);
            let (a, w) = (sines(m * lda, 0.37), sines(n * ldw, 0.11)); // W [n, k]
            let want = naive(m, k, n, |i, p| a[i * lda + p], |p, j| w[j * ldw + p]);
            check_threads_and_naive((m, k, n), ldc, &want, |c, acc| {
                matmul_nt(m, k, n, &a, lda, &w, ldw, c, ldc, acc)
            });
        }
    }
}
