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
//! B, each element one `fma` chain over the reduction, B's block staying in cache. The
//! AVX2 build serves short reductions only (a long one, `dY·W` through a whole weight,
//! reads a column strip across rows a page apart, which the prefetchers do not follow);
//! the AVX-512 build runs a long reduction in chunks of contiguous rows of B (see
//! [`nn_avx512`]).
//!
//! Where the CPU has AVX-512F (and [`avx512_active`]), both forms run AVX-512 builds
//! with 32 registers of 16 lanes: [`nt`] in 4 × 6 tiles whose lanes are added by a
//! 16-lane tree (so its last bits differ from the AVX2 build's, and depend on the CPU,
//! never on the thread count), and [`nn_avx512`] in 6-row × 64-column tiles, each
//! element the same `fma` chain as in [`nn`] (the same bits), also for a transposed A.
//! On such a CPU `matrixmultiply` runs AVX-512 kernels too, so only the AVX-512 builds
//! are used there (comparisons in `docs/perf-log.md`).

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

/// Off switch of the AVX-512 builds ([`nt`]'s and [`nn_avx512`]), for same-run
/// comparisons (see [`super::gemm::set_thin_avx512`]).
static AVX512: AtomicBool = AtomicBool::new(true);

/// Turns the AVX-512 builds on or off for the whole process.
pub(crate) fn set_avx512(on: bool) {
    AVX512.store(on, Ordering::Relaxed);
}

