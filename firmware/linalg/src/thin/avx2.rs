//! The thin kernels' AVX2 builds (8 lanes, 16 registers).

use std::arch::x86_64::*;

use super::*;

/// Sum of the 8 lanes in a fixed order: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller's CPU has AVX.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

impl Lanes for __m256 {
    const N: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's CPU has AVX.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        // SAFETY: the caller's CPU has AVX.
        unsafe { hsum(self) }
    }
}

/// [`nt`] with AVX2 (8 lanes): tiles of 4 rows of A by 3 rows of W.
///
/// # Safety
/// A is `[m, k]`, W at least `[j1, k]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn nt_avx2(
    m: usize,
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    cols: (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (see its doc).
    unsafe { nt_tiles::<__m256, 4, 3>(m, k, a, w, c, ldc, acc, cols) }
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

/// [`nn`] on AVX2, for a row-major A.
///
/// # Safety
/// A is `[m, k]`, B at least `[k, j1]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn nn_avx2(
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
