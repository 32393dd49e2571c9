//! [`Store`]: the token store of the learner, a ring buffer in a memory-mapped file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anytime_core::flash::Flash;
use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::layout::{record_size, Kind, STORE_HEADER_LEN};
use anytime_core::ring::{
    Geometry, LabelRef, OpenReport, RecordRef, Ring, Salvaged, MAX_LABEL_NAME,
};
use anytime_core::sampling::{sample_balanced, scratch_len};
use anytime_core::Error as CoreError;

use super::error::StoreError;
use super::lock::{ReadLock, WriterLock};
use super::mmap::{MmapFlash, FILE_ERASE_SIZE};

type FileRing = Ring<Backing, Vec<RecordRef>, Vec<LabelRef>>;

/// Where a store's bytes are: the mapped file (a writer), or a copy in memory (a reader).
#[derive(Debug)]
enum Backing {
    File(MmapFlash),
    Memory(MemFlash<Vec<u8>>),
}

impl Flash for Backing {
    fn capacity(&self) -> u32 {
        match self {
            Backing::File(f) => f.capacity(),
            Backing::Memory(m) => m.capacity(),
        }
    }
    fn erase_size(&self) -> u32 {
        FILE_ERASE_SIZE
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), CoreError> {
        match self {
            Backing::File(f) => f.read(offset, buf),
            Backing::Memory(m) => m.read(offset, buf),
        }
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), CoreError> {
        match self {
            Backing::File(f) => f.write(offset, data),
            Backing::Memory(m) => m.write(offset, data),
        }
    }
    fn erase(&mut self, offset: u32, len: u32) -> Result<(), CoreError> {
        match self {
            Backing::File(f) => f.erase(offset, len),
            Backing::Memory(m) => m.erase(offset, len),
        }
    }
    fn flush(&mut self) -> Result<(), CoreError> {
        match self {
            Backing::File(f) => f.flush(),
            Backing::Memory(m) => m.flush(),
        }
    }
}

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
/// One process at a time may write a store file: [`Store::create`] and [`Store::open`] take
/// an OS lock held until the store is dropped, and refuse with [`StoreError::Locked`]
/// (naming the holder) while another process holds it. [`Store::open_snapshot`] reads a
/// copy beside a writer. A store whose open found damage is not opened for writing
/// ([`StoreError::Damaged`]); [`Store::repair`] writes a fresh one with every intact record.
#[derive(Debug)]
pub struct Store {
    ring: FileRing,
    path: PathBuf,
    /// The writer's lock (`None` for a snapshot).
    _lock: Option<WriterLock>,
    /// The store file, locked exclusively around each change (`None` for a snapshot).
    changes: Option<File>,
    /// Nesting depth of [`Store::changing`].
    depth: u32,
    /// Records that failed their CRC when read since the store was opened.
    bad_reads: u32,
}

/// What [`Store::repair`] kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Data records written to the new store.
    pub records: usize,
    /// Of those, records found in segments the damaged store could not read.
    pub recovered: usize,
    /// Named labels.
    pub labels: usize,
    /// Whether a state blob was kept.
    pub state: bool,
    /// Bytes missing from a truncated file (read as erased).
    pub missing_bytes: u64,
    /// Where the damaged file was kept.
    pub kept_as: PathBuf,
}

