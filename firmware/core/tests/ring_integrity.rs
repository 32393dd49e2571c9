//! Bit flips are detected and the hit record skipped; a region that is not a store, a store
//! of a newer version and a truncated store give clear errors and are never modified.

mod common;

use anytime_core::crc32::crc32;
use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::layout::{FORMAT_VERSION, SEGMENT_HEADER_LEN, STORE_HEADER_LEN};
use anytime_core::ring::{Ring, MAX_LABEL_NAME};
use anytime_core::rng::SplitMix64;
use anytime_core::Error;
use common::*;

fn filled() -> (Vec<u8>, Snap) {
    let mut ring = create(small_geometry(600));
    let a = ring.label_id("alpha").unwrap();
    let b = ring.label_id("beta").unwrap();
    for i in 0..40 {
        ring.append(if i % 3 == 0 { a } else { b }, 0, &payload(i, 4 + i % 12))
            .unwrap();
    }
    ring.set_state(b"ocw").unwrap();
    let snap = snapshot(&mut ring);
    (ring.into_flash().into_inner(), snap)
}

fn open_err(bytes: &mut [u8]) -> Error {
    let before = bytes.to_vec();
    let e = Ring::open(MemFlash::new(&mut *bytes, 64), Index::new(), Labels::new()).unwrap_err();
    assert_eq!(
        bytes,
        &before[..],
        "a failed open must not modify the region"
    );
    e
}

#[test]
fn bit_flips_are_detected_and_skipped() {
    let (bytes, snap) = filled();
    let geo = small_geometry(600);
    let mut rng = SplitMix64::new(9);
    let mut detected = 0;
    for _ in 0..400 {
        let mut b = bytes.clone();
        // Flip one bit inside a segment's record area (segment headers are covered below).
        let seg = rng.below(geo.segment_count as u64) as u32;
        let pos =
            SEGMENT_HEADER_LEN + rng.below((geo.segment_size - SEGMENT_HEADER_LEN) as u64) as u32;
        let at = (geo.segment_offset(seg) + pos) as usize;
        b[at] ^= 1 << rng.below(8);
        let mut ring = reopen(b);
        let got = snapshot(&mut ring);
        // Never a wrong record: everything returned is exactly what was stored.
        for (seq, rec) in &got.records {
            assert_eq!(snap.records.get(seq), Some(rec), "flip at {at}");
        }
        let lost = snap.records.len() - got.records.len();
        assert!(lost <= 1, "one flip lost {lost} records (at {at})");
        if lost == 1 {
            detected += 1;
            let r = ring.open_report();
            assert!(
                r.corrupt + r.torn >= 1,
                "a lost record must be reported (flip at {at})"
            );
        }
        assert_eq!(ring.verify(), Ok(0));
        // Appendable, unless damage makes it read-only until a repair.
        if ring.open_report().is_damaged() {
            assert_eq!(ring.append(0, 0, b"more"), Err(Error::Damaged));
        } else {
            ring.append(0, 0, b"more").unwrap();
        }
    }
    assert!(detected > 50, "only {detected} flips hit a record");
}

#[test]
fn flip_in_segment_header_is_corrected() {
    let (mut bytes, snap) = filled();
    let geo = small_geometry(600);
    // The head: the segment of the newest record.
    let last = reopen(bytes.clone()).records().last().unwrap().offset;
    let at = geo.segment_offset(geo.segment_of(last)) as usize + 5;
    bytes[at] ^= 0x10;
    let mut ring = reopen(bytes);
    assert_eq!(snapshot(&mut ring), snap);
    assert_eq!(ring.open_report().corrected, 1);
    assert!(!ring.open_report().is_damaged());
    assert!(
        ring.open_report().has_findings(),
        "a corrected bit is a finding"
    );
    assert!(!ring.is_read_only());
}

