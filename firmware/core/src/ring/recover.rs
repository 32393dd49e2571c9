//! Opening a store: header checks (no write happens before they pass), then a scan of the
//! active zone that rebuilds the index, the label table and the state pointer, and a check
//! of the free segments for records that a damaged header hides. Damage makes the store
//! read-only: nothing is written, so nothing that is left is erased before a repair.

use crate::error::Error;
use crate::flash::Flash;
use crate::fmt::warn;
use crate::ring::gc::Step;
use crate::ring::layout::*;
use crate::ring::slots::Slots;
use crate::ring::store::{LabelRef, OpenReport, RecordRef, Ring, Salvaged};

impl<F: Flash, R: Slots<RecordRef>, L: Slots<LabelRef>> Ring<F, R, L> {
    /// Opens an existing store.
    ///
    /// Errors, with the flash left untouched: [`Error::Truncated`] when the region is shorter
    /// than the header or than the geometry it states, [`Error::NotAStore`],
    /// [`Error::UnsupportedVersion`], [`Error::CorruptHeader`] (when neither the header nor
    /// its copy can be read). Corrupt records are skipped (logged, counted in
    /// [`Ring::open_report`]). When anything stored cannot be read
    /// ([`OpenReport::is_damaged`]) the store opens read-only and nothing is written;
    /// otherwise opening may write (undo an interrupted compaction, mark stale copies,
    /// write the header's copy into a store made before it existed).
    pub fn open(mut flash: F, mut records: R, mut labels: L) -> Result<Self, Error> {
        let cap = flash.capacity() as u64;
        if cap < STORE_HEADER_LEN as u64 {
            return Err(Error::Truncated {
                expected: STORE_HEADER_LEN as u64,
                found: cap,
            });
        }
        let (geo, corrected, from_copy) = read_store_header(&mut flash)?;
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
        if corrected {
            warn!("store: the store header has a flipped bit (corrected)");
        }
        if from_copy {
            warn!("store: the store header is unreadable; its copy was used");
        }

        // Segment headers: the head is the active segment with the highest sequence.
        let (mut head, mut active) = find_head(&mut flash, &geo, None)?;
        let mut undo = None;
        if let Some((h, hh)) = head {
            // A compaction target whose source is still active: the compaction was cut short.
            // The source still holds every record, so the target is retired (below, once
            // the scan found no damage) and ignored.
            if hh.source != NO_SOURCE && has_active_seq(&mut flash, &geo, hh.source, Some(h))? {
                undo = Some(h);
                (head, active) = find_head(&mut flash, &geo, Some(h))?;
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
                corrected: corrected as u32,
                header_from_copy: from_copy,
                ..OpenReport::default()
            },
            read_only: false,
            damaged: heapless::Vec::new(),
            bad_state: None,
        };
        let mut max_seq = 0u32;
        if let Some((head, SegmentHeader { seq: head_seq, .. })) = head {
            ring.head = head;
            ring.next_segment_seq = head_seq.wrapping_add(1);
            let mut oldest = (head + 1) % n;
            while oldest != head && ring.active_header(oldest)?.is_none() {
                oldest = (oldest + 1) % n;
            }
            ring.oldest = oldest;
            let zone = (head + n - oldest) % n + 1;
            ring.free = n - zone;
            let oldest_seq = ring.active_header(oldest)?.map_or(0, |h| h.seq);
            ring.check_free_segments(Some((head_seq, oldest_seq)), undo)?;

            for z in 0..zone {
                let seg = (oldest + z) % n;
                match ring.read_segment(seg)? {
                    SegmentRead::Active { corrected, .. } => {
                        if corrected {
                            warn!(
                                "store: segment {} header has a flipped bit (corrected)",
                                seg
                            );
                            ring.report.corrected += 1;
                        }
                    }
                    _ => {
                        // Between active segments: a header damaged out of turn.
                        if !ring.body_erased(seg)? {
                            ring.note_damaged(seg)?;
                        }
                        continue;
                    }
                }
                let resume = ring.scan_segment(seg, &mut max_seq)?;
                if seg == head {
                    ring.fill = resume;
                }
            }
        } else {
            ring.check_free_segments(None, undo)?;
        }
        ring.next_seq = max_seq.wrapping_add(1);
        if let Some(bad) = ring.bad_state {
            if ring.state.is_none_or(|s| s.seq < bad) {
                warn!(
                    "store: the newest state record (sequence {}) is unreadable",
                    bad
                );
                ring.report.corrupt += 1;
            }
        }
        ring.read_only = ring.report.is_damaged();
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
        if ring.read_only {
            let r = ring.report;
            warn!(
                "store: damaged ({} unreadable records or runs, {} segments not read holding {} intact records); read-only until repaired",
                r.corrupt,
                r.damaged_segments,
                r.unreachable
            );
            return Ok(ring);
        }

        // Nothing is damaged: the writes opening owes.
        if let Some(t) = undo {
            warn!(
                "store: undoing an interrupted compaction into segment {}",
                t
            );
            ring.flash.write(geo.segment_offset(t), &[0, 0, 0, 0])?;
        }
        if let Some(off) = header_copy_offset(&geo) {
            let mut copy = [0u8; STORE_HEADER_LEN];
            ring.flash.read(off, &mut copy)?;
            if copy.iter().all(|&b| b == 0xFF) {
                ring.flash.write(off, &encode_store_header(&geo))?;
            }
        }
        if head.is_none() {
            // Formatted but no segment opened yet (cut during create): start afresh.
            ring.flash.flush()?;
            ring.open_next_segment(NO_SOURCE)?;
        }
        ring.flash.flush()?;
        Ok(ring)
    }

