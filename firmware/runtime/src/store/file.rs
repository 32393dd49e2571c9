//! [`Store`]: the token store of the learner, a ring buffer in a memory-mapped file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anytime_core::ring::layout::{decode_store_header, record_size, STORE_HEADER_LEN};
use anytime_core::ring::{Geometry, LabelRef, OpenReport, RecordRef, Ring, MAX_LABEL_NAME};
use anytime_core::sampling::{sample_balanced, scratch_len};
use anytime_core::Error as CoreError;

use super::error::StoreError;
use super::mmap::{MmapFlash, FILE_ERASE_SIZE};

type FileRing = Ring<MmapFlash, Vec<RecordRef>, Vec<LabelRef>>;

/// How to lay out a new store file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Logical capacity: the live records' total size (headers included) never exceeds it.
    /// The file is larger (see `FORMAT.md`: spare segments and per-segment slack).
    pub capacity: u64,
    /// Largest payload accepted (a codec record, or the state blob).
    pub max_payload: u32,
    /// Segment size in bytes (a multiple of 4096); `None` picks one: at least 64 KiB and
    /// 8 records.
    pub segment_size: Option<u32>,
}

impl StoreConfig {
    /// A store of `capacity` bytes for payloads of at most `max_payload` bytes.
    pub fn new(capacity: u64, max_payload: u32) -> Self {
        StoreConfig {
            capacity,
            max_payload,
            segment_size: None,
        }
    }

    /// The geometry this configuration gives.
    pub fn geometry(&self) -> Result<Geometry, CoreError> {
        let seg = self.segment_size.unwrap_or_else(|| {
            let want = (8 * record_size(self.max_payload) as u64).max(64 * 1024);
            (want.div_ceil(FILE_ERASE_SIZE as u64) * FILE_ERASE_SIZE as u64)
                .min(u32::MAX as u64 / 2) as u32
        });
        Geometry::for_capacity(self.capacity, seg, self.max_payload)
    }
}

/// One sampled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Sequence number (unique, increasing with append order).
    pub seq: u32,
    /// Label id.
    pub label: u16,
    /// Flags given at append.
    pub flags: u8,
    /// The payload (e.g. a codec record).
    pub payload: Vec<u8>,
}

/// A label of the store and how many records it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelInfo {
    pub id: u16,
    /// `None` when the label's name record was lost to corruption.
    pub name: Option<String>,
    pub count: u32,
}

/// The learner's token store: labelled records in a crash-safe ring buffer file.
///
/// - Appends are durable when [`Store::append`] returns (the file is synced first).
/// - When full, the store evicts from the label with the most records, oldest first.
/// - Labels are named; [`Store::label_id`] gives a stable `u16` id, creating it if needed.
/// - A small state blob ([`Store::set_state`]) is kept alongside; the newest copy wins.
///
/// One process at a time may have a store file open.
#[derive(Debug)]
pub struct Store {
    ring: FileRing,
    path: PathBuf,
}

impl Store {
    /// Creates a new store file at `path` (replacing any file there).
    pub fn create(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let geo = config.geometry().map_err(|e| core_err(&path, e))?;
        let flash = MmapFlash::create(&path, geo.region_len()).map_err(|e| io_err(&path, e))?;
        let ring =
            Ring::create(flash, geo, Vec::new(), Vec::new()).map_err(|e| core_err(&path, e))?;
        log::info!(
            "store {}: created, {} segments of {} bytes, capacity {} bytes",
            path.display(),
            geo.segment_count,
            geo.segment_size,
            geo.capacity
        );
        Ok(Store { ring, path })
    }

