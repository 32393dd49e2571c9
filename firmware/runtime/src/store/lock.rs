//! Who may use a store file at the same time: one writer, held for the writer's life by an
//! OS lock on the file `<store>.lock` beside it (which names the holder), and any number of
//! readers. A reader copies the store under a shared lock on the store file itself, which
//! the writer takes exclusively around every change, so a copy is never torn.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// The lock file of the store at `store`: `<store>.lock`.
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    store.with_file_name(name)
}

/// The writer's lock on a store, released when dropped (or when the process ends).
#[derive(Debug)]
pub(crate) struct WriterLock {
    file: File,
}

impl WriterLock {
    /// Takes the writer's lock of the store at `store`, or says who holds it.
    pub(crate) fn acquire(store: &Path) -> Result<Self, StoreError> {
        let path = lock_path(store);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&file).take(512).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    path: store.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Name the holder for whoever is refused (best effort: the lock is what counts).
        let args: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut command = args.join(" ");
        if command.len() > 300 {
            let mut end = 300;
            while !command.is_char_boundary(end) {
                end -= 1;
            }
            command.truncate(end);
            command.push('…');
        }
        let _ = file
            .set_len(0)
            .and_then(|()| write!(file, "pid {} ({command})", std::process::id()));
        Ok(WriterLock { file })
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// A shared lock on a store file, held while a reader copies it (and whatever must be read
/// with it, e.g. the learner's tuned weights); released when dropped.
#[derive(Debug)]
pub struct ReadLock {
    file: File,
}

impl ReadLock {
    /// Waits until no change to the store at `path` is in progress and holds it off until
    /// dropped. Changes take milliseconds; a writer keeps its lock only while changing.
    pub fn acquire(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        file.lock_shared().map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ReadLock { file })
    }

    /// The locked file, opened for reading.
    pub fn file(&self) -> &File {
        &self.file
    }
}
