//! A thin-GEMM kernel for x86-64 with AVX2 and FMA: `C[i, j] (+)= Σ_p A[i, p]·W[j, p]`
//! with few rows `i` (the batch's 32 CLS rows through a `Linear` weight, an image's 12
//! heads against its 50 tokens), reading both operands along their contiguous rows, so
//! the long one (a weight) is streamed from its row-major storage with no packing copy.
//!
//! A tile is 4 rows of A by 3 rows of W: 12 eight-lane accumulators over the reduction,
//! then the lanes are added in a fixed tree and the last `k mod 8` products added in
//! order, so an element's value does not depend on the tile or parallel part it falls
//! in, nor on the thread count. [`available`] says whether the CPU has the instructions;
//! the caller falls back to `matrixmultiply` when it does not (and on other
//! architectures), and for every other shape.
//!
//! [`nn`] is the broadcast form `C = A·B` with B row-major, for a short reduction (an
//! image's attention probabilities times its 50 normalised tokens, a head's 64 query or
//! output-gradient columns times its 64 rows of a weight): 6 rows of A by 16 columns of
//! B, each element one `fma` chain over the reduction, B's block staying in cache. Over
//! a long reduction (`dY·W` through a whole weight) the same form ran slower than
//! `matrixmultiply` in the training step (it reads a weight's column strip across rows
//! a page or more apart, which the prefetchers do not follow), as did a broadcast form
//! of `dYᵀ·X` (its tiles spilled registers).

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Lanes of an AVX register.
const L: usize = 8;

/// Off switch for same-run comparisons (see [`super::gemm::set_thin_kernels`]).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernel on or off for the whole process.
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the kernel is on and the CPU has AVX2 and FMA (detected once by `std`).
pub(crate) fn available() -> bool {
    ENABLED.load(Ordering::Relaxed)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// A read-only matrix: base pointer and row stride (elements), unit column stride.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub ld: usize,
}

// SAFETY: a `Mat` is only read, and only while the slice it was made from is borrowed.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

/// Sum of the 8 lanes in a fixed order: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller's CPU has AVX.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Stores `t` at `c` (or adds it to what is there when `acc`).
///
/// # Safety
/// `c` is valid for reads and writes.
#[inline(always)]
unsafe fn store(c: *mut f32, t: f32, acc: bool) {
    // SAFETY: `c` is valid (the caller's contract).
    unsafe {
        *c = if acc { *c + t } else { t };
    }
}

/// One `MR × NR` tile of [`nt`] at `a` (rows of A) and `w` (rows of W).
///
/// # Safety
/// `MR` rows of A and `NR` rows of W of `k` elements, and the `MR × NR` block of C at
/// `c` (row stride `ldc`), are valid; the CPU has AVX2 and FMA.
#[inline(always)]
unsafe fn nt_tile<const MR: usize, const NR: usize>(
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let mut s = [[_mm256_setzero_ps(); NR]; MR];
        let mut p = 0;
        while p + L <= k {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (q, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.ptr.add(q * w.ld + p));
            }
            for (r, sr) in s.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.ptr.add(r * a.ld + p));
                for (x, v) in sr.iter_mut().zip(&wv) {
                    *x = _mm256_fmadd_ps(av, *v, *x);
                }
            }
            p += L;
        }
        for (r, sr) in s.iter().enumerate() {
            for (q, x) in sr.iter().enumerate() {
                let mut t = hsum(*x);
                for e in p..k {
                    t = (*a.ptr.add(r * a.ld + e)).mul_add(*w.ptr.add(q * w.ld + e), t);
                }
                store(c.add(r * ldc + q), t, acc);
            }
        }
    }
}

/// [`nt`] for the output columns `j0..j1` (rows `j0..j1` of W).
///
/// # Safety
/// A is `[m, k]`, W at least `[j1, k]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nt(
    m: usize,
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (j0, j1): (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let mut j = j0;
        while j < j1 {
            let nr = (j1 - j).min(3);
            let wj = Mat {
                ptr: w.ptr.add(j * w.ld),
                ld: w.ld,
            };
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(4);
                let ai = Mat {
                    ptr: a.ptr.add(i * a.ld),
                    ld: a.ld,
                };
                let cij = c.add(i * ldc + j);
                macro_rules! tile {
                    ($($mr:literal $nr:literal),*) => {
                        match (mr, nr) {
                            $(($mr, $nr) => nt_tile::<$mr, $nr>(k, ai, wj, cij, ldc, acc),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(4 3, 4 2, 4 1, 3 3, 3 2, 3 1, 2 3, 2 2, 2 1, 1 3, 1 2, 1 1);
                i += mr;
            }
            j += nr;
        }
    }
}

/// Rows of A per tile of [`nn`]: 6 rows × 2 registers = 12 accumulators.
const NN_MR: usize = 6;

/// One `MR`-row, 16-column tile of [`nn`] at `a` (rows of A) and column `j` of B.
///
/// # Safety
/// `MR` rows of A with `k` elements, `k` rows of B covering columns `j..j+16`, and the
/// `MR × 16` block of C at `c` (row stride `ldc`) are valid; the CPU has AVX2 and FMA.
#[inline(always)]
unsafe fn nn_tile<const MR: usize>(
    k: usize,
    a: Mat,
    b: Mat,
    j: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let mut s = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..k {
            let bp = b.ptr.add(p * b.ld + j);
            let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(L)));
            for (r, sr) in s.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.ptr.add(r * a.ld + p));
                sr[0] = _mm256_fmadd_ps(x, b0, sr[0]);
                sr[1] = _mm256_fmadd_ps(x, b1, sr[1]);
            }
        }
        for (r, sr) in s.iter().enumerate() {
            let cr = c.add(r * ldc);
            for (h, v) in sr.iter().enumerate() {
                let ch = cr.add(h * L);
                let v = if acc {
                    _mm256_add_ps(_mm256_loadu_ps(ch), *v)
                } else {
                    *v
                };
                _mm256_storeu_ps(ch, v);
            }
        }
    }
}

/// `C[i, j] (+)= Σ_p A[i, p]·B[p, j]` for the output columns `j0..j1`, with A `[m, k]` and
/// B `[k, n]` both row-major: B's rows are streamed whole (broadcast form), which suits a
/// short reduction (an image's 50 tokens, a head's 64 rows of a weight) whose B block
/// stays in cache. Each element is one `fma` chain over `p` in order (then added to C
/// when `acc`), whatever the tile or the column range.
///
/// # Safety
/// A is `[m, k]`, B at least `[k, j1]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nn(
    m: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (j0, j1): (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe {
        let mut j = j0;
        while j + 2 * L <= j1 {
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(NN_MR);
                let ai = Mat {
                    ptr: a.ptr.add(i * a.ld),
                    ld: a.ld,
                };
                let cij = c.add(i * ldc + j);
                macro_rules! tile {
                    ($($mr:literal),*) => {
                        match mr {
                            $($mr => nn_tile::<$mr>(k, ai, b, j, cij, ldc, acc),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(6, 5, 4, 3, 2, 1);
                i += mr;
            }
            j += 2 * L;
        }
        // The last columns, one at a time: the same chain per element.
        for j in j..j1 {
            for i in 0..m {
                let mut t = 0.0f32;
                for p in 0..k {
                    t = (*a.ptr.add(i * a.ld + p)).mul_add(*b.ptr.add(p * b.ld + j), t);
                }
                store(c.add(i * ldc + j), t, acc);
            }
        }
    }
}
