//! Opening a store: header checks (no write happens before they pass), then a scan of the
//! active zone that rebuilds the index, the label table and the state pointer.

use crate::error::Error;
use crate::flash::Flash;
use crate::fmt::warn;
use crate::ring::gc::Step;
use crate::ring::layout::*;
use crate::ring::slots::Slots;
use crate::ring::store::{LabelRef, OpenReport, RecordRef, Ring};

impl<F: Flash, R: Slots<RecordRef>, L: Slots<LabelRef>> Ring<F, R, L> {
    /// Opens an existing store.
    ///
    /// Errors, with the flash left untouched: [`Error::Truncated`] when the region is shorter
    /// than the header or than the geometry it states, [`Error::NotAStore`],
    /// [`Error::UnsupportedVersion`], [`Error::CorruptHeader`]. Corrupt records are skipped
    /// (logged, counted in [`Ring::open_report`]). Stale copies of an interrupted compaction are
    /// marked deleted, so opening may write.
    pub fn open(mut flash: F, mut records: R, mut labels: L) -> Result<Self, Error> {
        let cap = flash.capacity() as u64;
        if cap < STORE_HEADER_LEN as u64 {
            return Err(Error::Truncated {
                expected: STORE_HEADER_LEN as u64,
                found: cap,
            });
        }
        let mut hb = [0u8; STORE_HEADER_LEN];
        flash.read(0, &mut hb)?;
        let geo = decode_store_header(&hb)?;
        if cap < geo.region_len() {
            return Err(Error::Truncated {
                expected: geo.region_len(),
                found: cap,
            });
        }
        let es = flash.erase_size();
        if es == 0 || geo.segment_size % es != 0 {
            return Err(Error::BadGeometry);
        }
        records.clear_all();
        labels.clear_all();
        let n = geo.segment_count;

        // Segment headers: the head is the active segment with the highest sequence.
        let (mut head, mut active) = find_head(&mut flash, &geo)?;
        if let Some((h, hh)) = head {
            // A compaction target whose source is still active: the compaction was cut short.
            // The source still holds every record, so retire the target.
            if hh.source != NO_SOURCE && has_active_seq(&mut flash, &geo, hh.source)? {
                warn!(
                    "store: undoing an interrupted compaction into segment {}",
                    h
                );
                flash.write(geo.segment_offset(h), &[0, 0, 0, 0])?;
                flash.flush()?;
                (head, active) = find_head(&mut flash, &geo)?;
            }
        }
        let mut ring = Ring {
            flash,
            geo,
            records,
            labels,
            state: None,
            head: n - 1,
            fill: geo.segment_size,
            oldest: 0,
            free: n,
            next_seq: 1,
            next_segment_seq: 1,
            live: 0,
            report: OpenReport {
                active_segments: active,
                ..OpenReport::default()
            },
        };
        let Some((head, SegmentHeader { seq: head_seq, .. })) = head else {
            // Formatted but no segment opened yet (cut during create): start afresh.
            ring.open_next_segment(NO_SOURCE)?;
            ring.flash.flush()?;
            return Ok(ring);
        };
        ring.head = head;
        ring.next_segment_seq = head_seq.wrapping_add(1);
        let mut oldest = (head + 1) % n;
        while oldest != head && read_segment_header(&mut ring.flash, &geo, oldest)?.is_none() {
            oldest = (oldest + 1) % n;
        }
        ring.oldest = oldest;
        let zone = (head + n - oldest) % n + 1;
        ring.free = n - zone;

        let mut max_seq = 0u32;
        for z in 0..zone {
            let seg = (oldest + z) % n;
            if read_segment_header(&mut ring.flash, &geo, seg)?.is_none() {
                // Retired, half erased or corrupt: nothing in it can be trusted.
                if seg != oldest {
                    warn!(
                        "store: segment {} has no valid header; its records are lost",
                        seg
                    );
                }
                continue;
            }
            let resume = ring.scan_segment(seg, &mut max_seq)?;
            if seg == head {
                ring.fill = resume;
            }
        }
        ring.next_seq = max_seq.wrapping_add(1);
        ring.resolve_duplicates()?;

        // Counts and live bytes.
        let mut live = 0u64;
        for i in 0..ring.records.as_slice().len() {
            let r = ring.records.as_slice()[i];
            while ring.labels.as_slice().len() <= r.label as usize {
                ring.labels
                    .try_push(LabelRef::MISSING)
                    .map_err(|_| Error::LabelTableFull)?;
            }
            ring.labels.as_mut_slice()[r.label as usize].count += 1;
            live += r.size() as u64;
        }
        for l in ring.labels.as_slice() {
            if l.has_name() {
                live += record_size(l.name_len as u32) as u64;
            }
        }
        if let Some(s) = ring.state {
            live += s.size() as u64;
        }
        ring.live = live;
        ring.report.records = ring.records.as_slice().len() as u32;
        ring.flash.flush()?;
        Ok(ring)
    }