    /// Visits every intact record (committed, not deleted, CRC valid): the active zone's
    /// first, in order, then those of the damaged segments ([`OpenReport::damaged_segments`]).
    /// Copies of one record may be met twice (a stale copy in a damaged segment); the
    /// first one met is the live one.
    pub fn salvage(&mut self, mut visit: impl FnMut(Salvaged)) -> Result<(), Error> {
        let n = self.geo.segment_count;
        let zone = n - self.free;
        for z in 0..zone {
            let seg = (self.oldest + z) % n;
            if self.active_header(seg)?.is_some() {
                self.salvage_segment(seg, false, &mut visit)?;
            }
        }
        if self.damaged.len() == self.report.damaged_segments as usize {
            for i in 0..self.damaged.len() {
                let seg = self.damaged[i];
                self.salvage_segment(seg, true, &mut visit)?;
            }
        } else {
            // Too many to list: every segment without an active header that holds
            // anything, in the zone (where only damage leaves one) or outside it.
            for k in 0..n {
                let seg = (self.oldest + k) % n;
                if self.active_header(seg)?.is_none() && !self.body_erased(seg)? {
                    self.salvage_segment(seg, true, &mut visit)?;
                }
            }
        }
        Ok(())
    }

    fn salvage_segment(
        &mut self,
        seg: u32,
        from_damaged: bool,
        visit: &mut impl FnMut(Salvaged),
    ) -> Result<(), Error> {
        let base = self.geo.segment_offset(seg);
        let mut pos = SEGMENT_HEADER_LEN;
        loop {
            match self.step(seg, pos)? {
                Step::End => return Ok(()),
                Step::Garbage(next) => pos = next,
                Step::Record(h, size, _) => {
                    let off = base + pos;
                    pos += size;
                    if marker_set(h.commit) && !marker_set(h.deleted) && self.body_ok(off, h.len)? {
                        visit(Salvaged {
                            kind: h.kind,
                            flags: h.flags,
                            label: h.label,
                            seq: h.seq,
                            offset: off,
                            len: h.len,
                            from_damaged,
                        });
                    }
                }
            }
        }
    }

    /// Checks the segments outside the active zone: erased, retired in turn, or a torn
    /// header over an empty segment are free; anything else holding records is damage.
    /// `zone`: the sequences of the head and the oldest segment (`None`: no active one).
    fn check_free_segments(
        &mut self,
        zone: Option<(u32, u32)>,
        undo: Option<u32>,
    ) -> Result<(), Error> {
        let n = self.geo.segment_count;
        let (start, count) = match zone {
            Some(_) => (self.head + 1, self.free),
            None => (0, n),
        };
        let before_oldest = (self.oldest + n - 1) % n;
        for k in 0..count {
            let s = (start + k) % n;
            if Some(s) == undo {
                continue;
            }
            let damaged = match self.read_segment(s)? {
                SegmentRead::Erased | SegmentRead::Active { .. } => false,
                SegmentRead::Unreadable => !self.body_erased(s)?,
                SegmentRead::Retired(r) => match zone {
                    Some((head_seq, oldest_seq)) => {
                        if r.seq > head_seq {
                            // Only an undone compaction target, whose source is active.
                            r.source == NO_SOURCE
                                || !has_active_seq(&mut self.flash, &self.geo, r.source, None)?
                        } else if r.seq >= oldest_seq {
                            true
                        } else if s == before_oldest {
                            // The last compaction source: its live records were copied
                            // into a segment that names it, or it had none.
                            !has_active_source(&mut self.flash, &self.geo, r.seq)?
                                && self.holds_live_records(s)?
                        } else {
                            false
                        }
                    }
                    None => self.holds_live_records(s)?,
                },
            };
            if damaged {
                self.note_damaged(s)?;
            }
        }
        Ok(())
    }

