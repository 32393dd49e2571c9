//! Storage for the ring's in-memory tables: a fixed `heapless::Vec` on a microcontroller, a
//! growable `Vec` with std.

/// A list the ring keeps its index and label table in.
pub trait Slots<T: Copy> {
    /// The entries.
    fn as_slice(&self) -> &[T];
    /// The entries, mutable.
    fn as_mut_slice(&mut self) -> &mut [T];
    /// Appends; hands the value back when full.
    fn try_push(&mut self, v: T) -> Result<(), T>;
    /// Removes entry `i` (`i < len`), shifting the rest down.
    fn remove_at(&mut self, i: usize) -> T;
    /// Removes every entry.
    fn clear_all(&mut self);
    /// Most entries it can hold.
    fn max_len(&self) -> usize;
}

impl<T: Copy, const N: usize> Slots<T> for heapless::Vec<T, N> {
    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_push(&mut self, v: T) -> Result<(), T> {
        self.push(v)
    }
    fn remove_at(&mut self, i: usize) -> T {
        self.remove(i)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
    fn max_len(&self) -> usize {
        N
    }
}

#[cfg(any(test, feature = "std"))]
impl<T: Copy> Slots<T> for std::vec::Vec<T> {
    fn as_slice(&self) -> &[T] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        self
    }
    fn try_push(&mut self, v: T) -> Result<(), T> {
        self.push(v);
        Ok(())
    }
    fn remove_at(&mut self, i: usize) -> T {
        self.remove(i)
    }
    fn clear_all(&mut self) {
        self.clear()
    }
    fn max_len(&self) -> usize {
        usize::MAX
    }
}
