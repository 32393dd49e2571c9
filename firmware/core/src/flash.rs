//! The flash abstraction the ring buffer is written against.

use crate::error::Error;

/// A byte region with NOR flash semantics.
///
/// Contract every backend keeps:
/// - `erase` sets a whole number of erase units to `0xFF`; `offset` and `len` are multiples of
///   [`Flash::erase_size`].
/// - `write` may only clear bits between erases (a backend may check this and return
///   [`Error::NorViolation`], or silently AND the bytes in, as real NOR does).
/// - `flush` returns once everything written or erased before it is durable. The ring calls it
///   before it acknowledges an append.
pub trait Flash {
    /// Size of the region in bytes.
    fn capacity(&self) -> u32;
    /// Size of one erase unit in bytes (a power of two).
    fn erase_size(&self) -> u32;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Error>;
    /// Programs `data` at `offset` (clears bits only).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Error>;
    /// Erases `len` bytes at `offset` to `0xFF`.
    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Error>;
    /// Makes everything done so far durable.
    fn flush(&mut self) -> Result<(), Error>;
}

/// Checks that `offset..offset+len` lies inside a region of `capacity` bytes.
pub(crate) fn check_range(capacity: u32, offset: u32, len: usize) -> Result<(), Error> {
    let end = offset as u64 + len as u64;
    if end > capacity as u64 {
        return Err(Error::OutOfBounds {
            offset,
            len: len.min(u32::MAX as usize) as u32,
        });
    }
    Ok(())
}
