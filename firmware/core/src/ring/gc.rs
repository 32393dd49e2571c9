//! Space management: eviction (class-balanced), segment opening, compaction of the oldest
//! segment, and the record-by-record segment scan shared with recovery.

use crate::error::Error;
use crate::flash::Flash;
use crate::fmt::warn;
use crate::ring::layout::*;
use crate::ring::slots::Slots;
use crate::ring::store::{LabelRef, RecordRef, Ring};

/// One step of a segment scan.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// No more records in this segment (the rest is erased).
    End,
    /// Bytes that are not a valid record header; resume at the given offset (`ALIGN`
    /// bytes later, or past erased bytes that cannot start a record).
    Garbage(u32),
    /// A record with a valid header occupying `size` bytes; `true` when one flipped bit of
    /// the header was corrected to read it.
    Record(RecordHeader, u32, bool),
}

impl<F: Flash, R: Slots<RecordRef>, L: Slots<LabelRef>> Ring<F, R, L> {
    /// Evicts one data record by the balance rule (see [`Ring::append`]).
    pub fn evict_one(&mut self, incoming: Option<u16>) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::Damaged);
        }
        // Plain loops: this runs on every append of a full store, and unoptimised builds
        // (tests, qemu) pay a call per iterator step or closure.
        let labels = self.labels.as_slice();
        let recs = self.records.as_slice();
        let inc = incoming.map_or(usize::MAX, usize::from);
        let mut top = 0;
        let mut l = 0;
        while l < labels.len() {
            top = top.max(labels[l].count + u32::from(l == inc));
            l += 1;
        }
        // The oldest record of a label reaching `top` (the records are sorted by sequence).
        let mut victim = None;
        let mut i = 0;
        while i < recs.len() {
            let rl = recs[i].label as usize;
            if labels[rl].count + u32::from(rl == inc) == top {
                victim = Some(i);
                break;
            }
            i += 1;
        }
        // Whenever a record is stored, a label with records reaches `top` (if the incoming
        // label reaches it with none stored, `top` is 1): `None` means nothing is stored.
        match victim {
            Some(i) => self.delete_at(i),
            None => Err(Error::NoSpace),
        }
    }

    /// Marks record `i` of the index deleted in flash and drops it from the tables.
    pub(crate) fn delete_at(&mut self, i: usize) -> Result<(), Error> {
        let r = self.records.as_slice()[i];
        self.flash.write(r.offset + 1, &[0x00])?;
        self.records.remove_at(i);
        let l = &mut self.labels.as_mut_slice()[r.label as usize];
        l.count = l.count.saturating_sub(1);
        self.live -= r.size() as u64;
        Ok(())
    }

    /// Ensures the head can take `size` more bytes, opening segments and compacting.
    pub(crate) fn make_room(&mut self, size: u32) -> Result<(), Error> {
        let mut compactions = 0;
        loop {
            if self.fill + size <= self.geo.segment_size {
                return Ok(());
            }
            if self.free >= 2 {
                self.open_next_segment(NO_SOURCE)?;
                continue;
            }
            if compactions > self.geo.segment_count {
                return Err(Error::NoSpace);
            }
            self.compact_oldest()?;
            compactions += 1;
        }
    }

    /// Makes the segment after the head the new head: erases it if needed, writes its header.
    pub(crate) fn open_next_segment(&mut self, source: u32) -> Result<(), Error> {
        if self.free == 0 {
            return Err(Error::NoSpace);
        }
        let n = self.geo.segment_count;
        let target = (self.head + 1) % n;
        let base = self.geo.segment_offset(target);
        let mut hb = [0u8; SEGMENT_HEADER_LEN as usize];
        self.flash.read(base, &mut hb)?;
        let erase_count = retired_erase_count(&hb).map_or(0, |c| c.wrapping_add(1));
        if !self.is_erased(base, self.geo.segment_size)? {
            self.flash.erase(base, self.geo.segment_size)?;
            // The erase is durable before the header that makes the segment active: a backend
            // that writes pages back in any order (a memory-mapped file) could otherwise keep
            // the new header over stale records.
            self.flash.flush()?;
        }
        let h = SegmentHeader {
            seq: self.next_segment_seq,
            erase_count,
            source,
        };
        self.next_segment_seq = self.next_segment_seq.wrapping_add(1);
        self.flash.write(base, &encode_segment_header(&h))?;
        if self.free == n {
            self.oldest = target;
        }
        self.head = target;
        self.fill = SEGMENT_HEADER_LEN;
        self.free -= 1;
        Ok(())
    }

    /// Moves the live records of the oldest segment into a fresh segment (opened on the first
    /// live record, marked with the source's sequence), then retires the source.
    ///
    /// Needs one free segment. If power is lost before the source is retired, recovery retires
    /// the incomplete target instead, so an interrupted compaction leaves no trace.
    pub(crate) fn compact_oldest(&mut self) -> Result<(), Error> {
        let seg = self.oldest;
        if seg == self.head {
            return Err(Error::NoSpace);
        }
        let base = self.geo.segment_offset(seg);
        let mut hb = [0u8; SEGMENT_HEADER_LEN as usize];
        self.flash.read(base, &mut hb)?;
        if let Some(src) = decode_segment_header(&hb) {
            let mut opened = false;
            let mut pos = SEGMENT_HEADER_LEN;
            loop {
                match self.step(seg, pos)? {
                    Step::End => break,
                    Step::Garbage(next) => pos = next,
                    Step::Record(h, size, _) => {
                        let off = base + pos;
                        pos += size;
                        // Uncommitted and deleted records are in no table.
                        let Some(i) = self.live_slot(off, &h) else {
                            continue;
                        };
                        if !opened {
                            self.open_next_segment(src.seq)?;
                            opened = true;
                        }
                        if self.fill + size > self.geo.segment_size {
                            return Err(Error::NoSpace);
                        }
                        let new = self.copy_record(off, h.len)?;
                        match h.kind {
                            Kind::Data => self.records.as_mut_slice()[i].offset = new,
                            Kind::Label => self.labels.as_mut_slice()[i].offset = new,
                            Kind::State => {
                                if let Some(s) = self.state.as_mut() {
                                    s.offset = new
                                }
                            }
                        }
                    }
                }
            }
            // The copies are durable before the source is retired.
            self.flash.flush()?;
            self.flash.write(base, &[0, 0, 0, 0])?;
        }
        self.oldest = (seg + 1) % self.geo.segment_count;
        self.free += 1;
        Ok(())
    }

    /// The table slot that points at the record at `off`, if it is the live copy.
    fn live_slot(&self, off: u32, h: &RecordHeader) -> Option<usize> {
        match h.kind {
            Kind::Data => self
                .find_seq(h.seq)
                .filter(|&i| self.records.as_slice()[i].offset == off),
            Kind::Label => self
                .labels
                .as_slice()
                .get(h.label as usize)
                .filter(|l| l.offset == off)
                .map(|_| h.label as usize),
            Kind::State => self.state.filter(|s| s.offset == off).map(|_| 0),
        }
    }

    /// Copies the record at `src` (payload `len`) to the head, committing it last. A header
    /// read through a corrected bit is written corrected.
    fn copy_record(&mut self, src: u32, len: u32) -> Result<u32, Error> {
        let dst = self.geo.segment_offset(self.head) + self.fill;
        let end = RECORD_OVERHEAD + len;
        let header = self.header_at(src)?;
        self.flash.write(dst + 2, &header[2..])?;
        let mut chunk = [0u8; 64];
        let mut p = RECORD_HEADER_LEN;
        while p < end {
            let n = (end - p).min(64) as usize;
            self.flash.read(src + p, &mut chunk[..n])?;
            self.flash.write(dst + p, &chunk[..n])?;
            p += n as u32;
        }
        self.flash.flush()?;
        self.flash.write(dst, &[0x00])?;
        self.fill += record_size(len);
        Ok(dst)
    }

    /// Reads the record header at `pos` of segment `seg`.
    pub(crate) fn step(&mut self, seg: u32, pos: u32) -> Result<Step, Error> {
        let ss = self.geo.segment_size;
        if pos + RECORD_OVERHEAD > ss {
            return Ok(Step::End);
        }
        let base = self.geo.segment_offset(seg);
        let mut hb = [0u8; RECORD_HEADER_LEN as usize];
        self.flash.read(base + pos, &mut hb)?;
        Ok(match decode_record_header(&hb) {
            HeaderRead::Erased => match self.first_written(base + pos, ss - pos)? {
                None => Step::End,
                // No header can start where its 20 bytes would all be erased: skip to the
                // first aligned offset whose header reaches the written byte.
                Some(q) => {
                    let first = (pos + q).saturating_sub(RECORD_HEADER_LEN - 1);
                    let next = pos + first.saturating_sub(pos).div_ceil(ALIGN) * ALIGN;
                    Step::Garbage(next.max(pos + ALIGN))
                }
            },
            HeaderRead::Invalid => match correct_record_header(&hb) {
                Some((h, _)) => self.sized(h, pos, true),
                None => Step::Garbage(pos + ALIGN),
            },
            HeaderRead::Valid(h) => self.sized(h, pos, false),
        })
    }

    /// A record step for header `h` at `pos`, or garbage when its length does not fit.
    fn sized(&self, h: RecordHeader, pos: u32, corrected: bool) -> Step {
        let ss = self.geo.segment_size;
        let size = record_size(h.len.min(ss));
        if h.len > self.geo.max_payload() || pos + size > ss {
            Step::Garbage(pos + ALIGN)
        } else {
            Step::Record(h, size, corrected)
        }
    }

    /// Offset (relative to `off`) of the first byte that is not `0xFF` in `len` bytes at
    /// `off`, if any.
    fn first_written(&mut self, off: u32, len: u32) -> Result<Option<u32>, Error> {
        let mut chunk = [0u8; 64];
        let mut p = 0;
        while p < len {
            let n = (len - p).min(64) as usize;
            self.flash.read(off + p, &mut chunk[..n])?;
            let mut i = 0;
            while i < n {
                if chunk[i] != 0xFF {
                    return Ok(Some(p + i as u32));
                }
                i += 1;
            }
            p += n as u32;
        }
        Ok(None)
    }

    /// Whether `len` bytes at `off` are all `0xFF`.
    pub(crate) fn is_erased(&mut self, off: u32, len: u32) -> Result<bool, Error> {
        let mut chunk = [0u8; 64];
        let mut p = 0;
        while p < len {
            let n = (len - p).min(64) as usize;
            self.flash.read(off + p, &mut chunk[..n])?;
            let mut i = 0;
            while i < n {
                if chunk[i] != 0xFF {
                    return Ok(false);
                }
                i += 1;
            }
            p += n as u32;
        }
        Ok(true)
    }

    /// Logs and counts a corrupt record.
    pub(crate) fn note_corrupt(&mut self, off: u32) {
        warn!("store: skipping corrupt record at offset {}", off);
        self.report.corrupt += 1;
    }
}

/// The erase count of a retired segment header (magic cleared to zero), if it is one.
fn retired_erase_count(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> Option<u32> {
    if b[0..4] != [0, 0, 0, 0] {
        return decode_segment_header(b).map(|h| h.erase_count);
    }
    let mut c = crate::crc32::Crc32::new();
    c.update(&SEGMENT_MAGIC);
    c.update(&b[4..16]);
    (c.finish() == le32(&b[16..20])).then(|| le32(&b[8..12]))
}