#[test]
fn not_a_store() {
    let mut b = vec![0x5Au8; 4096];
    assert_eq!(open_err(&mut b), Error::NotAStore);
    let mut e = vec![0xFFu8; 4096];
    assert_eq!(open_err(&mut e), Error::NotAStore);
}

#[test]
fn newer_version() {
    let (mut bytes, _) = filled();
    bytes[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let c = crc32(&bytes[0..32]);
    bytes[32..36].copy_from_slice(&c.to_le_bytes());
    assert_eq!(
        open_err(&mut bytes),
        Error::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        }
    );
}

#[test]
fn corrupt_header() {
    let (mut bytes, snap) = filled();
    // One flipped bit is corrected.
    bytes[13] ^= 1;
    let mut ring = reopen(bytes.clone());
    assert_eq!(snapshot(&mut ring), snap);
    assert_eq!(ring.open_report().corrected, 1);
    // Two are not; the copy at the end of the header block is read instead.
    bytes[14] ^= 1;
    let mut ring = reopen(bytes.clone());
    assert_eq!(snapshot(&mut ring), snap);
    assert!(ring.open_report().header_from_copy);
    // Without the copy the store is refused, untouched.
    let copy = small_geometry(600).segment_size as usize - 36;
    bytes[copy + 13] ^= 3;
    assert_eq!(open_err(&mut bytes), Error::CorruptHeader);
}

#[test]
fn truncated() {
    let (bytes, _) = filled();
    let full = bytes.len() as u64;
    let mut short = bytes[..bytes.len() - 100].to_vec();
    assert_eq!(
        open_err(&mut short),
        Error::Truncated {
            expected: full,
            found: full - 100
        }
    );
    let mut tiny = bytes[..10].to_vec();
    assert!(matches!(open_err(&mut tiny), Error::Truncated { .. }));
}

#[test]
fn label_names_are_checked() {
    let mut ring = create(small_geometry(600));
    assert_eq!(ring.label_id(""), Err(Error::InvalidLabelName));
    assert_eq!(
        ring.label_id(&"x".repeat(256)),
        Err(Error::InvalidLabelName)
    );
    assert_eq!(
        ring.append(3, 0, b"no such label"),
        Err(Error::UnknownLabel(3))
    );
    let id = ring.label_id("ok").unwrap();
    assert_eq!(
        ring.append(id, 0, &[0; 17]),
        Err(Error::RecordTooLarge { len: 17, max: 16 })
    );
}

/// Opening scans the region about once: each written byte (twice at most), the erased tail of each active
/// segment once (to the segment's end), headers; never a header read at every aligned
/// offset of erased space.
#[test]
fn opening_reads_the_region_about_once() {
    let geo = anytime_core::ring::Geometry::for_capacity(6000, 1024, 48).unwrap();
    let region = geo.region_len();
    for appends in [0usize, 5, 60, 400] {
        let mut ring = create(geo);
        let a = ring.label_id("alpha").unwrap();
        for i in 0..appends {
            ring.append(a, 0, &payload(i, 8 + i % 40)).unwrap();
        }
        let snap = snapshot(&mut ring);
        let bytes = ring.into_flash().into_inner();
        let written = bytes.iter().filter(|&&b| b != 0xFF).count() as u64;
        // The head's erased tail, and each sealed segment's (shorter than a record).
        let tails =
            u64::from(geo.segment_size) + u64::from(geo.segment_count) * u64::from(geo.max_record);
        let mut back = reopen(bytes);
        let read = back.flash_mut().bytes_read;
        // Twice each written byte: a record's header is read by the scan and again with its
        // body for the CRC.
        assert!(
            read <= 2 * written + tails + u64::from(geo.segment_size),
            "{appends} appends: opening read {read} bytes ({written} written, {region} in all)"
        );
        assert_eq!(snapshot(&mut back), snap);
    }
}

