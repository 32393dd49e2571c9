//! A thin-GEMM kernel for x86-64 with AVX2 and FMA: `C[i, j] (+)= Σ_p A[i, p]·W[j, p]`
//! with few rows `i` (the batch's 32 CLS rows through a `Linear` weight, an image's 12
//! heads against its 50 tokens), reading both operands along their contiguous rows, so
//! the long one (a weight) is streamed from its row-major storage with no packing copy.
//!
//! A tile is 4 rows of A by 3 rows of W: 12 eight-lane accumulators over the reduction,
//! then the lanes are added in a fixed tree and the last `k mod 8` products added in
//! order, so an element's value does not depend on the tile or parallel part it falls
//! in, nor on the thread count. [`available`] says whether the CPU has the instructions;
//! the caller ([`crate::Gemm`]) falls back to `matrixmultiply` when it does not (and on other
//! architectures), and for every other shape.
//!
//! [`nn`] is the broadcast form `C = A·B` with B row-major, for a short reduction (an
//! image's attention probabilities times its 50 normalised tokens, a head's 64 query or
//! output-gradient columns times its 64 rows of a weight): 6 rows of A by 16 columns of
//! B, each element one `fma` chain over the reduction, B's block staying in cache. The
//! AVX2 build serves short reductions only (a long one, `dY·W` through a whole weight,
//! reads a column strip across rows a page apart, which the prefetchers do not follow);
//! the AVX-512 build runs a long reduction in chunks of contiguous rows of B (see
//! `avx512::nn_avx512`).
//!
//! Where the CPU has AVX-512F (and the caller's options allow it), both forms run AVX-512 builds
//! with 32 registers of 16 lanes: [`nt`] in 4 × 6 tiles whose lanes are added by a
//! 16-lane tree (so its last bits differ from the AVX2 build's, and depend on the CPU,
//! never on the thread count), and `nn_avx512` in 6-row × 64-column tiles, each
//! element the same `fma` chain as in [`nn`] (the same bits), also for a transposed A.
//! On such a CPU `matrixmultiply` runs AVX-512 kernels too, so only the AVX-512 builds
//! are used there (comparisons in `docs/perf-log.md`).

use std::arch::x86_64::*;

use crate::MatRef;

mod avx2;
mod avx512;
#[cfg(test)]
mod tests;

use avx2::{nn_avx2, nt_avx2};
use avx512::{nn_avx512, nt_avx512};

/// Lanes of an AVX register.
const L: usize = 8;

/// Whether the CPU has AVX2 and FMA (detected once by `std`).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// A read-only matrix inside a kernel: base pointer and row stride (elements), unit
/// column stride; made from a [`MatRef`] on the thread that uses it, and never outlives
/// the call.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    ld: usize,
}