/// Whether the kernel is on and the CPU has AVX2 and FMA (detected once by `std`).
pub(crate) fn available() -> bool {
    ENABLED.load(Ordering::Relaxed)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// Whether the AVX-512 builds run (on, and the CPU has AVX-512F).
pub(crate) fn avx512_active() -> bool {
    AVX512.load(Ordering::Relaxed) && is_x86_feature_detected!("avx512f")
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

/// [`nt`] with AVX2 (8 lanes): tiles of 4 rows of A by 3 rows of W.
///
/// # Safety
/// A is `[m, k]`, W at least `[j1, k]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_avx2(
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

/// `C[i, j] (+)= Σ_p A[i, p]·W[j, p]` for the output columns `j0..j1` (rows `j0..j1` of
/// W), on AVX-512 where [`avx512_active`] says so, else on AVX2. Within one build, every
/// element is the same sum in the same order whatever its tile or column range; the two
/// builds differ in their lane trees (16 lanes against 8), so the CPU, not the thread
/// count, decides the last bits.
///
/// # Safety
/// A is `[m, k]`, W at least `[j1, k]`, C `[m, ≥ j1]` with row stride `ldc`, all valid;
/// the CPU has AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nt(
    m: usize,
    k: usize,
    a: Mat,
    w: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    cols: (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract; the AVX-512 build runs only
    // where the CPU has AVX-512F.
    unsafe {
        if avx512_active() {
            nt_avx512(m, k, a, w, c, ldc, acc, cols)
        } else {
            nt_avx2(m, k, a, w, c, ldc, acc, cols)
        }
    }
}

/// Lanes of an AVX-512 register.
const L16: usize = 16;

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

/// [`nt`] with AVX-512 (16 lanes, 32 registers): tiles of 4 rows of A by 6 rows of W,
/// 24 accumulators, so each vector of A read from L2 feeds 6 FMAs (AVX2's 4×3 tile
/// feeds 3).
///
/// # Safety
/// As [`nt`], and the CPU has AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn nt_avx512(
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

/// `C[i, j] (+)= Σ_p A[i, p]·B[p, j]` for the output columns `j0..j1`, B `[k, n]`
/// row-major: B's rows are streamed whole (broadcast form), which suits a short
/// reduction (an image's 50 tokens, a head's 64 rows of a weight) whose B block stays in
/// cache; over a long one the AVX-512 build takes B in chunks of rows. Each element is one
/// `fma` chain over `p` in order (then added to C when `acc`), whatever the tile or the
/// column range, on AVX-512 (where [`avx512_active`] says so, or A is not row-major) as
/// on AVX2: the same bits.
///
/// # Safety
/// A covers `[m, k]`, B `[k, j1]`, C `[m, ≥ j1]` with row stride `ldc`, all valid; the
/// CPU has AVX2 and FMA, and AVX-512F unless A is row-major (`a.cs == 1`) and
/// [`avx512_active`] is false.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn nn(
    m: usize,
    k: usize,
    a: Mat2,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    cols: (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract; the AVX2 build gets a
    // row-major A, the AVX-512 build runs only where the caller says the CPU has it.
    unsafe {
        if a.cs != 1 || avx512_active() {
            nn_avx512(m, k, a, b, c, ldc, acc, cols)
        } else {
            let a = Mat {
                ptr: a.ptr,
                ld: a.rs,
            };
            nn_avx2(m, k, a, b, c, ldc, acc, cols)
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
unsafe fn nn_avx2(
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

/// A read-only matrix with both strides (elements): element `(i, p)` at
/// `ptr + i·rs + p·cs` (a row-major A has `cs = 1`, a transposed one `rs = 1`).
#[derive(Clone, Copy)]
pub(crate) struct Mat2 {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: as for `Mat`.
unsafe impl Send for Mat2 {}
unsafe impl Sync for Mat2 {}

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
/// `acc` in a per-thread copy) and taken up again by the next chunk, whose rows are
/// asked for meanwhile. A chunk of a weight's rows is contiguous in memory, so it is
/// streamed in order and sits in L2 without conflicts, where a 64-column block over all
/// of a long reduction is a column strip of rows kilobytes apart: `c_proj`'s rows, 12 KiB
/// apart, put such a strip's lines in a few cache sets and a page each, and copying it
/// to a packed block before its tiles (the previous build) took half the product's time.
///
/// # Safety
/// A covers `[m, k]` and B `[k, j1]` (row stride `b.ld`), C `[m, ≥ j1]` (row stride
/// `ldc`), all valid; the CPU has AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn nn_avx512(
    m: usize,
    k: usize,
    a: Mat2,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    (j0, j1): (usize, usize),
) {
    let width = j1 - j0;
    // Partial chains between chunks: in C's own block, or, when C is added to, in a
    // per-thread copy taken out of the thread's slot for the call.
    let in_copy = k > KC && acc;
    let mut copy = if in_copy { PARTIAL.take() } else { Vec::new() };
    copy.resize(if in_copy { m * width } else { 0 }, 0.0);
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
    if in_copy {
        PARTIAL.set(copy);
    }
}

/// Rows of B per chunk of [`nn_avx512`]'s reduction: 64 rows of `c_proj` are 768 KiB
/// (384 KiB for each of two threads' column halves), which stay in L2 with the partial
/// chains while every tile of the columns takes them.
const KC: usize = 64;

thread_local! {
    /// [`nn_avx512`]'s partial chains when C is added to, kept from call to call.
    static PARTIAL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sines(len: usize, f: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * f).sin()).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Whether the AVX-512 builds can run here (logging which, or why not, for `test`).
    fn have_avx512(test: &str) -> bool {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma");
        if ok {
            anytime_testkit::skip::ran(test, "thin GEMM AVX-512 builds");
        } else {
            let why = "thin GEMM AVX-512 builds: this CPU lacks AVX-512F";
            anytime_testkit::skip::not_here(test, why);
        }
        ok
    }

    /// Whether the AVX2 builds can run here (logging which, or why not, for `test`).
    fn have_avx2(test: &str) -> bool {
        let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if ok {
            anytime_testkit::skip::ran(test, "thin GEMM AVX2+FMA builds");
        } else {
            let why =
                "thin GEMM AVX2+FMA builds: this CPU lacks AVX2 or FMA (the kernel never runs)";
            anytime_testkit::skip::not_here(test, why);
        }
        ok
    }

    /// The AVX2 broadcast form against a plain loop (f32 rounding), for A row-major with
    /// row, column and reduction tails, accumulating or not: the baseline the AVX-512
    /// build is compared with bit for bit below.
    #[test]
    fn thin_avx2_broadcast_matches_a_plain_loop() {
        if !have_avx2("thin_avx2_broadcast_matches_a_plain_loop") {
            return;
        }
        for (m, k, n) in [
            (12, 50, 768),
            (13, 64, 50),
            (7, 3, 33),
            (1, 1, 7),
            (6, 12, 65),
        ] {
            let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
            let (a, b, c0) = (
                sines(m * lda, 0.37),
                sines(k * ldb, 0.11),
                sines(m * ldc, 0.05),
            );
            for acc in [false, true] {
                let mut got = c0.clone();
                let (am, bm) = (
                    Mat {
                        ptr: a.as_ptr(),
                        ld: lda,
                    },
                    Mat {
                        ptr: b.as_ptr(),
                        ld: ldb,
                    },
                );
                // SAFETY: the buffers cover the shapes; the CPU has AVX2 and FMA.
                unsafe { nn_avx2(m, k, am, bm, got.as_mut_ptr(), ldc, acc, (0, n)) };
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|p| a[i * lda + p] * b[p * ldb + j]).sum();
                        let base = if acc { c0[i * ldc + j] } else { 0.0 };
                        let g = got[i * ldc + j] - base;
                        assert!(
                            anytime_testkit::close(g, want, 1e-4, 1e-4),
                            "{m}x{k}x{n} acc={acc} ({i},{j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Column ranges covering `0..n`: whole, and split at a tile boundary and off one.
    fn splits(n: usize) -> Vec<Vec<(usize, usize)>> {
        let mut out = vec![vec![(0, n)]];
        for cut in [16, 7] {
            if cut < n {
                out.push(vec![(0, cut), (cut, n)]);
            }
        }
        out
    }

    /// The AVX-512 broadcast form gives the AVX2 build's bits (both one `fma` chain per
    /// element), for A row-major and transposed, with row and column tails, accumulating
    /// or not, however the columns are split.
    #[test]
    fn thin_avx512_broadcast_gives_the_avx2_bits_for_any_strides_and_split() {
        if !have_avx512("thin_avx512_broadcast_gives_the_avx2_bits_for_any_strides_and_split") {
            return;
        }
        for (m, k, n) in [
            (12, 50, 768),
            (13, 64, 50),
            (7, 3, 33),
            (1, 1, 7),
            (6, 12, 65),
            (9, 200, 70),
            (32, 65, 129),
            (4, 128, 80),
        ] {
            let (lda, ldb, ldc) = (k + 2, n + 3, n + 1);
            let a = sines(m * lda, 0.37); // [m, k] row-major
            let mut at = vec![0.0; k * (m + 1)]; // the same A stored transposed, [k, m + 1]
            for i in 0..m {
                for p in 0..k {
                    at[p * (m + 1) + i] = a[i * lda + p];
                }
            }
            let b = sines(k * ldb, 0.11);
            let c0 = sines(m * ldc, 0.05);
            let bm = Mat {
                ptr: b.as_ptr(),
                ld: ldb,
            };
            for acc in [false, true] {
                let mut want = c0.clone();
                let am = Mat {
                    ptr: a.as_ptr(),
                    ld: lda,
                };
                // SAFETY: the buffers cover the shapes; the CPU has AVX2 and FMA.
                unsafe { nn_avx2(m, k, am, bm, want.as_mut_ptr(), ldc, acc, (0, n)) };
                let forms = [
                    Mat2 {
                        ptr: a.as_ptr(),
                        rs: lda,
                        cs: 1,
                    },
                    Mat2 {
                        ptr: at.as_ptr(),
                        rs: 1,
                        cs: m + 1,
                    },
                ];
                for a2 in forms {
                    for parts in splits(n) {
                        let mut got = c0.clone();
                        for cols in parts {
                            // SAFETY: as above, and the CPU has AVX-512F.
                            unsafe { nn_avx512(m, k, a2, bm, got.as_mut_ptr(), ldc, acc, cols) };
                        }
                        assert_eq!(bits(&got), bits(&want), "{m}x{k}x{n} acc={acc}");
                    }
                }
            }
        }
    }

    /// Both builds of the dot form against a plain loop (f32 rounding), and
    /// bit-identical however the output columns are split, with row, column and
    /// reduction tails (k mod 16 ≠ 0); the AVX-512 build where the CPU has it.
    #[test]
    fn thin_dot_form_builds_match_a_plain_loop_for_any_split() {
        const TEST: &str = "thin_dot_form_builds_match_a_plain_loop_for_any_split";
        if !have_avx2(TEST) {
            return;
        }
        type Build = unsafe fn(usize, usize, Mat, Mat, *mut f32, usize, bool, (usize, usize));
        let mut builds: Vec<(&str, Build)> = vec![("AVX2", nt_avx2)];
        if have_avx512(TEST) {
            builds.push(("AVX-512", nt_avx512));
        }
        for (name, build) in builds {
            for (m, k, n) in [
                (13, 77, 50),
                (4, 9, 31),
                (32, 768, 70),
                (1, 16, 7),
                (5, 33, 6),
            ] {
                let (lda, ldw, ldc) = (k + 2, k + 1, n + 1);
                let (a, w) = (sines(m * lda, 0.37), sines(n * ldw, 0.11));
                let c0 = sines(m * ldc, 0.05);
                let (am, wm) = (
                    Mat {
                        ptr: a.as_ptr(),
                        ld: lda,
                    },
                    Mat {
                        ptr: w.as_ptr(),
                        ld: ldw,
                    },
                );
                for acc in [false, true] {
                    let mut first: Option<Vec<f32>> = None;
                    for parts in splits(n) {
                        let mut got = c0.clone();
                        for cols in parts {
                            // SAFETY: the buffers cover the shapes; the CPU has the build's
                            // instructions.
                            unsafe { build(m, k, am, wm, got.as_mut_ptr(), ldc, acc, cols) };
                        }
                        match &first {
                            Some(f) => assert_eq!(bits(&got), bits(f), "{name} {m}x{k}x{n}: split"),
                            None => first = Some(got),
                        }
                    }
                    let got = first.unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let want: f32 = (0..k).map(|p| a[i * lda + p] * w[j * ldw + p]).sum();
                            let base = if acc { c0[i * ldc + j] } else { 0.0 };
                            let g = got[i * ldc + j] - base;
                            assert!(
                                anytime_testkit::close(g, want, 1e-4, 1e-4),
                                "{name} {m}x{k}x{n} acc={acc} ({i},{j}): {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