/// Labels alone can fill the capacity: a label that does not fit then is refused with
/// `NoSpace` (nothing is evictable), and the store keeps every label it had.
#[test]
fn labels_alone_filling_the_store_give_no_space() {
    let mut ring = create(small_geometry(300));
    let mut names = Vec::new();
    let err = loop {
        let name = format!("label number {:03}", names.len());
        match ring.label_id(&name) {
            Ok(id) => names.push((id, name)),
            Err(e) => break e,
        }
        assert!(names.len() < 16, "the capacity never ran out");
    };
    assert_eq!(err, Error::NoSpace);
    assert!(names.len() >= 5, "{} labels", names.len());
    assert_eq!(ring.append(0, 0, b"x"), Err(Error::NoSpace));
    let mut back = reopen(ring.into_flash().into_inner());
    assert!(!back.open_report().has_findings());
    for (id, name) in names {
        assert_eq!(back.find_label(&name), Ok(Some(id)));
    }
}

/// What `open` checks before it reads a segment: the region's size against the header and
/// its geometry, and the flash's erase unit against the segment size.
#[test]
fn open_checks_the_region_and_the_erase_unit() {
    let geo = small_geometry(600);
    let bytes = create(geo).into_flash().into_inner();
    let header = STORE_HEADER_LEN;
    // Exactly a header's length: the header is read, then the region found short of it.
    assert_eq!(
        open_err(&mut bytes[..header].to_vec()),
        Error::Truncated {
            expected: geo.region_len(),
            found: header as u64
        }
    );
    assert_eq!(open_err(&mut vec![0u8; header]), Error::NotAStore);
    assert_eq!(
        open_err(&mut vec![0u8; header - 1]),
        Error::Truncated {
            expected: header as u64,
            found: header as u64 - 1
        }
    );
    // An erase unit that does not divide the segments, or none.
    for es in [0u32, 48, 256] {
        let mut b = bytes.clone();
        let before = b.clone();
        let e = Ring::open(MemFlash::new(&mut b[..], es), Index::new(), Labels::new()).unwrap_err();
        assert_eq!(e, Error::BadGeometry, "erase unit {es}");
        assert_eq!(b, before);
    }
    for es in [4u32, 64, 128] {
        Ring::open(
            MemFlash::new(bytes.clone(), es),
            Index::new(),
            Labels::new(),
        )
        .unwrap();
    }
}

/// The open report counts the active segments.
#[test]
fn the_open_report_counts_active_segments() {
    let mut ring = create(small_geometry(600));
    assert_eq!(
        reopen(ring.flash_mut().bytes().to_vec())
            .open_report()
            .active_segments,
        1
    );
    let a = ring.label_id("alpha").unwrap();
    for i in 0..8 {
        ring.append(a, 0, &payload(i, 16)).unwrap();
    }
    let opened = ring.segments_opened();
    assert!(opened >= 3, "{opened}");
    let back = reopen(ring.into_flash().into_inner());
    assert_eq!(back.open_report().active_segments, opened);
}

/// `create` checks the flash before it erases anything; a store's emptiness follows its
/// data records.
#[test]
fn create_checks_the_flash_and_counts_records() {
    let geo = small_geometry(600);
    let region = geo.region_len() as usize;
    for es in [0u32, 48] {
        let r = Ring::create(
            MemFlash::new(vec![0u8; region], es),
            geo,
            Index::new(),
            Labels::new(),
        );
        assert_eq!(r.err(), Some(Error::BadGeometry), "erase unit {es}");
    }
    let r = Ring::create(
        MemFlash::new(vec![0u8; region - 128], 64),
        geo,
        Index::new(),
        Labels::new(),
    );
    assert_eq!(
        r.err(),
        Some(Error::Truncated {
            expected: region as u64,
            found: region as u64 - 128
        })
    );
    let mut ring = Ring::create(
        MemFlash::new(vec![0u8; region + 256], 64),
        geo,
        Index::new(),
        Labels::new(),
    )
    .unwrap();
    assert!(ring.is_empty());
    assert_eq!(ring.records().len(), 0);
    let a = ring.label_id("alpha").unwrap();
    assert!(ring.is_empty(), "a label is not a data record");
    ring.append(a, 0, b"x").unwrap();
    assert!(!ring.is_empty() && ring.len() == 1);
    assert!(!ring.is_read_only() && !ring.open_report().has_findings());
}

