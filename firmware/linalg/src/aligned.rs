//! [`AlignedVec`]: a growable `f32` buffer that starts on a 64-byte cache line, so that the
//! kernels' 64-byte (AVX-512) and 32-byte (AVX2) loads never straddle two lines, and a
//! buffer of [`HUGE`] bytes or more on a 2 MiB boundary, so that transparent huge pages can
//! back all of it but its tail.
//!
//! [`Placement::PastLine`] puts a buffer 16 bytes past a line instead (where `malloc` puts
//! a large block), for same-run comparisons.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;

/// A cache line, in bytes.
pub const LINE: usize = 64;

/// A transparent huge page (x86-64, and arm64 with 4 KiB pages), in bytes.
pub const HUGE: usize = 2 << 20;

/// Where a buffer starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// On a cache line (and on a 2 MiB boundary when it is at least [`HUGE`] bytes).
    #[default]
    Line,
    /// 16 bytes past such a boundary, as `malloc` places large blocks.
    PastLine,
}

/// Bytes past the boundary of a [`Placement::PastLine`] buffer.
const PAST: usize = 16;

/// A `Vec<f32>`-like buffer placed as its [`Placement`] says (see the module doc).
pub struct AlignedVec {
    /// The first element (dangling while nothing is allocated).
    ptr: NonNull<f32>,
    len: usize,
    /// Elements allocated.
    cap: usize,
    placement: Placement,
}

// SAFETY: an `AlignedVec` owns its elements as a `Vec<f32>` does; `&AlignedVec` gives
// only shared access to them.
unsafe impl Send for AlignedVec {}
unsafe impl Sync for AlignedVec {}

impl AlignedVec {
    /// An empty buffer on a line (nothing allocated).
    pub const fn new() -> Self {
        Self::empty(Placement::Line)
    }

    /// An empty buffer with this placement (nothing allocated).
    pub const fn empty(placement: Placement) -> Self {
        AlignedVec {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
            placement,
        }
    }

    /// `len` zeros on a line.
    pub fn zeros(len: usize) -> Self {
        Self::zeros_placed(len, Placement::Line)
    }

    /// `len` zeros with this placement; a large buffer is zeroed by the rayon pool (its
    /// pages are first touched, and faulted in, by every thread, not one).
    pub fn zeros_placed(len: usize, placement: Placement) -> Self {
        /// Elements zeroed per parallel task.
        const PART: usize = 1 << 16;
        let mut v = Self::empty(placement);
        v.reserve_exact(len);
        let base = v.ptr.as_ptr() as usize;
        let zero = |lo: usize, hi: usize| {
            // SAFETY: `lo..hi` lies inside the `len` elements just allocated, and the
            // parts are disjoint; bytes are written, never read.
            unsafe { std::ptr::write_bytes((base as *mut f32).add(lo), 0, hi - lo) }
        };
        if len < 2 * PART {
            zero(0, len);
        } else {
            use rayon::prelude::*;
            (0..len.div_ceil(PART))
                .into_par_iter()
                .for_each(|i| zero(i * PART, ((i + 1) * PART).min(len)));
        }
        v.len = len;
        v
    }

    /// A copy of `x` with this placement.
    pub fn from_slice_placed(x: &[f32], placement: Placement) -> Self {
        let mut v = Self::empty(placement);
        v.reserve_exact(x.len());
        v.len = x.len();
        v.copy_from_slice(x);
        v
    }

    /// Where the buffer starts.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The same elements with another placement (a copy when it differs).
    pub fn placed(self, placement: Placement) -> Self {
        if placement == self.placement {
            self
        } else {
            Self::from_slice_placed(&self, placement)
        }
    }

    /// Sets the length to `len`, new elements `value`; keeps the placement.
    pub fn resize(&mut self, len: usize, value: f32) {
        if len > self.len {
            self.reserve_exact(len);
            // SAFETY: `cap >= len` after the reserve; the elements `self.len..len` are
            // allocated and written before they are read.
            unsafe {
                let tail =
                    std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), len - self.len);
                tail.fill(value);
            }
        }
        self.len = len;
    }

    /// An empty buffer on a line with room for `cap` elements.
    pub fn with_capacity(cap: usize) -> Self {
        let mut v = Self::new();
        v.reserve_exact(cap);
        v
    }

    /// Appends `x` (growing the allocation at least twofold when it is full).
    pub fn extend_from_slice(&mut self, x: &[f32]) {
        let len = self.len + x.len();
        if len > self.cap {
            self.reserve_exact(len.max(2 * self.cap));
        }
        // SAFETY: `cap >= len`: the elements `self.len..len` are allocated, and `x` is
        // not inside this buffer (`&mut self` is unique).
        unsafe {
            let dst = self.ptr.as_ptr().add(self.len);
            std::ptr::copy_nonoverlapping(x.as_ptr(), dst, x.len());
        }
        self.len = len;
    }

    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Elements allocated.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Room for `cap` elements (a new allocation, the elements copied, when there is not).
    fn reserve_exact(&mut self, cap: usize) {
        if cap <= self.cap {
            return;
        }
        let (layout, offset) = layout_of(cap, self.placement);
        // SAFETY: `layout` has a non-zero size (cap > 0).
        let base = unsafe { alloc::alloc(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: the block is `offset + cap·4` bytes or longer, and `offset` keeps the
        // f32 alignment; the old elements are valid and the blocks do not overlap.
        let ptr = unsafe {
            let ptr = base.add(offset).cast::<f32>();
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), ptr, self.len);
            NonNull::new_unchecked(ptr)
        };
        self.free();
        (self.ptr, self.cap) = (ptr, cap);
    }

    /// Gives the allocation back (nothing when there is none).
    fn free(&mut self) {
        if self.cap > 0 {
            let (layout, offset) = layout_of(self.cap, self.placement);
            // SAFETY: the block was allocated by `reserve_exact` with this layout, and
            // `ptr - offset` is what `alloc` returned.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast::<u8>().sub(offset), layout) };
        }
    }
}

