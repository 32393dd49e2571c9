//! The thin kernels' AVX-512 builds (16 lanes, 32 registers).

use std::arch::x86_64::*;

use super::avx2::hsum;
use super::*;

/// Lanes of an AVX-512 register.
pub(super) const L16: usize = 16;

/// Sum of the 16 lanes in a fixed order: lane `l` plus lane `l + 8`, then [`hsum`].
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn hsum16(v: __m512) -> f32 {
    // SAFETY: the caller's CPU has AVX-512F (and so AVX).
    unsafe {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        hsum(_mm256_add_ps(lo, hi))
    }
}

impl Lanes for __m512 {
    const N: usize = L16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn sum(self) -> f32 {
        // SAFETY: the caller's CPU has AVX-512F.
        unsafe { hsum16(self) }
    }
}

/// [`nt`] with AVX-512 (16 lanes, 32 registers): tiles of 4 rows of A by 6 rows of W,
/// 24 accumulators, so each vector of A read from L2 feeds 6 FMAs (AVX2's 4×3 tile
/// feeds 3).
///
/// # Safety
/// As [`nt`], and the CPU has AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn nt_avx512(
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
    unsafe { nt_tiles::<__m512, 4, 6>(m, k, a, w, c, ldc, acc, cols) }
}

/// Rows of A per tile of [`nn_avx512`], and 16-lane vectors of columns: 6 × 4 = 24
/// accumulators.
const NN16_MR: usize = 6;
const NN16_NV: usize = 4;

/// One `MR`-row tile of [`nn_avx512`] over `NV` vectors of 16 columns (the last one
/// masked by `mask`) and `kc` steps of the reduction: each element's `fma` chain in
/// order over `p`, from zero or (`from`) from the partial chain stored there by the
/// previous chunk of the reduction, then written to `to` or (`add`) added to what is
/// there. `next` asks for a line of the next chunk of B at each step.
///
/// # Safety
/// `MR` rows of A over `kc` steps, `kc` rows of B over the tile's columns, and the tiles
/// at `from` and `to` (row strides as given) are valid; the CPU has AVX-512F.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn nn16_tile<const MR: usize, const NV: usize>(
    kc: usize,
    a: Mat2,
    b: Mat,
    from: Option<(*const f32, usize)>,
    (to, ldt): (*mut f32, usize),
    add: bool,
    mask: __mmask16,
    next: &mut Lines,
) {
    // SAFETY: the caller upholds this function's contract (see its doc); masked-off lanes
    // are neither read nor written.
    unsafe {
        let m_of = |v: usize| if v + 1 == NV { mask } else { 0xFFFF };
        let mut s = [[_mm512_setzero_ps(); NV]; MR];
        if let Some((f, ldf)) = from {
            for (r, sr) in s.iter_mut().enumerate() {
                for (v, x) in sr.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(m_of(v), f.add(r * ldf + v * L16));
                }
            }
        }
        for p in 0..kc {
            next.step();
            let bp = b.ptr.add(p * b.ld);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(m_of(v), bp.add(v * L16));
            }
            for (r, sr) in s.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.ptr.add(r * a.rs + p * a.cs));
                for (s, bv) in sr.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(x, *bv, *s);
                }
            }
        }
        for (r, sr) in s.iter().enumerate() {
            for (v, x) in sr.iter().enumerate() {
                let cp = to.add(r * ldt + v * L16);
                let x = if add {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(m_of(v), cp), *x)
                } else {
                    *x
                };
                _mm512_mask_storeu_ps(cp, m_of(v), x);
            }
        }
    }
}

/// The lines of a block of rows (`per_row` lines each, row stride `ld` floats) still to
/// be asked for, one per [`Lines::step`], into L2: the next chunk of B's rows while
/// [`nn_avx512`] computes with the current one.
struct Lines {
    /// The next line's row (its first float).
    row: *const f32,
    ld: usize,
    per_row: usize,
    /// The next line's place in its row, and the rows left.
    col: usize,
    rows: usize,
}

impl Lines {
    const NONE: Lines = Lines {
        row: std::ptr::null(),
        ld: 0,
        per_row: 1,
        col: 0,
        rows: 0,
    };