/// `verify` counts the live records whose bytes no longer match their CRC (data records
/// and label names alike), and reading one fails with the record's offset.
#[test]
fn verify_counts_records_that_went_bad_after_opening() {
    let (bytes, _) = filled();
    let mut ring = reopen(bytes);
    assert_eq!(ring.verify(), Ok(0));
    assert_eq!(ring.state_len(), Some(3));
    let ok = ring.records()[6];
    let mut exact = vec![0u8; ok.len as usize];
    assert_eq!(ring.read_payload(&ok, &mut exact), Ok(ok.len as usize));
    let r = ring.records()[5];
    let l = ring.labels()[1];
    ring.flash_mut().bytes_mut()[r.offset as usize + 20] ^= 0x04;
    assert_eq!(ring.verify(), Ok(1));
    ring.flash_mut().bytes_mut()[l.offset as usize + 21] ^= 0x80;
    assert_eq!(ring.verify(), Ok(2));
    // The state record (the newest of its copies).
    let mut state = None;
    ring.salvage(|s| {
        if s.kind == anytime_core::ring::layout::Kind::State && state.is_none_or(|(q, _)| s.seq > q)
        {
            state = Some((s.seq, s.offset));
        }
    })
    .unwrap();
    let (_, at) = state.expect("a state record");
    ring.flash_mut().bytes_mut()[at as usize + 20] ^= 0x01;
    assert_eq!(ring.verify(), Ok(3));
    let mut buf = [0u8; 64];
    assert_eq!(
        ring.read_payload(&r, &mut buf),
        Err(Error::CorruptRecord { offset: r.offset })
    );
    assert_eq!(
        ring.read_payload(&r, &mut buf[..r.len as usize - 1]),
        Err(Error::BufferTooSmall {
            needed: r.len,
            got: r.len - 1
        })
    );
}

/// A record whose header and body landed but whose commit marker did not (a cut just
/// before it) is a torn write: not read, counted as torn, not damage.
#[test]
fn an_uncommitted_record_reads_as_torn() {
    let (mut bytes, snap) = filled();
    let last = *reopen(bytes.clone()).records().last().unwrap();
    bytes[last.offset as usize] = 0xFF;
    let mut ring = reopen(bytes);
    let report = ring.open_report();
    assert_eq!((report.torn, report.is_damaged()), (1, false), "{report:?}");
    let mut want = snap;
    want.records.remove(&last.seq);
    assert_eq!(snapshot(&mut ring), want);
}

/// Label names: 1 to 255 bytes whatever the store's record bound; a full label table
/// refuses a new label before writing anything.
#[test]
fn label_limits_are_checked_before_any_write() {
    let mut ring = create(small_geometry(2000));
    assert_eq!(ring.find_label(&"x".repeat(255)), Ok(None));
    assert_eq!(
        ring.find_label(&"x".repeat(256)),
        Err(Error::InvalidLabelName)
    );
    assert_eq!(ring.find_label(""), Err(Error::InvalidLabelName));
    for i in 0..16 {
        assert_eq!(ring.label_id(&format!("label {i}")), Ok(i as u16));
    }
    let before = ring.flash_mut().bytes().to_vec();
    assert_eq!(ring.label_id("one too many"), Err(Error::LabelTableFull));
    assert_eq!(ring.flash_mut().bytes(), &before[..]);
    assert_eq!(
        ring.label_id("label 7"),
        Ok(7),
        "a known label is still found"
    );
}