    /// Scans one active segment into the tables. Returns where appending may resume: the
    /// first aligned offset from which the segment is erased to its end.
    fn scan_segment(&mut self, seg: u32, max_seq: &mut u32) -> Result<u32, Error> {
        let base = self.geo.segment_offset(seg);
        let mut pos = SEGMENT_HEADER_LEN;
        // Start of a run of unreadable bytes. A run followed by a valid record is corruption
        // (a damaged header), unless it is all zeros: a torn write sealed by an earlier open.
        // A run followed by erased space is a torn write; in the head it is sealed (zeroed,
        // which only clears bits) so that records appended after it do not read as corrupt.
        let mut garbage: Option<u32> = None;
        loop {
            match self.step(seg, pos)? {
                Step::End => break,
                Step::Garbage => {
                    garbage.get_or_insert(pos);
                    pos += ALIGN;
                }
                Step::Record(h, size) => {
                    if let Some(g) = garbage.take() {
                        if !self.is_zero(base + g, pos - g)? {
                            warn!("store: unreadable bytes in segment {} at {}", seg, g);
                            self.note_corrupt(base + g);
                        }
                    }
                    let off = base + pos;
                    pos += size;
                    *max_seq = (*max_seq).max(h.seq);
                    if !marker_set(h.commit) {
                        self.report.torn += 1;
                        continue;
                    }
                    if marker_set(h.deleted) {
                        continue;
                    }
                    if !self.body_ok(off, h.len)? {
                        self.note_corrupt(off);
                        continue;
                    }
                    self.admit(off, &h)?;
                }
            }
        }
        if let Some(g) = garbage {
            if !self.is_zero(base + g, pos - g)? {
                warn!("store: torn write in segment {} at {}", seg, g);
                self.report.torn += 1;
                if seg == self.head {
                    let zeros = [0u8; 64];
                    let mut p = g;
                    while p < pos {
                        let n = (pos - p).min(64);
                        self.flash.write(base + p, &zeros[..n as usize])?;
                        p += n;
                    }
                }
            }
        }
        Ok(pos)
    }

    /// Whether `len` bytes at `off` are all zero.
    fn is_zero(&mut self, off: u32, len: u32) -> Result<bool, Error> {
        let mut chunk = [0u8; 64];
        let mut p = 0;
        while p < len {
            let n = (len - p).min(64) as usize;
            self.flash.read(off + p, &mut chunk[..n])?;
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            p += n as u32;
        }
        Ok(true)
    }

    /// Enters a valid, committed, not deleted record into the tables (later copies win).
    fn admit(&mut self, off: u32, h: &RecordHeader) -> Result<(), Error> {
        match h.kind {
            Kind::Data => {
                let r = RecordRef {
                    offset: off,
                    seq: h.seq,
                    len: h.len,
                    label: h.label,
                    flags: h.flags,
                };
                if h.label == STATE_LABEL {
                    self.note_corrupt(off);
                    return Ok(());
                }
                self.records.try_push(r).map_err(|_| Error::IndexFull)?;
            }
            Kind::Label => {
                let n = h.len as usize;
                if n == 0 || n > MAX_LABEL_NAME || h.label == STATE_LABEL {
                    self.note_corrupt(off);
                    return Ok(());
                }
                let mut name = [0u8; MAX_LABEL_NAME];
                self.flash.read(off + RECORD_HEADER_LEN, &mut name[..n])?;
                while self.labels.as_slice().len() <= h.label as usize {
                    self.labels
                        .try_push(LabelRef::MISSING)
                        .map_err(|_| Error::LabelTableFull)?;
                }
                self.labels.as_mut_slice()[h.label as usize] = LabelRef {
                    offset: off,
                    name_len: n as u8,
                    hash: crate::crc32::crc32(&name[..n]),
                    count: 0,
                };
            }
            Kind::State => {
                if self.state.is_none_or(|s| h.seq > s.seq) {
                    self.state = Some(RecordRef {
                        offset: off,
                        seq: h.seq,
                        len: h.len,
                        label: STATE_LABEL,
                        flags: h.flags,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sorts the index by sequence; of two copies of one record (a compaction cut short)
    /// keeps the one in the newer segment and marks the other deleted.
    fn resolve_duplicates(&mut self) -> Result<(), Error> {
        // Among equal sequences the copy later in the zone is the newer one.
        let (n, ss, oldest) = (self.geo.segment_count, self.geo.segment_size, self.oldest);
        let zpos = |off: u32| {
            let seg = off / ss - 1;
            ((seg + n - oldest) % n) as u64 * ss as u64 + (off % ss) as u64
        };
        self.records
            .as_mut_slice()
            .sort_unstable_by_key(|r| (r.seq, zpos(r.offset)));
        let mut i = 1;
        while i < self.records.as_slice().len() {
            let (a, b) = (self.records.as_slice()[i - 1], self.records.as_slice()[i]);
            if a.seq == b.seq {
                self.flash.write(a.offset + 1, &[0x00])?;
                self.records.remove_at(i - 1);
                self.report.duplicates += 1;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// The active segment with the highest sequence, and how many segments are active.
fn find_head<F: Flash>(
    flash: &mut F,
    geo: &Geometry,
) -> Result<(Option<(u32, SegmentHeader)>, u32), Error> {
    let mut head: Option<(u32, SegmentHeader)> = None;
    let mut active = 0;
    for s in 0..geo.segment_count {
        if let Some(h) = read_segment_header(flash, geo, s)? {
            active += 1;
            if head.is_none_or(|(_, q)| h.seq > q.seq) {
                head = Some((s, h));
            }
        }
    }
    Ok((head, active))
}

fn has_active_seq<F: Flash>(flash: &mut F, geo: &Geometry, seq: u32) -> Result<bool, Error> {
    for s in 0..geo.segment_count {
        if read_segment_header(flash, geo, s)?.is_some_and(|h| h.seq == seq) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_segment_header<F: Flash>(
    flash: &mut F,
    geo: &Geometry,
    s: u32,
) -> Result<Option<SegmentHeader>, Error> {
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    flash.read(geo.segment_offset(s), &mut b)?;
    Ok(decode_segment_header(&b))
}
