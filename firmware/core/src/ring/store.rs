//! The ring buffer store: records in fixed-size segments of a [`Flash`] region.
//!
//! Life of a record: it is appended at the write head (body first, commit marker last, flush,
//! then acknowledged); it may be moved by compaction (same bytes, same sequence number);
//! it ends by eviction (its deletion marker is cleared) or when the segment holding a stale
//! copy is retired and erased. See `FORMAT.md` for the bytes and the crash argument.

use crate::crc32::crc32;
use crate::error::Error;
use crate::flash::Flash;
use crate::ring::layout::*;
use crate::ring::slots::Slots;

/// Where a live data record is, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Flash offset of the record's first byte.
    pub offset: u32,
    /// Store-wide sequence number (order of append; unique).
    pub seq: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Label id.
    pub label: u16,
    /// Caller flags given at append.
    pub flags: u8,
}

impl RecordRef {
    /// Bytes the record occupies in flash.
    pub const fn size(&self) -> u32 {
        record_size(self.len)
    }
}

/// One entry of the label table (index = label id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelRef {
    /// Flash offset of the label record, or `u32::MAX` when its name record was lost.
    pub offset: u32,
    /// Length of the name in bytes.
    pub name_len: u8,
    /// CRC-32 of the name (to skip most comparisons when looking a name up).
    pub hash: u32,
    /// Live data records with this label.
    pub count: u32,
}

impl LabelRef {
    pub(crate) const MISSING: LabelRef = LabelRef {
        offset: u32::MAX,
        name_len: 0,
        hash: 0,
        count: 0,
    };

    /// Whether the label's name is known.
    pub const fn has_name(&self) -> bool {
        self.offset != u32::MAX
    }
}

/// What [`Ring::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Valid live data records.
    pub records: u32,
    /// Records whose header or body failed its CRC, and runs of unreadable bytes that may
    /// have held records (skipped, warned).
    pub corrupt: u32,
    /// Records that were written but never committed (power cut during an append or copy).
    pub torn: u32,
    /// Stale copies left by an interrupted compaction (resolved).
    pub duplicates: u32,
    /// Segments with an active header.
    pub active_segments: u32,
    /// Headers (store, segment, record) read through the correction of one flipped bit.
    pub corrected: u32,
    /// The store header was unreadable and its copy at the end of the header block was used.
    pub header_from_copy: bool,
    /// Segments that hold records but whose header is unreadable or cleared out of turn:
    /// their records are not read (see [`Ring::salvage`]).
    pub damaged_segments: u32,
    /// Intact records found in those segments.
    pub unreachable: u32,
}

impl OpenReport {
    /// Whether something that was stored cannot be read: the store is then read-only.
    pub fn is_damaged(&self) -> bool {
        self.corrupt > 0 || self.damaged_segments > 0
    }

    /// Whether opening found anything but the traces of a power cut (torn writes, a
    /// compaction to undo): damage, or flipped bits that were corrected.
    pub fn has_findings(&self) -> bool {
        self.is_damaged() || self.corrected > 0 || self.header_from_copy
    }
}

/// Most damaged segments [`Ring::salvage`] visits by index; past that it visits every
/// segment that is not erased.
pub(crate) const DAMAGED_LIST: usize = 16;

/// An intact record found by [`Ring::salvage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salvaged {
    pub kind: Kind,
    pub flags: u8,
    /// Label id (data, label records) or [`STATE_LABEL`].
    pub label: u16,
    pub seq: u32,
    /// Flash offset of the record.
    pub offset: u32,
    /// Payload length.
    pub len: u32,
    /// Whether the record is in a segment the open could not read (else in the active zone).
    pub from_damaged: bool,
}

impl Salvaged {
    /// The record as [`Ring::read_payload`] takes it.
    pub const fn record(&self) -> RecordRef {
        RecordRef {
            offset: self.offset,
            seq: self.seq,
            len: self.len,
            label: self.label,
            flags: self.flags,
        }
    }
}

