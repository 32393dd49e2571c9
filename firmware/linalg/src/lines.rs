//! A global allocator that starts every large block on a 64-byte cache line.
//!
//! The block's kernels read their operands with 64-byte AVX-512 loads (and 32-byte AVX2
//! ones), straight from the arrays they are given: the thin GEMM streams a weight from
//! its row-major storage, AdamW the weights and both moments. glibc's `malloc` puts a
//! large block 16 bytes past a page boundary (and a smaller one anywhere on 16 bytes),
//! so such a load straddles two lines, and every one of them costs two. This allocator
//! puts every array of at least [`LARGE`] bytes on a line (`bench-train` compares both in
//! one run; history in `docs/perf-log.md`).
//!
//! Blocks of [`HUGE`] bytes or more start on a 2 MiB boundary as well.
//!
//! The binaries install it (`#[global_allocator]`); a library cannot choose the
//! process's allocator, so the kernels stay correct, only slower, without it.
//! [`set_line_aligned`] puts new large blocks 16 bytes past a line instead, as `malloc`
//! does, so that a benchmark can compare both in one process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks of at least this many bytes (with an alignment of at most 16) start on a line.
pub const LARGE: usize = 4096;

/// A cache line.
const LINE: usize = 64;

/// A transparent huge page (x86-64, and arm64 with 4 KiB pages): blocks at least this
/// large start on one, so that huge pages can back all of such a block but its tail
/// (the CPU path asks for them under its weights and moments), where a block placed
/// anywhere loses up to a huge page at each end.
pub const HUGE: usize = 2 << 20;

/// Where an unaligned block starts past its line (where `malloc` puts its mmap'd ones).
const OFFSET: usize = 16;

static ALIGNED: AtomicBool = AtomicBool::new(true);

/// Whether new large blocks start on a line (the default) or [`OFFSET`] bytes past one,
/// for same-run comparisons; blocks already allocated keep their place, and are freed
/// correctly either way.
pub fn set_line_aligned(on: bool) {
    ALIGNED.store(on, Ordering::Relaxed);
}

/// The system allocator, with large blocks on cache lines (see the module doc).
pub struct CacheLineAlloc;

/// Whether `layout` is a block this allocator places (large, and asking for no more
/// alignment than `malloc` gives anyway).
fn placed(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= OFFSET
}

/// The layout asked of the system for a placed block of `size` bytes, and the offset of
/// the block in it: on a line, or [`OFFSET`] past one (in a block one line longer); a
/// block of [`HUGE`] bytes or more starts on (or just past) a 2 MiB boundary.
fn system_layout(size: usize, aligned: bool) -> Option<(Layout, usize)> {
    let align = if size >= HUGE { HUGE } else { LINE };
    let (size, offset) = if aligned {
        (size, 0)
    } else {
        (size.checked_add(LINE)?, OFFSET)
    };
    Layout::from_size_align(size, align)
        .ok()
        .map(|l| (l, offset))
}

// SAFETY: every block is one the system allocator gave, with the layout that it is
// given back with: a placed block's pointer says which of the two layouts it had (on a
// line, or `OFFSET` past one), the others go through unchanged.
unsafe impl GlobalAlloc for CacheLineAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` has a non-zero size (the caller's contract), and so do the
        // layouts made from it.
        unsafe { place(layout, |l| System.alloc(l)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { place(layout, |l| System.alloc_zeroed(l)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !placed(&layout) {
            // SAFETY: the block came from `System` with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        let aligned = (ptr as usize).is_multiple_of(LINE);
        let Some((sys, offset)) = system_layout(layout.size(), aligned) else {
            unreachable!("a placed block was allocated with this layout")
        };
        // SAFETY: the block was allocated by `place` with `aligned` as its pointer says,
        // so `ptr - offset` is what `System` returned for `sys`.
        unsafe { System.dealloc(ptr.sub(offset), sys) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and, rounded to the alignment, does not
        // overflow (the caller's contract).
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !placed(&layout) && !placed(&new) {
            // SAFETY: the block came from `System` with `layout`.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new` is a valid layout of non-zero size; the old block is valid for
        // `layout.size()` bytes and the new one for `new_size`, and they do not overlap.
        unsafe {
            let out = self.alloc(new);
            if !out.is_null() {
                std::ptr::copy_nonoverlapping(ptr, out, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            out
        }
    }
}