    /// Asks for the next line, if any is left.
    #[inline(always)]
    fn step(&mut self) {
        if self.rows > 0 {
            let line = self.row.wrapping_add(self.col * LINE);
            // SAFETY: a prefetch neither reads nor writes memory as far as the program
            // can tell.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line as *const i8) };
            self.col += 1;
            if self.col == self.per_row {
                self.col = 0;
                self.rows -= 1;
                self.row = self.row.wrapping_add(self.ld);
            }
        }
    }
}

/// [`nn`] on AVX-512, with A of any strides, in 6-row × 64-column tiles (24 accumulators
/// of the 32 registers; the last vector of a row masked, so no column is left to a
/// scalar loop). Each element is one `fma` chain over `p` in order from zero, then added
/// to C when `acc`, exactly as in [`nn_avx2`]: both give the same bits.
///
/// A reduction longer than [`KC`] runs in chunks of `KC` rows of B: every tile of the
/// columns `j0..j1` over one chunk, its partial chains stored (in C itself, or when
/// `acc` in the caller's scratch `copy`) and taken up again by the next chunk, whose
/// rows are asked for meanwhile. A chunk of a weight's rows is contiguous in memory, so
/// it streams in order and sits in L2 without conflicts, where a column strip over all
/// of a long reduction has its lines kilobytes apart, in a few cache sets and a page
/// each.
///
/// # Safety
/// A covers `[m, k]` and B `[k, j1]` (row stride `b.ld`), C `[m, ≥ j1]` (row stride
/// `ldc`), all valid; the CPU has AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn nn_avx512(
    m: usize,
    k: usize,
    a: Mat2,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (j0, j1): (usize, usize),
    copy: &mut crate::AlignedVec,
) {
    let width = j1 - j0;
    // Partial chains between chunks: in C's own block, or, when C is added to, in the
    // caller's scratch.
    let in_copy = k > KC && acc;
    if in_copy {
        copy.resize(m * width, 0.0);
    }
    // SAFETY: the caller upholds this function's contract (see its doc); the partial
    // chains' block is `[m, width]` at `part` (row stride `ldp`), in C or in the copy.
    unsafe {
        let (part, ldp) = if in_copy {
            (copy.as_mut_ptr(), width)
        } else {
            (c.add(j0), ldc)
        };
        let mut k0 = 0;
        while k0 < k {
            let kc = (k - k0).min(KC);
            let last = k0 + kc == k;
            let mut next = if last {
                Lines::NONE
            } else {
                Lines {
                    row: b.ptr.add((k0 + kc) * b.ld + j0),
                    ld: b.ld,
                    per_row: width.div_ceil(LINE),
                    col: 0,
                    rows: (k - k0 - kc).min(KC),
                }
            };
            let mut j = j0;
            while j < j1 {
                let w = (j1 - j).min(NN16_NV * L16);
                let nv = w.div_ceil(L16);
                let mask: __mmask16 = if w % L16 == 0 {
                    0xFFFF
                } else {
                    (1u16 << (w % L16)) - 1
                };
                let bj = Mat {
                    ptr: b.ptr.add(k0 * b.ld + j),
                    ld: b.ld,
                };
                let mut i = 0;
                while i < m {
                    let mr = (m - i).min(NN16_MR);
                    let ai = Mat2 {
                        ptr: a.ptr.add(i * a.rs + k0 * a.cs),
                        ..a
                    };
                    let pij = part.add(i * ldp + j - j0);
                    let from = (k0 > 0).then_some((pij as *const f32, ldp));
                    let (to, add) = if last {
                        ((c.add(i * ldc + j), ldc), acc)
                    } else {
                        ((pij, ldp), false)
                    };
                    macro_rules! tile {
                        ($($mr:literal $nv:literal),*) => {
                            match (mr, nv) {
                                $(($mr, $nv) => nn16_tile::<$mr, $nv>(
                                    kc, ai, bj, from, to, add, mask, &mut next,
                                ),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    tile!(
                        6 4, 6 3, 6 2, 6 1, 5 4, 5 3, 5 2, 5 1, 4 4, 4 3, 4 2, 4 1,
                        3 4, 3 3, 3 2, 3 1, 2 4, 2 3, 2 2, 2 1, 1 4, 1 3, 1 2, 1 1
                    );
                    i += mr;
                }
                j += w;
            }
            k0 += kc;
        }
    }
}

/// Rows of B per chunk of [`nn_avx512`]'s reduction: 64 rows of `c_proj` are 768 KiB
/// (384 KiB for each of two threads' column halves), which stay in L2 with the partial
/// chains while every tile of the columns takes them.
const KC: usize = 64;