impl Store {
    /// Creates a new store file at `path` (replacing any file there), durably: the file is
    /// written beside it, its blocks reserved (a full disk is an error here, not a crash
    /// later), synced, then renamed into place, so a failed create leaves nothing behind.
    pub fn create(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock = WriterLock::acquire(&path)?;
        let geo = config.geometry().map_err(|e| core_err(&path, e))?;
        let tmp = sibling(&path, "new");
        let made = Self::create_at(&tmp, geo);
        let ring = match made.and_then(|ring| {
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            sync_dir(&path);
            Ok(ring)
        }) {
            Ok(ring) => ring,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(match e {
                    StoreError::Io { source, .. } => io_err(&path, source),
                    StoreError::Store { source, .. } => core_err(&path, source),
                    other => other,
                });
            }
        };
        let changes = File::open(&path).map_err(|e| io_err(&path, e))?;
        log::info!(
            "store {}: created, {} segments of {} bytes, capacity {} bytes",
            path.display(),
            geo.segment_count,
            geo.segment_size,
            geo.capacity
        );
        Ok(Store {
            ring,
            path,
            _lock: Some(lock),
            changes: Some(changes),
            depth: 0,
            bad_reads: 0,
        })
    }

    /// Formats a store file at `tmp` and syncs it (errors name `tmp`).
    fn create_at(tmp: &Path, geo: Geometry) -> Result<FileRing, StoreError> {
        let flash = MmapFlash::create(tmp, geo.region_len()).map_err(|e| io_err(tmp, e))?;
        let mut ring = Ring::create(Backing::File(flash), geo, Vec::new(), Vec::new())
            .map_err(|e| core_err(tmp, e))?;
        if let Backing::File(f) = ring.flash_mut() {
            f.sync_file().map_err(|e| io_err(tmp, e))?;
        }
        Ok(ring)
    }

    /// Opens an existing store file to write it. A file that is not a store, of a newer
    /// format, truncated, or with an unreadable header gives an error and is not modified;
    /// so does a damaged one ([`StoreError::Damaged`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        check_len(&path, &file)?;
        let lock = WriterLock::acquire(&path)?;
        let changes = file.try_clone().map_err(|e| io_err(&path, e))?;
        changes.lock().map_err(|e| io_err(&path, e))?;
        // A failed open writes nothing, and neither does the open of a damaged store.
        let flash = MmapFlash::map(file).map_err(|e| io_err(&path, e))?;
        let opened = Ring::open(Backing::File(flash), Vec::new(), Vec::new());
        let _ = changes.unlock();
        let ring = opened.map_err(|e| core_err(&path, e))?;
        let r = ring.open_report();
        log_report(&path, &r);
        if r.is_damaged() {
            return Err(StoreError::Damaged {
                path,
                summary: damage_summary(&r),
            });
        }
        // What a create or a repair cut short left beside the store (only a writer makes
        // them, and this one holds the lock).
        for leftover in ["new", "repair"] {
            let _ = std::fs::remove_file(sibling(&path, leftover));
        }
        Ok(Store {
            ring,
            path,
            _lock: Some(lock),
            changes: Some(changes),
            depth: 0,
            bad_reads: 0,
        })
    }

    /// Opens a copy of the store at `path` to read it beside a writer (see [`ReadLock`]).
    /// Writes to it change the copy only. A damaged store opens, read-only, with what can
    /// be read ([`Store::open_report`] says what cannot).
    pub fn open_snapshot(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let lock = ReadLock::acquire(path)?;
        let bytes = read_store_file(path, lock.file())?;
        drop(lock);
        Self::from_bytes(path, bytes)
    }

    /// A store over `bytes` read from `path` (see [`Store::open_snapshot`]).
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let flash = MemFlash::new(bytes, FILE_ERASE_SIZE);
        let ring = Ring::open(Backing::Memory(flash), Vec::new(), Vec::new())
            .map_err(|e| core_err(&path, e))?;
        log_report(&path, &ring.open_report());
        Ok(Store {
            ring,
            path,
            _lock: None,
            changes: None,
            depth: 0,
            bad_reads: 0,
        })
    }

    /// An empty store in memory, for a reader of a learner that has no store file yet
    /// (named `path` in messages).
    pub fn empty_in_memory(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let geo = StoreConfig::new(64 * 1024, 256)
            .geometry()
            .map_err(|e| core_err(&path, e))?;
        let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], FILE_ERASE_SIZE);
        let ring = Ring::create(Backing::Memory(flash), geo, Vec::new(), Vec::new())
            .map_err(|e| core_err(&path, e))?;
        Ok(Store {
            ring,
            path,
            _lock: None,
            changes: None,
            depth: 0,
            bad_reads: 0,
        })
    }

    /// Opens `path` if it exists, else creates it with `config`. A file left by a create
    /// that never finished (all zeros or all `0xFF`: nothing was ever stored) is replaced.
    pub fn open_or_create(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if !path.exists() {
            return Self::create(path, config);
        }
        match Self::open(path) {
            Err(e)
                if matches!(
                    e.core(),
                    Some(CoreError::NotAStore | CoreError::Truncated { .. })
                ) && never_written(path) =>
            {
                log::warn!(
                    "store {}: holds nothing but the blank of an unfinished create; creating it afresh",
                    path.display()
                );
                Self::create(path, config)
            }
            r => r,
        }
    }

    /// Writes a fresh store with every intact record of the (damaged) store at `path`:
    /// records in the active zone and in segments whose header is unreadable, labels with
    /// their ids, the newest state blob; a truncated file is read with its missing end
    /// erased. The damaged file is kept as `<path>.damaged`. Needs the writer's lock.
    pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock = WriterLock::acquire(&path)?;
        let file = File::open(&path).map_err(|e| io_err(&path, e))?;
        let mut bytes = read_store_file(&path, &file)?;
        let found = bytes.len() as u64;
        let open = |bytes: Vec<u8>| {
            Ring::<_, Vec<RecordRef>, Vec<LabelRef>>::open(
                MemFlash::new(bytes, FILE_ERASE_SIZE),
                Vec::new(),
                Vec::new(),
            )
        };
        let mut ring = match open(bytes.clone()) {
            Err(CoreError::Truncated { expected, .. }) if expected > found => {
                bytes.resize(expected as usize, 0xFF);
                open(bytes).map_err(|e| core_err(&path, e))?
            }
            r => r.map_err(|e| core_err(&path, e))?,
        };
        let missing_bytes = ring.flash_mut().bytes().len() as u64 - found;
        let geo = *ring.geometry();
        let mut salvaged: BTreeMap<u32, Salvaged> = BTreeMap::new();
        ring.salvage(|s| {
            salvaged.entry(s.seq).or_insert(s);
        })
        .map_err(|e| core_err(&path, e))?;
        let newest_state = salvaged
            .values()
            .filter(|s| s.kind == Kind::State)
            .map(|s| s.seq)
            .max();
        let tmp = sibling(&path, "repair");
        let mut report = RepairReport {
            missing_bytes,
            kept_as: sibling(&path, "damaged"),
            ..RepairReport::default()
        };
        let written = (|| -> Result<(), StoreError> {
            let mut fresh = Self::create_at(&tmp, geo)?;
            let mut buf = vec![0u8; geo.max_payload() as usize];
            for s in salvaged.values() {
                if s.kind == Kind::State && Some(s.seq) != newest_state {
                    continue;
                }
                let n = ring
                    .read_payload(&s.record(), &mut buf)
                    .map_err(|e| core_err(&path, e))?;
                fresh
                    .restore(s.kind, s.flags, s.label, s.seq, &buf[..n])
                    .map_err(|e| core_err(&tmp, e))?;
                match s.kind {
                    Kind::Data => {
                        report.records += 1;
                        report.recovered += s.from_damaged as usize;
                    }
                    Kind::Label => report.labels += 1,
                    Kind::State => report.state = true,
                }
            }
            if let Backing::File(f) = fresh.flash_mut() {
                f.sync_file().map_err(|e| io_err(&tmp, e))?;
            }
            std::fs::rename(&path, &report.kept_as).map_err(|e| io_err(&path, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            sync_dir(&path);
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        drop(lock);
        log::info!(
            "store {}: repaired, {} records ({} from unreadable segments), {} labels kept",
            path.display(),
            report.records,
            report.recovered,
            report.labels
        );
        Ok(report)
    }

    /// `true` (the default): an append is synced to disk before it is acknowledged.
    /// `false`: writes reach the disk when the OS writes them back, so a crash or power
    /// cut may lose recent records; for stores nothing depends on after the process
    /// ends (the simulator's).
    pub fn set_durable(&mut self, durable: bool) {
        if let Backing::File(f) = self.ring.flash_mut() {
            f.set_sync(durable);
        }
    }

    /// Whether this is a writer's store (else a snapshot, whose writes stay in memory).
    pub fn is_writer(&self) -> bool {
        self.changes.is_some()
    }

    /// Runs `f` as one change: readers ([`Store::open_snapshot`], [`ReadLock`]) wait until
    /// it is done, so they see all of it or none (e.g. a checkpoint's new weights file
    /// and the state blob that names it). Changes nest.
    pub fn changing<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.depth == 0 {
            if let Some(file) = &self.changes {
                file.lock().map_err(|e| io_err(&self.path, e))?;
            }
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        if self.depth == 0 {
            if let Some(file) = &self.changes {
                let _ = file.unlock();
            }
        }
        r
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
        if let Some(id) = self.find_label(name)? {
            return Ok(id);
        }
        self.changing(|s| s.ring.label_id(name).map_err(|e| s.err(e)))
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
        self.changing(|s| s.ring.append(label, flags, payload).map_err(|e| s.err(e)))
    }

    /// Removes record `seq`; returns whether it existed.
    pub fn remove(&mut self, seq: u32) -> Result<bool, StoreError> {
        self.changing(|s| s.ring.remove(seq).map_err(|e| s.err(e)))
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
    /// number (e.g. the sample just appended). A record that fails its CRC is skipped (logged,
    /// counted in [`Store::bad_reads`]).
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
            match self.ring.read_payload(&r, &mut payload) {
                Ok(_) => {}
                Err(CoreError::CorruptRecord { offset }) => {
                    // Left where it is (a compaction copies it as it is), for a repair to
                    // report; the batch is one sample shorter.
                    log::warn!(
                        "store {}: record {} at offset {offset} fails its CRC; not replayed",
                        self.path.display(),
                        r.seq
                    );
                    self.bad_reads += 1;
                    continue;
                }
                Err(e) => return Err(self.err(e)),
            }
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
        self.changing(|s| s.ring.set_state(blob).map_err(|e| s.err(e)))
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

    /// Records that failed their CRC when sampled since the store was opened (skipped;
    /// the next open reports them and refuses to write until a repair).
    pub fn bad_reads(&self) -> u32 {
        self.bad_reads
    }

    /// Re-reads every live record and checks its CRC; returns how many fail.
    pub fn verify(&mut self) -> Result<u32, StoreError> {
        self.ring.verify().map_err(|e| self.err(e))
    }

    fn err(&self, e: CoreError) -> StoreError {
        core_err(&self.path, e)
    }
}

/// One line on what opening found, when it found anything.
fn log_report(path: &Path, r: &OpenReport) {
    if r.corrupt > 0 || r.torn > 0 || r.duplicates > 0 || r.has_findings() {
        log::warn!(
            "store {}: {} corrupt records skipped, {} torn writes, {} duplicates resolved, {} flipped bits corrected{}{}",
            path.display(),
            r.corrupt,
            r.torn,
            r.duplicates,
            r.corrected,
            if r.header_from_copy { ", header read from its copy" } else { "" },
            if r.damaged_segments > 0 {
                format!(
                    ", {} segments not read ({} intact records in them)",
                    r.damaged_segments, r.unreachable
                )
            } else {
                String::new()
            }
        );
    }
}

/// What is lost, in a few words (for [`StoreError::Damaged`]).
pub fn damage_summary(r: &OpenReport) -> String {
    let mut parts = Vec::new();
    if r.corrupt > 0 {
        parts.push(format!(
            "{} corrupt records or unreadable runs of bytes",
            r.corrupt
        ));
    }
    if r.damaged_segments > 0 {
        parts.push(format!(
            "{} segments with an unreadable header, holding {} intact records",
            r.damaged_segments, r.unreachable
        ));
    }
    if parts.is_empty() {
        parts.push("no loss".to_string());
    }
    parts.join(", ")
}

/// `<path>.<suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Refuses what is not a regular file of at most 4 GiB holding at least a header.
fn check_len(path: &Path, file: &File) -> Result<u64, StoreError> {
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let len = meta.len();
    if len > u32::MAX as u64 {
        return Err(StoreError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    if len < STORE_HEADER_LEN as u64 {
        return Err(core_err(
            path,
            CoreError::Truncated {
                expected: STORE_HEADER_LEN as u64,
                found: len,
            },
        ));
    }
    Ok(len)
}

/// A copy of the store file at `path`, read under a [`ReadLock`] (never torn by a writer):
/// a regular file of at most 4 GiB.
pub fn read_locked(path: &Path) -> Result<Vec<u8>, StoreError> {
    let lock = ReadLock::acquire(path)?;
    read_locked_by(&lock, path)
}

/// A copy of the store file at `path` under `lock`, a [`ReadLock`] the caller holds.
pub fn read_locked_by(lock: &ReadLock, path: &Path) -> Result<Vec<u8>, StoreError> {
    read_store_file(path, lock.file())
}

/// The bytes of the store file `file` (at `path`): a regular file of at most 4 GiB, read
/// up to the length it had when checked.
pub(crate) fn read_store_file(path: &Path, file: &File) -> Result<Vec<u8>, StoreError> {
    let len = check_len(path, file)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    Ok(bytes)
}

/// Whether the file at `path` holds only zeros or only `0xFF` (never written to).
fn never_written(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    if file.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
        return true;
    }
    let Ok(bytes) = read_store_file(path, &file) else {
        return false;
    };
    bytes.iter().all(|&b| b == 0) || bytes.iter().all(|&b| b == 0xFF)
}

fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
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