/// Two copies of one record (what a compaction leaves when power goes after the copy and
/// before the source is retired, if recovery did not undo it): the copy in the newer
/// segment is kept, the older one is marked deleted, and the duplicate is counted. Tried
/// for every record outside the head, before and after the ring wraps (the newer segment
/// then has the lower index), the older copy early or late in its segment.
#[test]
fn of_two_copies_of_a_record_the_newer_is_kept() {
    let mut wrapped = false;
    let mut tried = 0;
    for appends in 4..60 {
        let mut ring = alpha_store(small_geometry(600), appends, 4);
        let snap = snapshot(&mut ring);
        let geo = *ring.geometry();
        let last = *ring.records().last().unwrap();
        let head = geo.segment_of(last.offset);
        let at = (last.offset + last.size()) as usize;
        let records = ring.records().to_vec();
        let bytes = ring.into_flash().into_inner();
        for first in records {
            let src = geo.segment_of(first.offset);
            let size = first.size() as usize;
            if src == head || at + size > geo.segment_offset(head + 1) as usize {
                continue;
            }
            tried += 1;
            wrapped |= head < src;
            let mut bytes = bytes.clone();
            let record = bytes[first.offset as usize..][..size].to_vec();
            bytes[at..at + size].copy_from_slice(&record);
            let what = format!(
                "{appends} appends, record {} of segment {src} copied into {head}",
                first.seq
            );
            let mut back = reopen(bytes);
            assert_eq!(back.open_report().duplicates, 1, "{what}");
            assert!(!back.open_report().is_damaged(), "{what}");
            assert_eq!(snapshot(&mut back), snap, "{what}");
            let kept = back.records().iter().find(|r| r.seq == first.seq).unwrap();
            assert_eq!(kept.offset as usize, at, "{what}: the newer copy is kept");
            let b = back.flash_mut().bytes();
            assert_eq!(
                b[first.offset as usize + 1],
                0x00,
                "{what}: the older copy is deleted"
            );
            assert_eq!(b[at + 1], 0xFF, "{what}");
            // Reopened, it reads the same, with no duplicate left.
            let mut again = reopen(back.into_flash().into_inner());
            assert_eq!(again.open_report().duplicates, 0, "{what}");
            assert_eq!(snapshot(&mut again), snap, "{what}");
        }
    }
    assert!(tried >= 50 && wrapped, "{tried} cases, wrapped: {wrapped}");
}

/// A store whose state record has a second copy after the head's last record (what a
/// compaction cut short leaves, if recovery did not undo it): its bytes, what it holds,
/// and the offsets of the older and the newer copy.
fn two_state_copies() -> (Vec<u8>, Snap, u32, u32) {
    use anytime_core::ring::layout::{record_size, Kind};
    let mut ring = create(small_geometry(600));
    let a = ring.label_id("alpha").unwrap();
    ring.set_state(&payload(99, 6)).unwrap();
    for i in 0..6 {
        ring.append(a, 0, &payload(i, 4)).unwrap();
    }
    let snap = snapshot(&mut ring);
    let geo = *ring.geometry();
    let last = *ring.records().last().unwrap();
    let at = last.offset + last.size();
    let mut state = None;
    ring.salvage(|s| {
        if s.kind == Kind::State {
            state = Some(s);
        }
    })
    .unwrap();
    let s = state.expect("a state record");
    let size = record_size(s.len);
    let head = geo.segment_of(last.offset);
    assert_ne!(geo.segment_of(s.offset), head);
    assert!(at + size <= geo.segment_offset(head + 1));
    let mut bytes = ring.into_flash().into_inner();
    let record = bytes[s.offset as usize..][..size as usize].to_vec();
    bytes[at as usize..(at + size) as usize].copy_from_slice(&record);
    (bytes, snap, s.offset, at)
}