/// The allocation of `cap` elements placed as `placement` says, and the offset of the
/// first element in it.
fn layout_of(cap: usize, placement: Placement) -> (Layout, usize) {
    let bytes = cap.checked_mul(4).expect("AlignedVec: capacity overflow");
    let align = if bytes >= HUGE { HUGE } else { LINE };
    let (size, offset) = match placement {
        Placement::Line => (bytes, 0),
        Placement::PastLine => (bytes + LINE, PAST),
    };
    let layout = Layout::from_size_align(size, align).expect("AlignedVec: size overflow");
    (layout, offset)
}

impl Drop for AlignedVec {
    fn drop(&mut self) {
        self.free();
    }
}

impl Default for AlignedVec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr` is valid for `len` initialised elements (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedVec {
    /// The same elements and placement.
    fn clone(&self) -> Self {
        Self::from_slice_placed(self, self.placement)
    }
}

impl PartialEq for AlignedVec {
    /// Equal elements (placement aside), as `[f32]`'s `==` (NaN unequal).
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<'a> IntoIterator for &'a AlignedVec {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut AlignedVec {
    type Item = &'a mut f32;
    type IntoIter = std::slice::IterMut<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl From<&[f32]> for AlignedVec {
    fn from(x: &[f32]) -> Self {
        Self::from_slice_placed(x, Placement::Line)
    }
}

impl From<Vec<f32>> for AlignedVec {
    fn from(x: Vec<f32>) -> Self {
        Self::from(&x[..])
    }
}

impl FromIterator<f32> for AlignedVec {
    fn from_iter<I: IntoIterator<Item = f32>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<f32>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `v`'s first element sits past a line, and past a 2 MiB boundary.
    fn offsets(v: &AlignedVec) -> (usize, usize) {
        let at = v.as_ptr() as usize;
        (at % LINE, at % HUGE)
    }

    #[test]
    fn buffers_start_where_their_placement_says_and_keep_their_elements() {
        for placement in [Placement::Line, Placement::PastLine] {
            let past = if placement == Placement::Line {
                0
            } else {
                PAST
            };
            for len in [1usize, 15, 1000, (HUGE / 4) + 3] {
                let mut v = AlignedVec::zeros_placed(len, placement);
                assert_eq!(offsets(&v).0, past, "{len} floats, {placement:?}");
                if len * 4 >= HUGE {
                    assert_eq!(offsets(&v).1, past, "{len} floats on a huge page");
                }
                assert!(v.iter().all(|&x| x == 0.0));
                v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
                v.resize(3 * len, -1.0);
                assert_eq!(offsets(&v).0, past);
                assert!((0..len).all(|i| v[i] == i as f32) && v[len..].iter().all(|&x| x == -1.0));
                let w = v.clone();
                assert_eq!((w.placement(), offsets(&w).0), (placement, past));
                assert_eq!(w, v);
                v.resize(len / 2, 0.0);
                assert_eq!(v.len(), len / 2);
                let moved = w.placed(Placement::Line);
                assert_eq!(offsets(&moved).0, 0);
                assert_eq!(moved.len(), 3 * len);
            }
        }
    }

    #[test]
    fn an_empty_buffer_allocates_nothing_and_converts_both_ways() {
        let mut v = AlignedVec::new();
        assert!(v.is_empty());
        v.clear();
        assert_eq!(AlignedVec::from(vec![1.0, 2.0])[..], [1.0, 2.0]);
        let mut c: AlignedVec = (0..5).map(|i| i as f32).collect();
        assert_eq!(c.to_vec(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        c.extend_from_slice(&[5.0; 3000]);
        c.extend_from_slice(&[6.0]);
        assert_eq!(
            (c.len(), c[4], c[5], c[3004], c[3005]),
            (3006, 4.0, 5.0, 5.0, 6.0)
        );
        assert_eq!(c.as_ptr() as usize % LINE, 0);
        let mut d = AlignedVec::with_capacity(10);
        assert!(d.is_empty() && d.capacity() == 10);
        d.extend_from_slice(&[1.0; 10]);
        assert_eq!(d.capacity(), 10);
        assert_eq!(format!("{:?}", AlignedVec::from(&[0.5f32][..])), "[0.5]");
    }
}
