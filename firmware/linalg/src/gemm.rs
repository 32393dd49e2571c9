//! `C (+)= A·B` over borrowed views: `matrixmultiply::sgemm`, and on x86-64 with AVX2
//! and FMA the thin kernels (`thin/`) for `A·Wᵀ` with few rows, and for `A·B` with few
//! rows and a short reduction.
//!
//! A block of rows or columns inside a larger buffer (the CLS rows of a batch, the k/v
//! columns of a fused projection) is a view with the buffer's strides, used in place;
//! a transposed operand is a view with swapped strides ([`MatRef::t`]), never a copy.
//! Large products run on the rayon pool (see [`Gemm::matmul`]).

use std::marker::PhantomData;
use std::sync::Mutex;

use crate::aligned::{AlignedVec, Placement};
use crate::view::{MatMut, MatRef};

/// Which kernels a [`Gemm`] may use; a kernel the CPU lacks is never used, whatever the
/// options say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmOptions {
    /// The thin kernels (x86-64 with AVX2 and FMA) for the shapes they serve.
    pub thin: bool,
    /// The thin kernels' AVX-512 builds where the CPU has AVX-512F (else their AVX2 ones).
    pub thin_avx512: bool,
    /// Where the buffers of [`Gemm::zeros`] and [`Gemm::scratch`] start (and a CPU
    /// backend's weights, moments and activations).
    pub placement: Placement,
}

impl Default for GemmOptions {
    /// The fastest kernels the CPU has.
    fn default() -> Self {
        GemmOptions {
            thin: true,
            thin_avx512: true,
            placement: Placement::Line,
        }
    }
}

impl GemmOptions {
    /// `matrixmultiply` only.
    pub const MATRIXMULTIPLY: GemmOptions = GemmOptions {
        thin: false,
        thin_avx512: false,
        placement: Placement::Line,
    };