/// The store over a flash `F`, with its record index in `R` and its label table in `L`.
///
/// `R` and `L` are [`Slots`]: `heapless::Vec<_, N>` without an allocator, `Vec` with std.
#[derive(Debug, Clone)]
pub struct Ring<F, R, L> {
    pub(crate) flash: F,
    pub(crate) geo: Geometry,
    /// Live data records, sorted by `seq`.
    pub(crate) records: R,
    /// Label table, index = id.
    pub(crate) labels: L,
    /// Newest state record.
    pub(crate) state: Option<RecordRef>,
    /// Segment being written.
    pub(crate) head: u32,
    /// Offset inside `head` of the next record.
    pub(crate) fill: u32,
    /// Oldest segment of the active zone (`oldest ..= head`, circularly).
    pub(crate) oldest: u32,
    /// Segments after `head` that are free (erased, retired or garbage).
    pub(crate) free: u32,
    pub(crate) next_seq: u32,
    pub(crate) next_segment_seq: u32,
    /// Total size of live records (data, labels, current state).
    pub(crate) live: u64,
    pub(crate) report: OpenReport,
    /// Set when opening found damage: every write fails with [`Error::Damaged`].
    pub(crate) read_only: bool,
    /// Damaged segments (up to [`DAMAGED_LIST`]), for [`Ring::salvage`].
    pub(crate) damaged: heapless::Vec<u32, DAMAGED_LIST>,
    /// Highest sequence of an unreadable state record met by the open's scan.
    pub(crate) bad_state: Option<u32>,
}

impl<F: Flash, R: Slots<RecordRef>, L: Slots<LabelRef>> Ring<F, R, L> {
    /// Formats `flash` as an empty store with geometry `geo` (erases the whole region).
    pub fn create(
        mut flash: F,
        geo: Geometry,
        mut records: R,
        mut labels: L,
    ) -> Result<Self, Error> {
        geo.validate()?;
        let es = flash.erase_size();
        if es == 0 || !geo.segment_size.is_multiple_of(es) {
            return Err(Error::BadGeometry);
        }
        if (flash.capacity() as u64) < geo.region_len() {
            return Err(Error::Truncated {
                expected: geo.region_len(),
                found: flash.capacity() as u64,
            });
        }
        flash.erase(0, geo.region_len() as u32)?;
        flash.write(0, &encode_store_header(&geo))?;
        records.clear_all();
        labels.clear_all();
        let mut ring = Ring {
            flash,
            geo,
            records,
            labels,
            state: None,
            head: geo.segment_count - 1,
            fill: geo.segment_size,
            oldest: 0,
            free: geo.segment_count,
            next_seq: 1,
            next_segment_seq: 1,
            live: 0,
            report: OpenReport::default(),
            read_only: false,
            damaged: heapless::Vec::new(),
            bad_state: None,
        };
        if let Some(off) = header_copy_offset(&geo) {
            ring.flash.write(off, &encode_store_header(&geo))?;
        }
        ring.open_next_segment(NO_SOURCE)?;
        ring.flash.flush()?;
        Ok(ring)
    }

    /// The geometry read from the header.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Live data records, oldest first.
    pub fn records(&self) -> &[RecordRef] {
        self.records.as_slice()
    }

    /// The label table (index = id).
    pub fn labels(&self) -> &[LabelRef] {
        self.labels.as_slice()
    }

    /// Number of live data records.
    pub fn len(&self) -> usize {
        self.records.as_slice().len()
    }

    /// Whether there is no live data record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of live records (counted against the capacity).
    pub fn live_bytes(&self) -> u64 {
        self.live
    }

    /// Segments opened since the store was created (a wrap-around count times the segments).
    pub fn segments_opened(&self) -> u32 {
        self.next_segment_seq.wrapping_sub(1)
    }