/// Two copies of the state record of which the older one went bad: the intact copy is that
/// same state, so nothing is lost and nothing is reported.
#[test]
fn a_bad_older_copy_of_the_state_is_no_damage() {
    use anytime_core::ring::layout::RECORD_HEADER_LEN;
    let (mut bytes, snap, older, _) = two_state_copies();
    bytes[(older + RECORD_HEADER_LEN) as usize] ^= 0x01;
    let mut back = reopen(bytes);
    let report = back.open_report();
    assert!(!report.is_damaged() && report.corrupt == 0, "{report:?}");
    assert_eq!(snapshot(&mut back), snap);
}

/// Of two intact copies of the state record, the one in the newer segment is the live one
/// (as for data records): a fault in it after opening is what reading the state finds.
#[test]
fn of_two_copies_of_the_state_the_newer_is_live() {
    use anytime_core::ring::layout::RECORD_HEADER_LEN;
    let (bytes, _, _, newer) = two_state_copies();
    let mut back = reopen(bytes);
    assert!(
        !back.open_report().has_findings(),
        "{:?}",
        back.open_report()
    );
    let mut buf = [0u8; 16];
    assert_eq!(back.read_state(&mut buf), Ok(Some(6)));
    back.flash_mut().bytes_mut()[(newer + RECORD_HEADER_LEN) as usize] ^= 0x01;
    assert_eq!(
        back.read_state(&mut buf),
        Err(Error::CorruptRecord { offset: newer })
    );
}

/// `restore` (what a repair writes salvaged records with) checks what it is given before it
/// writes, keeps the sequence numbers, and counts live bytes as appends do: a renamed label
/// and a newer state replace the older ones' bytes.
#[test]
fn restore_checks_its_input_and_counts_live_bytes() {
    use anytime_core::ring::layout::{record_size, Kind, STATE_LABEL};
    let geo = anytime_core::ring::Geometry::for_capacity(4000, 1024, 300).unwrap();
    let mut ring = create(geo);
    let before = ring.flash_mut().bytes().to_vec();
    let refused = [
        (
            Kind::Data,
            STATE_LABEL,
            &b"x"[..],
            Error::UnknownLabel(STATE_LABEL),
        ),
        (Kind::Label, 0, &b""[..], Error::InvalidLabelName),
        (Kind::Label, 0, &[b'n'; 256][..], Error::InvalidLabelName),
        (Kind::Label, 0, &[0xC3, 0x28][..], Error::InvalidLabelName),
    ];
    for (kind, label, payload, e) in refused {
        assert_eq!(
            ring.restore(kind, 0, label, 5, payload),
            Err(e),
            "{kind:?} {payload:?}"
        );
    }
    assert_eq!(
        ring.flash_mut().bytes(),
        &before[..],
        "a refused restore writes nothing"
    );
    let size = |n: usize| u64::from(record_size(n as u32));
    ring.restore(Kind::Label, 9, 1, 3, b"old name").unwrap();
    assert_eq!(ring.live_bytes(), size(8));
    ring.restore(Kind::Data, 7, 1, 4, b"data!").unwrap();
    assert_eq!(
        ring.labels()[1].count,
        1,
        "a restored record counts for its label"
    );
    ring.restore(Kind::State, 9, 0, 6, b"state one").unwrap();
    assert_eq!(ring.live_bytes(), size(8) + size(5) + size(9));
    ring.restore(Kind::Label, 0, 1, 8, b"a much longer new name")
        .unwrap();
    ring.restore(Kind::State, 0, 0, 9, b"s2").unwrap();
    let live = size(22) + size(5) + size(2);
    assert_eq!(ring.live_bytes(), live);
    assert_eq!(
        ring.restore(Kind::Data, 0, 1, 9, b"late"),
        Err(Error::OutOfOrder { seq: 9, next: 10 })
    );
    let longest = [b'n'; MAX_LABEL_NAME];
    ring.restore(Kind::Label, 0, 2, 10, &longest).unwrap();
    let live = live + size(MAX_LABEL_NAME);
    let mut back = reopen(ring.into_flash().into_inner());
    assert_eq!(back.live_bytes(), live);
    assert_eq!(
        back.find_label(core::str::from_utf8(&longest).unwrap()),
        Ok(Some(2))
    );
    assert_eq!(back.find_label("a much longer new name"), Ok(Some(1)));
    assert!(!back.labels()[0].has_name(), "label 0 was never named");
    let r = back.records()[0];
    assert_eq!((r.seq, r.label, r.flags, r.len), (4, 1, 7, 5));
    let mut buf = [0u8; 16];
    assert_eq!(back.read_state(&mut buf), Ok(Some(2)));
    assert_eq!(&buf[..2], b"s2");
}