    /// Opens an existing store file. A file that is not a store, of a newer format, truncated,
    /// or with a corrupt header gives an error and is not modified.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // Check the header through plain reads before mapping the file writable.
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        if len > u32::MAX as u64 {
            return Err(StoreError::TooLarge { path, len });
        }
        if len < STORE_HEADER_LEN as u64 {
            return Err(core_err(
                &path,
                CoreError::Truncated {
                    expected: STORE_HEADER_LEN as u64,
                    found: len,
                },
            ));
        }
        let mut hb = [0u8; STORE_HEADER_LEN];
        (&file).read_exact(&mut hb).map_err(|e| io_err(&path, e))?;
        let geo = decode_store_header(&hb).map_err(|e| core_err(&path, e))?;
        if len < geo.region_len() {
            return Err(core_err(
                &path,
                CoreError::Truncated {
                    expected: geo.region_len(),
                    found: len,
                },
            ));
        }
        let flash = MmapFlash::map(file).map_err(|e| io_err(&path, e))?;
        let ring = Ring::open(flash, Vec::new(), Vec::new()).map_err(|e| core_err(&path, e))?;
        let r = ring.open_report();
        if r.corrupt > 0 || r.torn > 0 || r.duplicates > 0 {
            log::warn!(
                "store {}: {} corrupt records skipped, {} torn writes, {} duplicates resolved",
                path.display(),
                r.corrupt,
                r.torn,
                r.duplicates
            );
        }
        Ok(Store { ring, path })
    }

    /// Opens `path` if it exists, else creates it with `config`.
    pub fn open_or_create(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        if path.as_ref().exists() {
            Self::open(path)
        } else {
            Self::create(path, config)
        }
    }

    /// `true` (the default): an append is synced to disk before it is acknowledged.
    /// `false`: writes reach the disk when the OS writes them back, so a crash or power
    /// cut may lose recent records; for stores nothing depends on after the process
    /// ends (the simulator's).
    pub fn set_durable(&mut self, durable: bool) {
        self.ring.flash_mut().set_sync(durable);
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Geometry from the header (segment size and count, capacity, record bound).
    pub fn geometry(&self) -> Geometry {
        *self.ring.geometry()
    }

    /// What opening found (corrupt records skipped, torn writes, duplicates resolved).
    pub fn open_report(&self) -> OpenReport {
        self.ring.open_report()
    }

    /// The id of label `name`, created (durably) when new. Names are 1–255 bytes of UTF-8.
    pub fn label_id(&mut self, name: &str) -> Result<u16, StoreError> {
        self.ring.label_id(name).map_err(|e| self.err(e))
    }

    /// The id of label `name` if it exists (never creates).
    pub fn find_label(&mut self, name: &str) -> Result<Option<u16>, StoreError> {
        self.ring.find_label(name).map_err(|e| self.err(e))
    }

    /// Name of label `id`.
    pub fn label_name(&mut self, id: u16) -> Result<String, StoreError> {
        let mut buf = [0u8; MAX_LABEL_NAME];
        match self.ring.label_name(id, &mut buf) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every label with its name and record count, by id.
    pub fn labels(&mut self) -> Result<Vec<LabelInfo>, StoreError> {
        let n = self.ring.labels().len();
        let mut out = Vec::with_capacity(n);
        for id in 0..n as u16 {
            let count = self.ring.labels()[id as usize].count;
            let name = if self.ring.labels()[id as usize].has_name() {
                Some(self.label_name(id)?)
            } else {
                None
            };
            out.push(LabelInfo { id, name, count });
        }
        Ok(out)
    }

    /// Live records per label id (index = id).
    pub fn counts(&self) -> Vec<u32> {
        self.ring.labels().iter().map(|l| l.count).collect()
    }

    /// Number of live data records.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the store holds no data record.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Bytes of live records (counted against the capacity).
    pub fn live_bytes(&self) -> u64 {
        self.ring.live_bytes()
    }

    /// The live records (location, sequence, label, length), oldest first.
    pub fn records(&self) -> &[RecordRef] {
        self.ring.records()
    }

    /// Appends a record for `label`; returns its sequence number once it is durable.
    /// Evicts (class-balanced) when the store is full.
    pub fn append(&mut self, label: u16, payload: &[u8]) -> Result<u32, StoreError> {
        self.append_with_flags(label, 0, payload)
    }

    /// [`Store::append`] with caller flags stored beside the record.
    pub fn append_with_flags(
        &mut self,
        label: u16,
        flags: u8,
        payload: &[u8],
    ) -> Result<u32, StoreError> {
        self.ring
            .append(label, flags, payload)
            .map_err(|e| self.err(e))
    }

    /// Removes record `seq`; returns whether it existed.
    pub fn remove(&mut self, seq: u32) -> Result<bool, StoreError> {
        self.ring.remove(seq).map_err(|e| self.err(e))
    }

    /// Reads the payload of record `seq`, if live.
    pub fn read(&mut self, seq: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(r) = self.ring.records().iter().find(|r| r.seq == seq).copied() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; r.len as usize];
        self.ring
            .read_payload(&r, &mut buf)
            .map_err(|e| self.err(e))?;
        Ok(Some(buf))
    }

    /// Up to `m` records balanced over labels (SPEC §4): `⌊m/labels⌋` per label, the rest
    /// at random; with more than `m` labels, `m` distinct labels with one record each.
    /// Deterministic for a given store content and `seed`; `exclude` skips one sequence
    /// number (e.g. the sample just appended). A record that fails its CRC is an error.
    pub fn sample_balanced(
        &mut self,
        m: usize,
        seed: u64,
        exclude: Option<u32>,
    ) -> Result<Vec<Sample>, StoreError> {
        let n_labels = self.ring.labels().len();
        let mut scratch = vec![0u32; scratch_len(n_labels)];
        let mut idx = vec![0u32; m];
        let k = sample_balanced(
            self.ring.records(),
            n_labels,
            m,
            seed,
            exclude,
            &mut scratch,
            &mut idx,
        )
        .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(k);
        for &i in &idx[..k] {
            let r = self.ring.records()[i as usize];
            let mut payload = vec![0u8; r.len as usize];
            self.ring
                .read_payload(&r, &mut payload)
                .map_err(|e| self.err(e))?;
            out.push(Sample {
                seq: r.seq,
                label: r.label,
                flags: r.flags,
                payload,
            });
        }
        Ok(out)
    }

    /// Stores the learner state blob (OCW state, checkpoint reference); durable on return.
    /// The newest copy wins on reopen.
    pub fn set_state(&mut self, blob: &[u8]) -> Result<(), StoreError> {
        self.ring.set_state(blob).map_err(|e| self.err(e))
    }

    /// The newest state blob, if one was stored.
    pub fn state(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(n) = self.ring.state_len() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; n];
        self.ring.read_state(&mut buf).map_err(|e| self.err(e))?;
        Ok(Some(buf))
    }

    /// Re-reads every live record and checks its CRC; returns how many fail.
    pub fn verify(&mut self) -> Result<u32, StoreError> {
        self.ring.verify().map_err(|e| self.err(e))
    }

    fn err(&self, e: CoreError) -> StoreError {
        core_err(&self.path, e)
    }
}

fn core_err(path: &Path, source: CoreError) -> StoreError {
    StoreError::Store {
        path: path.to_path_buf(),
        source,
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