impl Mat {
    /// The kernel's form of a view with unit column stride.
    fn of(v: &MatRef<'_>) -> Mat {
        debug_assert_eq!(v.strides().1, 1);
        Mat {
            ptr: v.data().as_ptr(),
            ld: v.strides().0,
        }
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

/// A vector register of f32 lanes: what the tiles of [`nt`] need from AVX2 (`__m256`)
/// and AVX-512 (`__m512`), so that one tile loop serves both builds.
trait Lanes: Copy {
    /// Lanes per register.
    const N: usize;
    /// # Safety
    /// The CPU has the instructions.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `N` floats at `p` are valid; the CPU has the instructions.
    unsafe fn load(p: *const f32) -> Self;
    /// `a·b + c` per lane, rounded once.
    ///
    /// # Safety
    /// The CPU has the instructions.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// The lanes' sum in a fixed order.
    ///
    /// # Safety
    /// The CPU has the instructions.
    unsafe fn sum(self) -> f32;
}

/// One `MR × NR` tile of [`nt`] at `a` (rows of A) and `w` (rows of W): `MR·NR`
/// accumulators of `V::N` lanes over the reduction, then each one's lanes summed in a
/// fixed order and the last `k mod V::N` products added in order; `pf`'s lines are
/// asked for on the way.
///
/// # Safety
/// `MR` rows of A and `NR` rows of W of `k` elements, and the `MR × NR` block of C at
/// `c` (row stride `ldc`), are valid; the CPU has `V`'s instructions and FMA.
#[inline(always)]
unsafe fn nt_tile<V: Lanes, const MR: usize, const NR: usize>(
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    mut pf: Ahead,
) {
    // SAFETY: the caller upholds this function's contract (see its doc); prefetches
    // touch no memory.
    unsafe {
        let mut s = [[V::zero(); NR]; MR];
        let mut p = 0;
        while p + V::N <= k {
            pf.step();
            let mut wv = [V::zero(); NR];
            for (q, v) in wv.iter_mut().enumerate() {
                *v = V::load(w.ptr.add(q * w.ld + p));
            }
            for (r, sr) in s.iter_mut().enumerate() {
                let av = V::load(a.ptr.add(r * a.ld + p));
                for (x, v) in sr.iter_mut().zip(&wv) {
                    *x = V::fmadd(av, *v, *x);
                }
            }
            p += V::N;
        }
        for (r, sr) in s.iter().enumerate() {
            for (q, x) in sr.iter().enumerate() {
                let mut t = x.sum();
                for e in p..k {
                    t = (*a.ptr.add(r * a.ld + e)).mul_add(*w.ptr.add(q * w.ld + e), t);
                }
                store(c.add(r * ldc + q), t, acc);
            }
        }
    }
}

/// [`nt`] over the output columns `j0..j1` in `MR × NR` tiles of `V` registers; the
/// rows and columns left over take tiles one row or one column wide (every element is
/// the same sum whatever its tile, so the tiling never changes a bit).
///
/// # Safety
/// As [`nt`], and the CPU has `V`'s instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_tiles<V: Lanes, const MR: usize, const NR: usize>(
    m: usize,
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (j0, j1): (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (see its doc); every tile lies
    // inside rows `0..m` and columns `j0..j1`.
    unsafe {
        // Each row tile's share of a next group of `NR` rows (all groups but the last
        // two), worked out once: it takes a few divisions.
        let mut shares = [Ahead::NONE; SHARES];
        let mut i = 0;
        while i < m.min(SHARES) {
            let mr = if m - i >= MR { MR } else { 1 };
            shares[i] = Ahead::share(std::ptr::null(), w.ld, NR, k, (i, i + mr, m));
            i += mr;
        }
        let mut j = j0;
        while j < j1 {
            let nr = if j1 - j >= NR { NR } else { 1 };
            let wj = Mat {
                ptr: w.ptr.add(j * w.ld),
                ld: w.ld,
            };
            let mut i = 0;
            while i < m {
                let mr = if m - i >= MR { MR } else { 1 };
                let ai = Mat {
                    ptr: a.ptr.add(i * a.ld),
                    ld: a.ld,
                };
                let cij = c.add(i * ldc + j);
                // The next group's rows of W, fetched a share per tile of this group.
                let pf = if nr == NR && j + NR < j1 {
                    let (next, rows) = (w.ptr.add((j + NR) * w.ld), (j1 - j - NR).min(NR));
                    if rows == NR && i < SHARES {
                        Ahead {
                            ptr: next,
                            ..shares[i]
                        }
                    } else {
                        Ahead::share(next, w.ld, rows, k, (i, i + mr, m))
                    }
                } else {
                    Ahead::NONE
                };
                match (mr == MR, nr == NR) {
                    (true, true) => nt_tile::<V, MR, NR>(k, ai, wj, cij, ldc, acc, pf),
                    (true, false) => nt_tile::<V, MR, 1>(k, ai, wj, cij, ldc, acc, pf),
                    (false, true) => nt_tile::<V, 1, NR>(k, ai, wj, cij, ldc, acc, pf),
                    (false, false) => nt_tile::<V, 1, 1>(k, ai, wj, cij, ldc, acc, pf),
                }
                i += mr;
            }
            j += nr;
        }
    }
}

/// Floats per 64-byte cache line.
const LINE: usize = 16;

/// Row tiles whose prefetch shares [`nt_tiles`] works out once (a product's first rows;
/// the thin kernel takes at most 64).
const SHARES: usize = 64;

/// Lines of a block of rows of a matrix to prefetch, a few per step of a tile's loop:
/// [`nt_tiles`] asks for the next group of W's rows while it computes the current
/// group's tiles, each tile taking a share, so that a weight streamed from memory (the
/// forward's projections, each read once a step) arrives before it is needed instead
/// of being waited for by the group's first tile (measured in `docs/perf-log.md`).
/// `left` lines remain, from row `row`, column `col` of the block.
#[derive(Clone, Copy)]
struct Ahead {
    ptr: *const f32,
    ld: usize,
    cols: usize,
    row: usize,
    col: usize,
    left: usize,
    per_step: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead {
        ptr: std::ptr::null(),
        ld: 0,
        cols: 0,
        row: 0,
        col: 0,
        left: 0,
        per_step: 0,
    };

    /// The share of the tile of rows `i0..i1` (of `0..m`) of the lines of `rows` rows
    /// of `cols` floats at `ptr` (row stride `ld`), spread over the tile's `cols / LINE`
    /// steps.
    fn share(
        ptr: *const f32,
        ld: usize,
        rows: usize,
        cols: usize,
        (i0, i1, m): (usize, usize, usize),
    ) -> Ahead {
        let per_row = cols.div_ceil(LINE);
        let total = rows * per_row;
        let (lo, hi) = (total * i0 / m.max(1), total * i1.min(m) / m.max(1));
        let steps = (cols / LINE).max(1);
        Ahead {
            ptr,
            ld,
            cols,
            row: lo / per_row.max(1),
            col: lo % per_row.max(1) * LINE,
            left: hi.saturating_sub(lo),
            per_step: (hi.saturating_sub(lo)).div_ceil(steps),
        }
    }

    /// Asks for this step's lines.
    #[inline(always)]
    fn step(&mut self) {
        for _ in 0..self.per_step.min(self.left) {
            let at = self.ptr.wrapping_add(self.row * self.ld + self.col);
            // SAFETY: a prefetch neither reads nor writes memory as far as the program
            // can tell.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at as *const i8) };
            self.left -= 1;
            self.col += LINE;
            if self.col >= self.cols {
                (self.row, self.col) = (self.row + 1, 0);
            }
        }
    }
}

/// `C[i, j] (+)= Σ_p A[i, p]·W[j, p]` for the output columns `j0..j1` (rows `j0..j1` of
/// W), on AVX-512 when `avx512`, else on AVX2. Within one build, every
/// element is the same sum in the same order whatever its tile or column range; the two
/// builds differ in their lane trees (16 lanes against 8), so the CPU, not the thread
/// count, decides the last bits.
///
/// # Safety
/// `a` is `[m, k]` and `w` `[n ≥ j1, k]`, both with unit column stride; C is `[m, ≥ j1]`
/// with row stride `ldc` and valid for writes; the CPU has AVX2 and FMA, and AVX-512F
/// when `avx512`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nt(
    a: MatRef<'_>,
    w: MatRef<'_>,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    cols: (usize, usize),
    avx512: bool,
) {
    let ((m, k), (a, w)) = (a.shape(), (Mat::of(&a), Mat::of(&w)));
    // SAFETY: the caller upholds this function's contract; the AVX-512 build runs only
    // where the caller says the CPU has it.
    unsafe {
        if avx512 {
            nt_avx512(m, k, a, w, c, ldc, acc, cols)
        } else {
            nt_avx2(m, k, a, w, c, ldc, acc, cols)
        }
    }
}

/// `C[i, j] (+)= Σ_p A[i, p]·B[p, j]` for the output columns `j0..j1`, B `[k, n]`
/// row-major: B's rows are streamed whole (broadcast form), which suits a short
/// reduction (an image's 50 tokens, a head's 64 rows of a weight) whose B block stays in
/// cache; over a long one the AVX-512 build takes B in chunks of rows. Each element is one
/// `fma` chain over `p` in order (then added to C when `acc`), whatever the tile or the
/// column range, on AVX-512 (when `avx512`, or A is not row-major) as on AVX2: the
/// same bits. `partial` is the AVX-512 build's scratch for a long reduction added to C.
///
/// # Safety
/// `a` is `[m, k]` (any strides), `b` `[k, n ≥ j1]` with unit column stride, C `[m, ≥ j1]`
/// with row stride `ldc` and valid for writes; the CPU has AVX2 and FMA, and AVX-512F
/// when `avx512` or A is not row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nn(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    cols: (usize, usize),
    avx512: bool,
    partial: &mut crate::AlignedVec,
) {
    let (m, k) = a.shape();
    let (rs, cs) = a.strides();
    let (a, b) = (
        Mat2 {
            ptr: a.data().as_ptr(),
            rs,
            cs,
        },
        Mat::of(&b),
    );
    // SAFETY: the caller upholds this function's contract; the AVX2 build gets a
    // row-major A, the AVX-512 build runs only where the caller says the CPU has it.
    unsafe {
        if a.cs != 1 || avx512 {
            nn_avx512(m, k, a, b, c, ldc, acc, cols, partial)
        } else {
            let a = Mat {
                ptr: a.ptr,
                ld: a.rs,
            };
            nn_avx2(m, k, a, b, c, ldc, acc, cols)
        }
    }
}

/// A read-only matrix with both strides (elements): element `(i, p)` at
/// `ptr + i·rs + p·cs` (a row-major A has `cs = 1`, a transposed one `rs = 1`).
#[derive(Clone, Copy)]
struct Mat2 {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}