/// A store cut after its header and before its first segment (`create` writes both) opens
/// empty and starts at segment 0, as `create` does: the same operations then write the
/// same bytes.
#[test]
fn a_store_cut_before_its_first_segment_starts_where_create_does() {
    let geo = small_geometry(600);
    let work = |ring: &mut MemRing| {
        let a = ring.label_id("alpha").unwrap();
        for i in 0..3 {
            ring.append(a, 0, &payload(i, 4)).unwrap();
        }
    };
    let mut fresh = create(geo);
    let mut cut = fresh.flash_mut().bytes().to_vec();
    work(&mut fresh);
    let at = geo.segment_offset(0) as usize;
    cut[at..at + geo.segment_size as usize].fill(0xFF);
    let mut ring = reopen(cut);
    assert_eq!(ring.open_report().active_segments, 0);
    assert!(!ring.open_report().is_damaged());
    work(&mut ring);
    assert_eq!(geo.segment_of(ring.records()[0].offset), 0);
    assert!(ring.flash_mut().bytes() == fresh.flash_mut().bytes());
}

/// `restore` of a data record makes room as `append` does: into a full store it evicts by
/// the same balance (counting the incoming label), and into a full index the same record.
#[test]
fn restore_evicts_as_append_does() {
    use anytime_core::ring::layout::Kind;
    use anytime_core::ring::{LabelRef, RecordRef};
    fn run<R: anytime_core::ring::Slots<RecordRef>>(
        index: R,
        by_bytes: bool,
        restore_last: bool,
    ) -> Vec<(u32, u16)> {
        let geo = small_geometry(600);
        let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], 64);
        let mut ring: Ring<_, R, heapless::Vec<LabelRef, 16>> =
            Ring::create(flash, geo, index, Labels::new()).unwrap();
        let a = ring.label_id("alpha").unwrap();
        let b = ring.label_id("beta").unwrap();
        for i in 0..40 {
            ring.append(if i % 2 == 0 { b } else { a }, 0, &payload(i, 12))
                .unwrap();
        }
        if by_bytes {
            // Equal counts, the oldest record beta's: a balance that forgot the incoming
            // alpha would evict that one instead of alpha's oldest.
            let oldest_alpha = ring.records().iter().find(|r| r.label == a).unwrap().seq;
            ring.remove(oldest_alpha).unwrap();
            let count = |l| ring.records().iter().filter(|r| r.label == l).count();
            assert_eq!(count(a), count(b));
            assert_eq!(ring.records()[0].label, b);
        } else {
            assert_eq!(ring.records().len(), 6, "the index is full");
        }
        let data = payload(99, 16);
        if restore_last {
            let seq = ring.records().last().unwrap().seq + 1;
            ring.restore(Kind::Data, 0, a, seq, &data).unwrap();
        } else {
            ring.append(a, 0, &data).unwrap();
        }
        ring.records().iter().map(|r| (r.seq, r.label)).collect()
    }
    // By capacity (a large index), and by a full index of 6 entries.
    let large = || heapless::Vec::<RecordRef, 512>::new();
    assert_eq!(run(large(), true, true), run(large(), true, false));
    let small = || heapless::Vec::<RecordRef, 6>::new();
    let by_index = run(small(), false, true);
    assert_eq!(by_index.len(), 6);
    assert_eq!(by_index, run(small(), false, false));
}