    /// What opening the store found.
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// Whether the store refuses writes (opening found damage; see [`OpenReport::is_damaged`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> Result<(), Error> {
        if self.read_only {
            Err(Error::Damaged)
        } else {
            Ok(())
        }
    }

    /// The flash, for tests and tools.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// Reads the name of label `id` into `buf` and returns it.
    pub fn label_name<'b>(
        &mut self,
        id: u16,
        buf: &'b mut [u8; MAX_LABEL_NAME],
    ) -> Result<&'b str, Error> {
        let l = *self
            .labels
            .as_slice()
            .get(id as usize)
            .ok_or(Error::UnknownLabel(id))?;
        if !l.has_name() {
            return Err(Error::UnknownLabel(id));
        }
        let n = l.name_len as usize;
        self.flash
            .read(l.offset + RECORD_HEADER_LEN, &mut buf[..n])?;
        core::str::from_utf8(&buf[..n]).map_err(|_| Error::CorruptRecord { offset: l.offset })
    }

    /// The id of label `name`, if the table has it.
    pub fn find_label(&mut self, name: &str) -> Result<Option<u16>, Error> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_LABEL_NAME {
            return Err(Error::InvalidLabelName);
        }
        let h = crc32(bytes);
        let mut buf = [0u8; MAX_LABEL_NAME];
        for i in 0..self.labels.as_slice().len() {
            let l = self.labels.as_slice()[i];
            if l.has_name() && l.hash == h && l.name_len as usize == bytes.len() {
                self.flash
                    .read(l.offset + RECORD_HEADER_LEN, &mut buf[..bytes.len()])?;
                if &buf[..bytes.len()] == bytes {
                    return Ok(Some(i as u16));
                }
            }
        }
        Ok(None)
    }

    /// The id of label `name`, adding it to the label table (durably) when new.
    pub fn label_id(&mut self, name: &str) -> Result<u16, Error> {
        if let Some(id) = self.find_label(name)? {
            return Ok(id);
        }
        self.writable()?;
        let bytes = name.as_bytes();
        let id = self.labels.as_slice().len();
        if id >= STATE_LABEL as usize || id >= self.labels.max_len() {
            return Err(Error::LabelTableFull);
        }
        let size = record_size(bytes.len() as u32);
        self.reserve(size, None)?;
        let seq = self.take_seq();
        let offset = self.write_record(Kind::Label, 0, id as u16, seq, bytes)?;
        let entry = LabelRef {
            offset,
            name_len: bytes.len() as u8,
            hash: crc32(bytes),
            count: 0,
        };
        self.labels
            .try_push(entry)
            .map_err(|_| Error::LabelTableFull)?;
        self.live += size as u64;
        self.flash.flush()?;
        Ok(id as u16)
    }

    /// Appends a data record and returns its sequence number once it is durable.
    ///
    /// When the live bytes would exceed the capacity (or the index is full), records are
    /// evicted first: from the label with the most records (counting the new one), oldest
    /// first; ties go to the label whose oldest record is oldest.
    pub fn append(&mut self, label: u16, flags: u8, payload: &[u8]) -> Result<u32, Error> {
        self.writable()?;
        if label as usize >= self.labels.as_slice().len() {
            return Err(Error::UnknownLabel(label));
        }
        let size = self.check_payload(payload.len())?;
        self.reserve(size, Some(label))?;
        while self.records.as_slice().len() >= self.records.max_len() {
            self.evict_one(Some(label))?;
        }
        let seq = self.take_seq();
        let offset = self.write_record(Kind::Data, flags, label, seq, payload)?;
        let r = RecordRef {
            offset,
            seq,
            len: payload.len() as u32,
            label,
            flags,
        };
        self.records.try_push(r).map_err(|_| Error::IndexFull)?;
        self.labels.as_mut_slice()[label as usize].count += 1;
        self.live += size as u64;
        self.flash.flush()?;
        Ok(seq)
    }

    /// Stores a blob of state (e.g. OCW state and a checkpoint reference); the newest wins.
    pub fn set_state(&mut self, blob: &[u8]) -> Result<(), Error> {
        self.writable()?;
        let size = self.check_payload(blob.len())?;
        let old = self.state.map(|s| s.size() as u64).unwrap_or(0);
        // The old copy stays live until the new one is durable, so reserve room for both.
        self.reserve(size, None)?;
        let seq = self.take_seq();
        let offset = self.write_record(Kind::State, 0, STATE_LABEL, seq, blob)?;
        self.state = Some(RecordRef {
            offset,
            seq,
            len: blob.len() as u32,
            label: STATE_LABEL,
            flags: 0,
        });
        self.live = self.live + size as u64 - old;
        self.flash.flush()?;
        Ok(())
    }

    /// Writes a salvaged record (see [`Ring::salvage`]) into this store with its kind, flags,
    /// label id and sequence number, durably. Records come in increasing sequence order;
    /// label ids without a name record stay without a name.
    pub fn restore(
        &mut self,
        kind: Kind,
        flags: u8,
        label: u16,
        seq: u32,
        payload: &[u8],
    ) -> Result<(), Error> {
        self.writable()?;
        if seq < self.next_seq {
            return Err(Error::OutOfOrder {
                seq,
                next: self.next_seq,
            });
        }
        let size = self.check_payload(payload.len())?;
        let label = match kind {
            Kind::State => STATE_LABEL,
            _ if label == STATE_LABEL => return Err(Error::UnknownLabel(label)),
            Kind::Label
                if payload.is_empty()
                    || payload.len() > MAX_LABEL_NAME
                    || core::str::from_utf8(payload).is_err() =>
            {
                return Err(Error::InvalidLabelName)
            }
            _ => label,
        };
        if kind != Kind::State {
            while self.labels.as_slice().len() <= label as usize {
                self.labels
                    .try_push(LabelRef::MISSING)
                    .map_err(|_| Error::LabelTableFull)?;
            }
        }
        self.reserve(size, (kind == Kind::Data).then_some(label))?;
        if kind == Kind::Data {
            while self.records.as_slice().len() >= self.records.max_len() {
                self.evict_one(Some(label))?;
            }
        }
        self.next_seq = seq;
        let seq = self.take_seq();
        let flags = if kind == Kind::Data { flags } else { 0 };
        let offset = self.write_record(kind, flags, label, seq, payload)?;
        let r = RecordRef {
            offset,
            seq,
            len: payload.len() as u32,
            label,
            flags,
        };
        match kind {
            Kind::Data => {
                self.records.try_push(r).map_err(|_| Error::IndexFull)?;
                self.labels.as_mut_slice()[label as usize].count += 1;
                self.live += size as u64;
            }
            Kind::Label => {
                let entry = &mut self.labels.as_mut_slice()[label as usize];
                if entry.has_name() {
                    self.live -= record_size(entry.name_len as u32) as u64;
                }
                *entry = LabelRef {
                    offset,
                    name_len: payload.len() as u8,
                    hash: crc32(payload),
                    count: entry.count,
                };
                self.live += size as u64;
            }
            Kind::State => {
                let old = self.state.map_or(0, |s| s.size() as u64);
                self.state = Some(r);
                self.live = self.live + size as u64 - old;
            }
        }
        self.flash.flush()?;
        Ok(())
    }

    /// Length of the stored state blob, if any.
    pub fn state_len(&self) -> Option<usize> {
        self.state.map(|s| s.len as usize)
    }

    /// Reads the newest state blob into `buf`; `Ok(None)` when none was stored.
    pub fn read_state(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        match self.state {
            None => Ok(None),
            Some(s) => self.read_payload(&s, buf).map(Some),
        }
    }

    /// Reads a record's payload into `buf` (checking its CRC) and returns its length.
    pub fn read_payload(&mut self, r: &RecordRef, buf: &mut [u8]) -> Result<usize, Error> {
        let n = r.len as usize;
        if buf.len() < n {
            return Err(Error::BufferTooSmall {
                needed: r.len,
                got: buf.len().min(u32::MAX as usize) as u32,
            });
        }
        let fields = self.header_at(r.offset)?;
        self.flash
            .read(r.offset + RECORD_HEADER_LEN, &mut buf[..n])?;
        let mut crc = [0u8; 4];
        self.flash
            .read(r.offset + RECORD_HEADER_LEN + r.len, &mut crc)?;
        if record_crc(&fields[2..], &buf[..n]) != u32::from_le_bytes(crc) {
            return Err(Error::CorruptRecord { offset: r.offset });
        }
        Ok(n)
    }

    /// Re-reads every live record and checks its CRC; returns how many fail.
    pub fn verify(&mut self) -> Result<u32, Error> {
        let mut bad = 0;
        let n = self.records.as_slice().len();
        for i in 0..n {
            let r = self.records.as_slice()[i];
            if !self.body_ok(r.offset, r.len)? {
                bad += 1;
            }
        }
        for i in 0..self.labels.as_slice().len() {
            let l = self.labels.as_slice()[i];
            if l.has_name() && !self.body_ok(l.offset, l.name_len as u32)? {
                bad += 1;
            }
        }
        if let Some(s) = self.state {
            if !self.body_ok(s.offset, s.len)? {
                bad += 1;
            }
        }
        Ok(bad)
    }

    /// Removes the live data record `seq` (durably). Returns whether it existed.
    pub fn remove(&mut self, seq: u32) -> Result<bool, Error> {
        self.writable()?;
        match self.find_seq(seq) {
            Some(i) => {
                self.delete_at(i)?;
                self.flash.flush()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(crate) fn find_seq(&self, seq: u32) -> Option<usize> {
        self.records
            .as_slice()
            .binary_search_by_key(&seq, |r| r.seq)
            .ok()
    }

    fn check_payload(&self, len: usize) -> Result<u32, Error> {
        let max = self.geo.max_payload();
        if len > max as usize {
            return Err(Error::RecordTooLarge {
                len: len.min(u32::MAX as usize) as u32,
                max,
            });
        }
        Ok(record_size(len as u32))
    }

    pub(crate) fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    /// Makes room for a record of `size` bytes: evicts to respect the capacity, then compacts
    /// until the write head can take it.
    pub(crate) fn reserve(&mut self, size: u32, incoming: Option<u16>) -> Result<(), Error> {
        while self.live + size as u64 > self.geo.capacity {
            self.evict_one(incoming)?;
        }
        self.make_room(size)
    }

    /// Writes a record at the head (which must have room): body, flush, commit marker.
    pub(crate) fn write_record(
        &mut self,
        kind: Kind,
        flags: u8,
        label: u16,
        seq: u32,
        payload: &[u8],
    ) -> Result<u32, Error> {
        let len = payload.len() as u32;
        let off = self.geo.segment_offset(self.head) + self.fill;
        let fields = encode_record_fields(kind, flags, label, seq, len);
        self.flash.write(off + 2, &fields)?;
        self.flash.write(off + RECORD_HEADER_LEN, payload)?;
        let crc = record_crc(&fields, payload);
        self.flash
            .write(off + RECORD_HEADER_LEN + len, &crc.to_le_bytes())?;
        self.flash.flush()?;
        self.flash.write(off, &[0x00])?;
        self.fill += record_size(len);
        Ok(off)
    }

    /// The 20 header bytes of the record at `off`, with one flipped bit corrected if that
    /// makes them valid (as read otherwise).
    pub(crate) fn header_at(
        &mut self,
        off: u32,
    ) -> Result<[u8; RECORD_HEADER_LEN as usize], Error> {
        let mut b = [0u8; RECORD_HEADER_LEN as usize];
        self.flash.read(off, &mut b)?;
        if let HeaderRead::Invalid = decode_record_header(&b) {
            if let Some((_, fixed)) = correct_record_header(&b) {
                return Ok(fixed);
            }
        }
        Ok(b)
    }

    /// Checks the body CRC of the record at `off` with a `len`-byte payload.
    pub(crate) fn body_ok(&mut self, off: u32, len: u32) -> Result<bool, Error> {
        let fields = self.header_at(off)?;
        let mut c = crate::crc32::Crc32::new();
        c.update(&fields[2..16]);
        let mut chunk = [0u8; 64];
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(64) as usize;
            self.flash
                .read(off + RECORD_HEADER_LEN + done, &mut chunk[..n])?;
            c.update(&chunk[..n]);
            done += n as u32;
        }
        let mut crc = [0u8; 4];
        self.flash.read(off + RECORD_HEADER_LEN + len, &mut crc)?;
        Ok(c.finish() == u32::from_le_bytes(crc))
    }
}