/// Allocates `layout` with `sys_alloc`: a placed block on a line, or past one when
/// [`set_line_aligned`] is off.
///
/// # Safety
/// `layout` has a non-zero size; `sys_alloc` is `System`'s `alloc` or `alloc_zeroed`.
unsafe fn place(layout: Layout, sys_alloc: impl Fn(Layout) -> *mut u8) -> *mut u8 {
    if !placed(&layout) {
        return sys_alloc(layout);
    }
    let Some((sys, offset)) = system_layout(layout.size(), ALIGNED.load(Ordering::Relaxed)) else {
        return std::ptr::null_mut();
    };
    let base = sys_alloc(sys);
    if base.is_null() {
        return base;
    }
    // SAFETY: the system block is `offset + layout.size()` bytes or longer.
    unsafe { base.add(offset) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Held by each test while it flips the process-wide switch.
    static SWITCH: Mutex<()> = Mutex::new(());

    /// Allocates `size` bytes (align 4, as a `Vec<f32>` does) with the line switch at
    /// `aligned`, fills them, grows the block past or below [`LARGE`], checks the
    /// contents and where the block starts, and frees it with the switch flipped.
    fn round_trip(size: usize, grown: usize, aligned: bool) {
        let a = CacheLineAlloc;
        let layout = Layout::from_size_align(size, 4).unwrap();
        let _held = SWITCH.lock().unwrap();
        set_line_aligned(aligned);
        // SAFETY: non-zero sizes; every block is used within its length and freed
        // with the layout it has.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let want = |size: usize| match (size >= LARGE, aligned) {
                (false, _) => None,
                (true, true) => Some(0),
                (true, false) => Some(OFFSET),
            };
            if let Some(at) = want(size) {
                assert_eq!(p as usize % LINE, at, "{size} bytes, aligned {aligned}");
            }
            if size >= HUGE {
                assert_eq!(p as usize % HUGE, want(size).unwrap(), "{size} bytes");
            }
            for i in 0..size {
                *p.add(i) = (i % 251) as u8;
            }
            let q = a.realloc(p, layout, grown);
            assert!(!q.is_null());
            if let Some(at) = want(grown) {
                assert_eq!(q as usize % LINE, at, "{grown} bytes, aligned {aligned}");
            }
            for i in 0..size.min(grown) {
                assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} of {size} -> {grown}");
            }
            set_line_aligned(!aligned);
            a.dealloc(q, Layout::from_size_align(grown, 4).unwrap());
            let z = a.alloc_zeroed(Layout::from_size_align(grown, 4).unwrap());
            assert!((0..grown).all(|i| *z.add(i) == 0));
            a.dealloc(z, Layout::from_size_align(grown, 4).unwrap());
        }
        set_line_aligned(true);
    }

    /// Large blocks start on a line (or 16 bytes past one when switched), small ones
    /// wherever `malloc` puts them; contents survive a `realloc` across the threshold
    /// either way, and a block is freed correctly whatever the switch says by then.
    #[test]
    fn large_blocks_start_on_a_line_and_keep_their_contents() {
        for aligned in [true, false] {
            for (size, grown) in [
                (100, 200),
                (100, LARGE + 4),
                (LARGE, 3 * LARGE),
                (5 * LARGE, 200),
                (3 << 20, (3 << 20) + 12),
            ] {
                round_trip(size, grown, aligned);
            }
        }
    }

    /// A block asking for more alignment than 16 bytes is left to the system allocator
    /// with its own layout, whatever the switch says.
    #[test]
    fn over_aligned_blocks_are_left_as_asked() {
        let a = CacheLineAlloc;
        let layout = Layout::from_size_align(2 * LARGE, 32).unwrap();
        let _held = SWITCH.lock().unwrap();
        for aligned in [false, true] {
            set_line_aligned(aligned);
            // SAFETY: a non-zero size, freed with its layout.
            unsafe {
                let p = a.alloc(layout);
                assert_eq!(p as usize % 32, 0);
                a.dealloc(p, layout);
            }
        }
        set_line_aligned(true);
    }
}
