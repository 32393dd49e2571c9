//! An in-memory NOR flash model for tests: erase to `0xFF`, writes only clear bits (checked),
//! and a power cut after any number of programmed or erased bytes.

use crate::error::Error;
use crate::flash::{check_range, Flash};

/// NOR flash over a caller-owned buffer (`[u8; N]`, `&mut [u8]`, or `Vec<u8>` with std).
///
/// Power cut: with [`MemFlash::cut_after`]`(k)`, the first `k` bytes programmed or erased from
/// then on land, and every later operation (read included) fails with [`Error::FlashFailure`].
/// Writes land byte by byte in address order; an erase proceeds from the first byte of the
/// unit to the last, so a cut leaves an erased prefix.
#[derive(Debug, Clone)]
pub struct MemFlash<B> {
    buf: B,
    erase_size: u32,
    budget: Option<u64>,
    dead: bool,
    strict: bool,
    /// Bytes programmed or erased since creation (counts what a cut can interrupt).
    pub bytes_touched: u64,
    /// Bytes read since creation (how much of the region a scan reads).
    pub bytes_read: u64,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> MemFlash<B> {
    /// A flash over `buf` with the given erase unit. Strict (a write that sets a bit fails).
    pub fn new(buf: B, erase_size: u32) -> Self {
        Self {
            buf,
            erase_size,
            budget: None,
            dead: false,
            strict: true,
            bytes_touched: 0,
            bytes_read: 0,
        }
    }

    /// Cuts power after `bytes` more programmed/erased bytes.
    pub fn cut_after(&mut self, bytes: u64) {
        self.budget = Some(bytes);
    }

    /// Whether the power has been cut.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The raw bytes (for inspection and for bit-flip tests).
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The raw bytes, mutable (to inject bit flips).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// How many of the next `len` programmed/erased bytes land before the power goes; takes
    /// them from the budget and marks the flash dead when the cut falls inside the range.
    fn land(&mut self, len: usize) -> usize {
        let n = match self.budget.as_mut() {
            None => len,
            Some(b) => {
                let n = (*b).min(len as u64) as usize;
                *b -= n as u64;
                n
            }
        };
        if n < len {
            self.dead = true;
        }
        self.bytes_touched += n as u64;
        n
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Flash for MemFlash<B> {
    fn capacity(&self) -> u32 {
        self.buf.as_ref().len().min(u32::MAX as usize) as u32
    }

    fn erase_size(&self) -> u32 {
        self.erase_size
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        if self.dead {
            return Err(Error::FlashFailure);
        }
        check_range(self.capacity(), offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.buf.as_ref()[o..o + buf.len()]);
        self.bytes_read += buf.len() as u64;
        Ok(())
    }

    // `while` loops rather than iterators: the soak and power-cut tests run this millions of
    // times in unoptimised builds (and under qemu), where every iterator step is a call.
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        if self.dead {
            return Err(Error::FlashFailure);
        }
        check_range(self.capacity(), offset, data.len())?;
        let o = offset as usize;
        if self.strict {
            let cur = &self.buf.as_ref()[o..o + data.len()];
            let mut i = 0;
            while i < data.len() {
                if data[i] & !cur[i] != 0 {
                    return Err(Error::NorViolation {
                        offset: offset + i as u32,
                    });
                }
                i += 1;
            }
        }
        // Bytes land in address order until the power goes.
        let n = self.land(data.len());
        let dst = &mut self.buf.as_mut()[o..o + n];
        let mut i = 0;
        while i < n {
            dst[i] &= data[i];
            i += 1;
        }
        if n < data.len() {
            return Err(Error::FlashFailure);
        }
        Ok(())
    }

    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Error> {
        if self.dead {
            return Err(Error::FlashFailure);
        }
        if !offset.is_multiple_of(self.erase_size) || !len.is_multiple_of(self.erase_size) {
            return Err(Error::OutOfBounds { offset, len });
        }
        check_range(self.capacity(), offset, len as usize)?;
        // From the first byte of the unit to the last, until the power goes.
        let n = self.land(len as usize);
        let o = offset as usize;
        self.buf.as_mut()[o..o + n].fill(0xFF);
        if n < len as usize {
            return Err(Error::FlashFailure);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.dead {
            return Err(Error::FlashFailure);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nor_rules_and_power_cut() {
        let mut f = MemFlash::new([0xFFu8; 64], 16);
        f.write(0, &[0x0F, 0xF0]).unwrap();
        assert_eq!(f.write(0, &[0xFF]), Err(Error::NorViolation { offset: 0 }));
        f.write(0, &[0x0E]).unwrap();
        f.erase(0, 16).unwrap();
        assert_eq!(f.bytes()[0], 0xFF);
        f.cut_after(3);
        assert_eq!(f.write(16, &[0; 8]), Err(Error::FlashFailure));
        assert_eq!(&f.bytes()[16..20], &[0, 0, 0, 0xFF]);
        let mut b = [0u8; 1];
        assert_eq!(f.read(0, &mut b), Err(Error::FlashFailure));
    }

    #[test]
    fn a_flip_through_bytes_mut_is_what_the_flash_reads() {
        let mut f = MemFlash::new([0xFFu8; 64], 16);
        f.write(8, &[0x5A; 4]).unwrap();
        assert_eq!(f.bytes_mut().len(), 64, "the whole image");
        f.bytes_mut()[9] ^= 0x01;
        f.bytes_mut()[63] = 0x00;
        let mut b = [0u8; 4];
        f.read(8, &mut b).unwrap();
        assert_eq!(b, [0x5A, 0x5B, 0x5A, 0x5A]);
        f.read(60, &mut b).unwrap();
        assert_eq!(b, [0xFF, 0xFF, 0xFF, 0x00]);
    }

    #[test]
    fn geometry_bounds_and_alignment_are_checked() {
        let mut f = MemFlash::new([0xFFu8; 64], 16);
        assert_eq!((f.capacity(), f.erase_size()), (64, 16));
        let mut b = [0u8; 8];
        let oob = Err(Error::OutOfBounds { offset: 60, len: 8 });
        assert_eq!(f.read(60, &mut b), oob);
        assert_eq!(f.write(60, &[0; 8]), oob);
        assert_eq!(f.read(56, &mut b), Ok(()));
        assert_eq!(f.bytes_read, 8, "refused reads count nothing");
        assert_eq!(
            f.erase(48, 32),
            Err(Error::OutOfBounds {
                offset: 48,
                len: 32
            })
        );
        // Misaligned offset or length, each alone.
        assert_eq!(
            f.erase(8, 16),
            Err(Error::OutOfBounds { offset: 8, len: 16 })
        );
        assert_eq!(
            f.erase(16, 8),
            Err(Error::OutOfBounds { offset: 16, len: 8 })
        );
        assert_eq!(f.bytes(), &[0xFF; 64], "a refused access changes nothing");
        // A violation is reported at its own address, not the write's.
        f.write(20, &[0xF0; 4]).unwrap();
        assert_eq!(
            f.write(18, &[0x00, 0x00, 0x0F, 0x00]),
            Err(Error::NorViolation { offset: 20 })
        );
        assert_eq!(
            &f.bytes()[18..20],
            &[0xFF, 0xFF],
            "a refused write lands nothing"
        );
    }

    #[test]
    fn a_cut_inside_an_erase_leaves_an_erased_prefix_and_kills_the_flash() {
        let mut f = MemFlash::new([0u8; 64], 16);
        assert!(!f.is_dead());
        assert_eq!(f.flush(), Ok(()));
        f.cut_after(5);
        assert_eq!(f.erase(16, 16), Err(Error::FlashFailure));
        assert!(f.is_dead());
        assert_eq!(&f.bytes()[16..22], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0]);
        assert_eq!(f.bytes_touched, 5);
        assert_eq!(f.flush(), Err(Error::FlashFailure));
        assert_eq!(f.write(0, &[0]), Err(Error::FlashFailure));
        assert_eq!(f.erase(0, 16), Err(Error::FlashFailure));
        // A cut that falls exactly at the end of an erase lets it complete.
        let mut f = MemFlash::new([0u8; 32], 16);
        f.cut_after(16);
        assert_eq!(f.erase(0, 16), Ok(()));
        assert!(!f.is_dead());
        assert_eq!(f.write(0, &[0]), Err(Error::FlashFailure));
        assert!(f.is_dead());
    }
}
