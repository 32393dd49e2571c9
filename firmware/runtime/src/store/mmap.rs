//! A memory-mapped file as [`Flash`]: erase fills with `0xFF`, writes AND bytes in (NOR
//! semantics), `flush` syncs the dirty range to disk before an append is acknowledged.

use std::fs::File;
use std::path::Path;

use anytime_core::flash::Flash;
use anytime_core::Error;
use memmap2::MmapMut;

/// Erase unit of the file backend (a page).
pub const FILE_ERASE_SIZE: u32 = 4096;

/// A store file mapped read-write.
#[derive(Debug)]
pub struct MmapFlash {
    map: MmapMut,
    _file: File,
    /// Byte range written since the last flush.
    dirty: Option<(usize, usize)>,
    /// Whether `flush` syncs to disk (off: writes reach the file when the OS writes them).
    sync: bool,
}

impl MmapFlash {
    /// Maps `file` (already sized, at most 4 GiB, not empty).
    ///
    /// The mapping assumes that no other process changes the file while it is open; the
    /// store is single-writer by design.
    pub fn map(file: File) -> std::io::Result<Self> {
        // SAFETY: the map is only read and written through this type's bounds-checked methods;
        // concurrent modification of the file by another process is excluded by contract (see
        // above), which is the condition memmap2 needs.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(MmapFlash {
            map,
            _file: file,
            dirty: None,
            sync: true,
        })
    }

    /// Creates (or truncates) `path` with `len` bytes, its disk blocks reserved where the
    /// OS allows (so that a full disk is this error, not a `SIGBUS` at a later write), and
    /// maps it.
    pub fn create(path: &Path, len: u64) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(len)?;
        reserve(&file, len)?;
        Self::map(file)
    }

    /// Syncs the file's data and size to disk.
    pub fn sync_file(&mut self) -> std::io::Result<()> {
        self.map.flush()?;
        self._file.sync_all()
    }

    /// Sync every flush to disk (the default), or leave writes to the OS.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, Error> {
        let start = offset as usize;
        let end = start.checked_add(len).filter(|&e| e <= self.map.len());
        match end {
            Some(end) => Ok(start..end),
            None => Err(Error::OutOfBounds {
                offset,
                len: len.min(u32::MAX as usize) as u32,
            }),
        }
    }

    fn touch(&mut self, r: &std::ops::Range<usize>) {
        self.dirty = Some(match self.dirty {
            None => (r.start, r.end),
            Some((a, b)) => (a.min(r.start), b.max(r.end)),
        });
    }
}

impl Flash for MmapFlash {
    fn capacity(&self) -> u32 {
        self.map.len().min(u32::MAX as usize) as u32
    }

    fn erase_size(&self) -> u32 {
        FILE_ERASE_SIZE
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.map[r]);
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        let r = self.range(offset, data.len())?;
        for (m, &d) in self.map[r.clone()].iter_mut().zip(data) {
            *m &= d;
        }
        self.touch(&r);
        Ok(())
    }

    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Error> {
        if !offset.is_multiple_of(FILE_ERASE_SIZE) || !len.is_multiple_of(FILE_ERASE_SIZE) {
            return Err(Error::OutOfBounds { offset, len });
        }
        let r = self.range(offset, len as usize)?;
        self.map[r.clone()].fill(0xFF);
        self.touch(&r);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if !self.sync {
            self.dirty = None;
            return Ok(());
        }
        if let Some((a, b)) = self.dirty.take() {
            if let Err(e) = self.map.flush_range(a, b - a) {
                log::error!("store: msync failed: {e}");
                self.dirty = Some((a, b));
                return Err(Error::FlashFailure);
            }
        }
        Ok(())
    }
}

/// Reserves the disk blocks of the first `len` bytes of `file`.
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain system call on a file descriptor this function borrows.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: the blocks come at the first write.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Reserves the disk blocks of the first `len` bytes of `file`: by writing them where the
/// OS offers no call for it.
#[cfg(not(target_os = "linux"))]
fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(0))?;
    let chunk = vec![0xFFu8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}