    /// Whether the thin kernels run (asked for, and the CPU has AVX2 and FMA).
    pub fn thin_active(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.thin && crate::thin::available();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Whether the thin kernels' AVX-512 builds run (the thin kernels run, AVX-512 is
    /// asked for, and the CPU has AVX-512F).
    pub fn thin_avx512_active(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.thin_active() && self.thin_avx512 && is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// The GEMMs of one user (a training backend, a block): its [`GemmOptions`], and the
/// scratch its kernels reuse from call to call (taken by one part of a product at a
/// time, so calls from several threads never share one).
#[derive(Debug, Default)]
pub struct Gemm {
    options: GemmOptions,
    scratch: Mutex<Vec<AlignedVec>>,
}

impl Clone for Gemm {
    /// The same options, fresh scratch.
    fn clone(&self) -> Self {
        Gemm::new(self.options)
    }
}

impl Gemm {
    /// GEMMs with these options.
    pub fn new(options: GemmOptions) -> Self {
        Gemm {
            options,
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// The options.
    pub fn options(&self) -> GemmOptions {
        self.options
    }

    /// `len` zeros placed as the options say (the operands and temporaries of a user's
    /// products).
    pub fn zeros(&self, len: usize) -> AlignedVec {
        AlignedVec::zeros_placed(len, self.options.placement)
    }

    /// `C (+)= A·B` (`acc` adds to C, else overwrites it), split across the rayon pool
    /// when the product is large.
    ///
    /// Large products are split along the longer side of `C` (the output columns of a
    /// batch × weight product, the rows of a weight gradient), each part one kernel call
    /// over its own block of `C`. A product with few rows (the batch's CLS rows times a
    /// weight) is computed as `Cᵀ = Bᵀ·Aᵀ`, so that `matrixmultiply` packs the weight in
    /// row panels and the few rows once. Every element of `C` is the same sum of the
    /// same products however the work is split or transposed, so results do not depend
    /// on the number of threads.
    ///
    /// # Panics
    /// When the shapes do not chain (`A` is `m × k`, `B` `k × n`, `C` `m × n`).
    #[track_caller]
    pub fn matmul(&self, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, acc: bool) {
        self.run(a, b, c, acc, true);
    }

    /// [`Gemm::matmul`] on the calling thread only (a product inside one of many
    /// parallel tasks).
    #[track_caller]
    pub fn matmul_here(&self, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, acc: bool) {
        self.run(a, b, c, acc, false);
    }

    #[track_caller]
    fn run(&self, a: MatRef<'_>, b: MatRef<'_>, mut c: MatMut<'_>, acc: bool, par: bool) {
        let ((m, k), (k2, n)) = (a.shape(), b.shape());
        assert!(
            k == k2 && c.shape() == (m, n),
            "gemm: {m}x{k} times {k2}x{n} into {:?}",
            c.shape()
        );
        if m == 0 || n == 0 {
            return;
        }
        let ldc = c.ld();
        if k == 0 {
            if !acc {
                for r in 0..m {
                    c.data()[r * ldc..r * ldc + n].fill(0.0);
                }
            }
            return;
        }
        let c = SharedC::new(c);
        #[cfg(target_arch = "x86_64")]
        if self.thin(a, b, c, ldc, acc, par) {
            return;
        }
        let beta = if acc { 1.0 } else { 0.0 };
        if m < SWAP_BELOW && n >= 4 * m {
            split_gemm(b.t(), a.t(), c, (1, ldc), beta, par);
        } else {
            split_gemm(a, b, c, (ldc, 1), beta, par);
        }
    }

    /// Runs `C (+)= A·B` on a thin kernel when the options and the CPU allow it and the
    /// product has few rows and is either `A·Wᵀ` (A and W both contiguous along `k`) or
    /// `A·B` with B row-major and a short reduction (the broadcast form; with AVX-512
    /// also for a transposed A); returns whether it did.
    #[cfg(target_arch = "x86_64")]
    fn thin(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: SharedC<'_>,
        ldc: usize,
        acc: bool,
        par: bool,
    ) -> bool {
        use crate::thin;
        if !self.options.thin_active() {
            return false;
        }
        let avx512 = self.options.thin_avx512_active();
        let ((m, k), (_, n)) = (a.shape(), b.shape());
        let (a_strides, b_strides) = (a.strides(), b.strides());
        let reduction_ok = k <= THIN_NN_MAX_K || avx512;
        let short_nn = b_strides.1 == 1 && reduction_ok && m <= THIN_MAX;
        if short_nn && (a_strides.1 == 1 || avx512) {
            // A·B with B row-major and a short reduction: the broadcast form (on AVX-512
            // also for a transposed A, the backward of a per-image or per-head product).
            for_parts(n, par_flops(par, m, k, n), |cols| {
                let mut scratch = self.scratch();
                // SAFETY: the views bound every element read; C's block for `cols` is
                // this part's alone and valid for writes (SharedC); a transposed A only
                // where the CPU has AVX-512F (checked just above).
                unsafe { thin::nn(a, b, c.ptr(), ldc, acc, cols, avx512, &mut scratch) };
            });
            return true;
        }
        if m > THIN_MAX || a_strides.1 != 1 || b_strides.0 != 1 {
            return false;
        }
        // W = Bᵀ is [n, k] with unit column stride.
        let w = b.t();
        // SAFETY: as above; the parts write disjoint column blocks of C.
        for_parts(n, par_flops(par, m, k, n), |cols| unsafe {
            thin::nt(a, w, c.ptr(), ldc, acc, cols, avx512)
        });
        true
    }

    /// A scratch buffer (empty, or one given back earlier: any length, any contents),
    /// given back to this `Gemm` for later calls when the guard is dropped; the kernels
    /// take theirs here too. Never shared: each call gets its own buffer.
    pub fn scratch(&self) -> Scratch<'_> {
        let mut pool = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let placement = self.options.placement;
        Scratch {
            buf: pool.pop().unwrap_or(AlignedVec::empty(placement)),
            home: &self.scratch,
        }
    }
}

/// A buffer lent by [`Gemm::scratch`], given back when dropped.
#[derive(Debug)]
pub struct Scratch<'a> {
    buf: AlignedVec,
    home: &'a Mutex<Vec<AlignedVec>>,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = AlignedVec;
    fn deref(&self) -> &AlignedVec {
        &self.buf
    }
}

impl std::ops::DerefMut for Scratch<'_> {
    fn deref_mut(&mut self) -> &mut AlignedVec {
        &mut self.buf
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() > 0 {
            let mut pool = self.home.lock().unwrap_or_else(|e| e.into_inner());
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// GEMMs smaller than this (FLOPs, 2 per multiply-add) run on the calling thread: below
/// it, handing work to another thread costs more than it saves.
const PAR_MIN_FLOP: usize = 1 << 22;

/// Columns or rows of `C` per parallel part are a multiple of this (the kernels' tile).
const PAR_ALIGN: usize = 16;

/// `C`'s elements, shared by the parts of one split GEMM, each writing its own disjoint
/// block of rows or columns; borrowed from a [`MatMut`] for `'a`.
#[derive(Clone, Copy)]
struct SharedC<'a> {
    ptr: *mut f32,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `SharedC` is made from a unique borrow of C and used only by the parts of
// one product, each of which writes a block of C no other part touches.
unsafe impl Send for SharedC<'_> {}
unsafe impl Sync for SharedC<'_> {}

impl<'a> SharedC<'a> {
    fn new(mut c: MatMut<'a>) -> Self {
        SharedC {
            ptr: c.data().as_mut_ptr(),
            _borrow: PhantomData,
        }
    }

    /// The pointer (a method, so that closures capture the whole `SharedC`).
    fn ptr(self) -> *mut f32 {
        self.ptr
    }
}

/// `[start, end)` of part `i` of `len` split into `parts` aligned pieces.
fn part(len: usize, parts: usize, i: usize) -> (usize, usize) {
    let per = len.div_ceil(parts).div_ceil(PAR_ALIGN) * PAR_ALIGN;
    ((i * per).min(len), ((i + 1) * per).min(len))
}

/// Products `A·Wᵀ` with at most this many rows use the thin kernel where the CPU has it.
#[cfg(target_arch = "x86_64")]
const THIN_MAX: usize = 64;

/// Products `A·B` (B row-major) with at most [`THIN_MAX`] rows and at most this long a
/// reduction use the thin kernel's broadcast form (per image `P·X̂` over 50 tokens, per
/// head `q_h·W_k,h` and `d_o,h·W_v,h` over 64 rows); a longer one only on its AVX-512
/// build, which takes B in chunks of rows (see `thin/avx512.rs`); the AVX2 build reads
/// a long reduction as a column strip, which matrixmultiply's packing serves better.
#[cfg(target_arch = "x86_64")]
const THIN_NN_MAX_K: usize = 64;

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

/// Products with fewer rows than this (and at least four times as many columns) are
/// computed transposed.
const SWAP_BELOW: usize = 64;

/// `C (+)= A·B` (C's elements at `c` with `c_strides`) split along C's longer side into
/// one `sgemm` call per part.
fn split_gemm(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: SharedC<'_>,
    c_strides: (usize, usize),
    beta: f32,
    par: bool,
) {
    let ((m, k), (_, n)) = (a.shape(), b.shape());
    let by_rows = m >= n;
    let long = if by_rows { m } else { n };
    let is = |x: usize| x as isize;
    for_parts(long, par_flops(par, m, k, n), |(lo, hi)| {
        if lo == hi {
            return;
        }
        // Rows [lo, hi) of A and C, or columns [lo, hi) of B and C.
        let (a, b, c_off) = if by_rows {
            (a.block((lo, hi), (0, k)), b, lo * c_strides.0)
        } else {
            (a, b.block((0, k), (lo, hi)), lo * c_strides.1)
        };
        let ((rows, _), (_, cols)) = (a.shape(), b.shape());
        let ((ars, acs), (brs, bcs)) = (a.strides(), b.strides());
        // SAFETY: the views bound every element read in A and B; the part writes its
        // own row or column block of C, inside the borrowed C (SharedC).
        unsafe {
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                1.0,
                a.data().as_ptr(),
                is(ars),
                is(acs),
                b.data().as_ptr(),
                is(brs),
                is(bcs),
                beta,
                c.ptr().add(c_off),
                is(c_strides.0),
                is(c_strides.1),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    /// Every kernel choice the tests run each product with.
    const CHOICES: [GemmOptions; 3] = [
        GemmOptions::MATRIXMULTIPLY,
        GemmOptions {
            thin: true,
            thin_avx512: false,
            placement: Placement::PastLine,
        },
        GemmOptions {
            thin: true,
            thin_avx512: true,
            placement: Placement::Line,
        },
    ];

    /// `C (+)= A·B`, `A` `[m, k]` (row stride `lda`), `B` `[k, n]` (row stride `ldb`).
    #[allow(clippy::too_many_arguments)]
    fn matmul_nn(
        g: &Gemm,
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        acc: bool,
    ) {
        let (a, b) = (MatRef::new(a, m, k, lda), MatRef::new(b, k, n, ldb));
        g.matmul(a, b, MatMut::new(c, m, n, ldc), acc);
    }

    /// `C (+)= A·Bᵀ`, `B` stored `[n, k]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_nt(
        g: &Gemm,
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        acc: bool,
    ) {
        let (a, b) = (MatRef::new(a, m, k, lda), MatRef::new(b, n, k, ldb).t());
        g.matmul(a, b, MatMut::new(c, m, n, ldc), acc);
    }

    /// The thin kernel's AVX2 and AVX-512 builds exist on x86-64 only (`thin/tests.rs`
    /// tests them there); elsewhere the log says they never run.
    #[cfg(not(target_arch = "x86_64"))]
    #[test]
    fn thin_kernel_builds_are_named_where_they_do_not_exist() {
        anytime_testkit::skip::not_here(
            "thin_kernel_builds_are_named_where_they_do_not_exist",
            "thin GEMM AVX2+FMA and AVX-512 builds: x86-64 only (matrixmultiply runs here)",
        );
    }

    /// On aarch64 the vector paths are NEON's: every product runs on `matrixmultiply`,
    /// which takes its NEON kernel when the CPU reports NEON (the same run-time check), and
    /// the kernel bodies of `build_of!` run their baseline build, compiled with NEON. The
    /// products' numbers are this module's other tests, run here as on x86-64.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_takes_the_neon_paths() {
        assert!(
            cfg!(target_feature = "neon"),
            "the baseline build is compiled without NEON"
        );
        assert!(
            std::arch::is_aarch64_feature_detected!("neon"),
            "no NEON reported: matrixmultiply would take its scalar kernel"
        );
        assert!(!GemmOptions::default().thin_active());
        assert_eq!(
            crate::simd::Build::widest("avx2"),
            crate::simd::Build::Baseline
        );
    }

    #[test]
    fn block_gemm_variants_match_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.23).cos()).collect();
        let at: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.19).sin()).collect();
        let (av, bv) = (MatRef::new(&a, m, k, k), MatRef::new(&b, k, n, n));
        let (btv, atv) = (MatRef::new(&bt, n, k, k).t(), MatRef::new(&at, k, m, m).t());
        for options in CHOICES {
            let g = Gemm::new(options);
            let mut c = vec![1.0; m * n];
            g.matmul(av, bv, MatMut::new(&mut c, m, n, n), false);
            let want = reference::matmul(av, bv);
            anytime_testkit::assert_close("nn", &c, &want, 1e-5, 0.0);
            g.matmul(av, btv, MatMut::new(&mut c, m, n, n), false);
            let want = reference::matmul(av, btv);
            anytime_testkit::assert_close("nt", &c, &want, 1e-5, 0.0);
            let mut c2 = c.clone();
            g.matmul(atv, bv, MatMut::new(&mut c2, m, n, n), true);
            let want2 = reference::matmul(atv, bv);
            let added: Vec<f32> = c2.iter().zip(&c).map(|(x, c)| x - c).collect();
            anytime_testkit::assert_close("tn", &added, &want2, 1e-5, 0.0);
        }
    }

    #[test]
    #[should_panic(expected = "gemm: 5x7 times 6x3")]
    fn shapes_that_do_not_chain_are_refused() {
        let x = [0.0f32; 64];
        let mut c = [0.0f32; 15];
        let (a, b) = (MatRef::new(&x, 5, 7, 7), MatRef::new(&x, 6, 3, 3));
        Gemm::default().matmul(a, b, MatMut::new(&mut c, 5, 3, 3), false);
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
            let want = reference::matmul(MatRef::new(&a, m, k, lda), MatRef::new(&bt, n, k, k).t());
            for options in CHOICES {
                let g = Gemm::new(options);
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut c = c0.clone();
                    pool.install(|| matmul_nt(&g, (m, k, n), &a, lda, &bt, k, &mut c, n, true));
                    c
                };
                let (one, three) = (run(1), run(3));
                assert_eq!(one, three, "thread count changed {m}x{k}x{n} ({options:?})");
                for ((x, w), c) in three.iter().zip(&want).zip(&c0) {
                    assert!(anytime_testkit::close(x - c, *w, 1e-3, 1e-3), "{m}x{k}x{n}");
                }
            }
        }
    }

    /// `len` test values `sin(i·f)`.
    fn sines(len: usize, f: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * f).sin()).collect()
    }

    /// Runs `product(gemm, c, acc)` on a copy of `c0` (`[m, ldc]`) in pools of 1 and 3
    /// threads, for `acc` false and true and every kernel choice: both results
    /// bit-identical, and `c0` (when `acc`) plus `want` (`[m, n]`) within f32 rounding.
    fn check_threads_and_naive(
        (m, k, n): (usize, usize, usize),
        ldc: usize,
        want: &[f32],
        product: impl Fn(&Gemm, &mut [f32], bool) + Sync,
    ) {
        let c0 = sines(m * ldc, 0.05);
        for (options, acc) in CHOICES.into_iter().flat_map(|o| [(o, false), (o, true)]) {
            let g = Gemm::new(options);
            let run = |threads: usize| {
                let mut c = c0.clone();
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| product(&g, &mut c, acc));
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
            let want = reference::matmul(MatRef::new(&a, m, k, lda), MatRef::new(&b, k, n, ldb));
            check_threads_and_naive((m, k, n), ldc, &want, |g, c, acc| {
                matmul_nn(g, (m, k, n), &a, lda, &b, ldb, c, ldc, acc)
            });
        }
    }

    /// The thin kernel's shape `A·Wᵀ` with few rows (matrixmultiply where the CPU lacks
    /// it), with row, column and reduction tails, strided and accumulating operands,
    /// small and split across threads: against a plain loop, and bit-identical on 1 and
    /// 3 threads.
    #[test]
    fn block_gemm_thin_shape_matches_naive_on_any_thread_count() {
        if !GemmOptions::default().thin_active() {
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
            let want =
                reference::matmul(MatRef::new(&a, m, k, lda), MatRef::new(&w, n, k, ldw).t());
            check_threads_and_naive((m, k, n), ldc, &want, |g, c, acc| {
                matmul_nt(g, (m, k, n), &a, lda, &w, ldw, c, ldc, acc)
            });
        }
    }
}