    /// Records segment `seg` as damaged and counts the intact records it holds.
    fn note_damaged(&mut self, seg: u32) -> Result<(), Error> {
        let mut intact = 0u32;
        self.salvage_segment(seg, true, &mut |_| intact += 1)?;
        warn!(
            "store: segment {} holds {} intact records but its header is unreadable or cleared out of turn; they are not read",
            seg,
            intact
        );
        self.report.damaged_segments += 1;
        self.report.unreachable += intact;
        let _ = self.damaged.push(seg);
        Ok(())
    }

    /// Whether segment `seg` holds a committed, not deleted data or label record.
    fn holds_live_records(&mut self, seg: u32) -> Result<bool, Error> {
        let mut found = false;
        self.salvage_segment(seg, true, &mut |r| {
            found |= matches!(r.kind, Kind::Data | Kind::Label)
        })?;
        Ok(found)
    }

    /// Whether everything after the header of segment `seg` is `0xFF`.
    fn body_erased(&mut self, seg: u32) -> Result<bool, Error> {
        let base = self.geo.segment_offset(seg);
        self.is_erased(
            base + SEGMENT_HEADER_LEN,
            self.geo.segment_size - SEGMENT_HEADER_LEN,
        )
    }

    fn read_segment(&mut self, seg: u32) -> Result<SegmentRead, Error> {
        read_segment(&mut self.flash, &self.geo, seg)
    }

    fn active_header(&mut self, seg: u32) -> Result<Option<SegmentHeader>, Error> {
        Ok(match self.read_segment(seg)? {
            SegmentRead::Active { header, .. } => Some(header),
            _ => None,
        })
    }

    /// Scans one active segment into the tables. Returns where appending may resume: the
    /// first aligned offset from which the segment is erased to its end, or the segment
    /// size (the segment is closed) when a torn write ends it.
    fn scan_segment(&mut self, seg: u32, max_seq: &mut u32) -> Result<u32, Error> {
        let base = self.geo.segment_offset(seg);
        let mut pos = SEGMENT_HEADER_LEN;
        // Start of a run of unreadable bytes, and the sequence of the record before it.
        let mut garbage: Option<u32> = None;
        let mut prev: Option<u32> = None;
        loop {
            match self.step(seg, pos)? {
                Step::End => break,
                Step::Garbage(next) => {
                    garbage.get_or_insert(pos);
                    pos = next;
                }
                Step::Record(h, size, corrected) => {
                    if let Some(g) = garbage.take() {
                        self.judge_run(seg, g, pos, prev, Some(h.seq))?;
                    }
                    let off = base + pos;
                    pos += size;
                    prev = Some(h.seq);
                    *max_seq = (*max_seq).max(h.seq);
                    if corrected {
                        warn!(
                            "store: record header at offset {} has a flipped bit (corrected)",
                            off
                        );
                        self.report.corrected += 1;
                    }
                    if !marker_set(h.commit) {
                        self.report.torn += 1;
                        continue;
                    }
                    let deleted = marker_set(h.deleted);
                    if deleted && h.kind == Kind::Data {
                        if corrected && self.zeroed_into_validity(off)? {
                            // Zeros over the deletion marker and into the header: a live
                            // record may be hidden as an evicted one.
                            self.note_corrupt(off);
                        }
                        continue;
                    }
                    // Label and state records are never deleted: a set marker is damage.
                    if deleted || !self.body_ok(off, h.len)? {
                        if h.kind == Kind::State {
                            // Harmless if a newer state is intact (judged after the scan).
                            self.bad_state = self.bad_state.max(Some(h.seq));
                        } else {
                            self.note_corrupt(off);
                        }
                        continue;
                    }
                    self.admit(off, &h)?;
                }
            }
        }
        if let Some(g) = garbage {
            if self.judge_run(seg, g, pos, prev, None)? {
                // A torn write ends its segment: appends to the head go on in the next
                // one, so the run stays followed by erased space and keeps reading as torn.
                return Ok(self.geo.segment_size);
            }
        }
        Ok(pos)
    }

    /// Whether the record header at `off`, valid only through one corrected bit, had that
    /// bit cleared in a byte that is now zero: what a zeroed run does (a flipped bit rarely).
    fn zeroed_into_validity(&mut self, off: u32) -> Result<bool, Error> {
        let mut raw = [0u8; RECORD_HEADER_LEN as usize];
        self.flash.read(off, &mut raw)?;
        Ok(match correct_record_header(&raw) {
            Some((_, fixed)) => raw.iter().zip(fixed).any(|(&r, f)| r != f && r == 0),
            None => false,
        })
    }

