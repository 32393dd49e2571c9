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

#[cfg(test)]
mod tests {
    use super::Slots;

    /// The trait's contract, on any implementation with room for 3 entries or more.
    fn check<S: Slots<u32>>(mut s: S, max: usize) {
        assert_eq!(s.max_len(), max);
        for v in [10, 20, 30] {
            assert_eq!(s.try_push(v), Ok(()));
        }
        assert_eq!(s.as_slice(), &[10, 20, 30]);
        s.as_mut_slice()[1] = 21;
        assert_eq!(s.remove_at(0), 10);
        assert_eq!(s.as_slice(), &[21, 30]);
        s.clear_all();
        assert!(s.as_slice().is_empty());
        assert_eq!(s.try_push(5), Ok(()));
        assert_eq!(s.as_slice(), &[5]);
    }

    #[test]
    fn both_tables_keep_the_contract() {
        check(heapless::Vec::<u32, 3>::new(), 3);
        check(std::vec::Vec::<u32>::new(), usize::MAX);
        let mut full = heapless::Vec::<u32, 1>::new();
        assert_eq!(full.try_push(1), Ok(()));
        assert_eq!(
            full.try_push(2),
            Err(2),
            "a full table hands the value back"
        );
        assert_eq!(Slots::as_slice(&full), &[1]);
    }
}