    /// Judges the unreadable run `start..end` of segment `seg`, between the record with
    /// sequence `prev` and the one with `next` (`None`: none in the segment / erased space
    /// follows). Returns whether it is a torn write; anything that may have hidden a
    /// committed record is counted corrupt.
    fn judge_run(
        &mut self,
        seg: u32,
        start: u32,
        end: u32,
        prev: Option<u32>,
        next: Option<u32>,
    ) -> Result<bool, Error> {
        let base = self.geo.segment_offset(seg);
        let mut commit = [0u8; 1];
        self.flash.read(base + start, &mut commit)?;
        let zero = self.is_zero(base + start, end - start)?;
        // A torn write never sets the commit marker, and never leaves only zeros.
        let torn = !zero && !marker_set(commit[0]);
        // No sequence number is missing between the records around the run.
        let none_hidden = matches!((prev, next), (Some(p), Some(n)) if n == p.wrapping_add(1));
        // Older versions sealed a torn write with zeros, and appended after it.
        let old_seal = zero && none_hidden && end - start <= self.geo.max_record;
        if torn && (next.is_none() || none_hidden) {
            self.report.torn += 1;
            return Ok(true);
        }
        if !old_seal {
            warn!(
                "store: unreadable bytes in segment {} at {}..{} may have held records",
                seg, start, end
            );
            self.note_corrupt(base + start);
        }
        Ok(false)
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
                if self.state.is_none_or(|s| h.seq >= s.seq) {
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
    /// keeps the one in the newer segment and marks the other deleted (unless read-only).
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
                if !self.read_only {
                    self.flash.write(a.offset + 1, &[0x00])?;
                }
                self.records.remove_at(i - 1);
                self.report.duplicates += 1;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

/// The store header: the primary (one flipped bit corrected), else its copy at the end of
/// the header block, found by trying every header-block size the erase unit allows.
/// Returns the geometry, whether a bit was corrected, and whether the copy was used.
fn read_store_header<F: Flash>(flash: &mut F) -> Result<(Geometry, bool, bool), Error> {
    let mut hb = [0u8; STORE_HEADER_LEN];
    flash.read(0, &mut hb)?;
    let first = match decode_store_header_fixing(&hb) {
        Ok((g, corrected)) => return Ok((g, corrected, false)),
        Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
        Err(e) => e,
    };
    let (es, cap) = (flash.erase_size() as u64, flash.capacity() as u64);
    if es == 0 {
        return Err(first);
    }
    // A store has at least 4 segments after the header block: the block is ≤ cap / 5.
    let mut size = es;
    while size <= cap / 5 {
        if size >= 2 * STORE_HEADER_LEN as u64 {
            flash.read((size - STORE_HEADER_LEN as u64) as u32, &mut hb)?;
            let magic_off: u32 = (0..8).map(|i| (hb[i] ^ STORE_MAGIC[i]).count_ones()).sum();
            // Only a magic within one flipped bit is worth the correction's 288 tries.
            if magic_off <= 1 {
                if let Ok((g, _)) = decode_store_header_fixing(&hb) {
                    if g.segment_size as u64 == size {
                        return Ok((g, false, true));
                    }
                }
            }
        }
        size += es;
    }
    Err(first)
}

/// The active segment with the highest sequence (ignoring `skip`), and how many segments
/// are active.
fn find_head<F: Flash>(
    flash: &mut F,
    geo: &Geometry,
    skip: Option<u32>,
) -> Result<(Option<(u32, SegmentHeader)>, u32), Error> {
    let mut head: Option<(u32, SegmentHeader)> = None;
    let mut active = 0;
    for s in 0..geo.segment_count {
        if Some(s) == skip {
            continue;
        }
        if let SegmentRead::Active { header: h, .. } = read_segment(flash, geo, s)? {
            active += 1;
            if head.is_none_or(|(_, q)| h.seq > q.seq) {
                head = Some((s, h));
            }
        }
    }
    Ok((head, active))
}

/// Whether an active segment (other than `skip`) has sequence `seq`.
fn has_active_seq<F: Flash>(
    flash: &mut F,
    geo: &Geometry,
    seq: u32,
    skip: Option<u32>,
) -> Result<bool, Error> {
    for s in 0..geo.segment_count {
        if Some(s) == skip {
            continue;
        }
        if let SegmentRead::Active { header, .. } = read_segment(flash, geo, s)? {
            if header.seq == seq {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether an active segment received its records from the segment with sequence `seq`.
fn has_active_source<F: Flash>(flash: &mut F, geo: &Geometry, seq: u32) -> Result<bool, Error> {
    for s in 0..geo.segment_count {
        if let SegmentRead::Active { header, .. } = read_segment(flash, geo, s)? {
            if header.source == seq {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn read_segment<F: Flash>(flash: &mut F, geo: &Geometry, s: u32) -> Result<SegmentRead, Error> {
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    flash.read(geo.segment_offset(s), &mut b)?;
    Ok(classify_segment_header(&b))
}
