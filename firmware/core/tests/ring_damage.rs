//! Damage is never silent and never erased: a flipped bit (a random one) at every offset of
//! a small store, and zeroed runs of several lengths all over it, then recovery. Whatever opening
//! returns is exactly what was stored; anything missing is reported (`is_damaged`), and a
//! damaged store refuses writes without changing a byte; salvage gives back every record
//! the damage did not touch.

mod common;

use std::collections::BTreeMap;

use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::layout::{
    encode_record_fields, header_copy_offset, record_crc, record_size, Kind, RECORD_HEADER_LEN,
    STORE_HEADER_LEN,
};
use anytime_core::ring::{Ring, Salvaged};
use anytime_core::rng::SplitMix64;
use anytime_core::Error;
use common::*;

/// A small store that has evicted and compacted: 12 segments of 128 bytes. Returns its
/// bytes, what it holds, and the byte ranges of its live records (data, labels, state).
fn build() -> (Vec<u8>, Snap, Vec<(usize, usize)>) {
    let mut ring = create(small_geometry(600));
    let a = ring.label_id("alpha").unwrap();
    let b = ring.label_id("beta").unwrap();
    for i in 0..70 {
        let l = if i % 3 == 0 { a } else { b };
        ring.append(l, 0, &payload(i, 4 + i % 12)).unwrap();
        if i % 9 == 0 {
            ring.set_state(&payload(i + 500, 3 + i % 5)).unwrap();
        }
        if i == 40 {
            ring.label_id("gamma").unwrap();
        }
    }
    assert!(ring.segments_opened() > 12, "the store must have wrapped");
    let mut live: Vec<(usize, usize)> = ring
        .records()
        .iter()
        .map(|r| (r.offset as usize, r.size() as usize))
        .collect();
    for l in ring.labels() {
        live.push((l.offset as usize, record_size(l.name_len as u32) as usize));
    }
    let snap = snapshot(&mut ring);
    let bytes = ring.into_flash().into_inner();
    let mut state_at = None;
    // The state record: the one live range the tables above do not name.
    let mut r = reopen(bytes.clone());
    if let Some(n) = r.state_len() {
        let mut found = None;
        r.salvage(|s| {
            if s.kind == Kind::State && s.len as usize == n {
                found = Some(s);
            }
        })
        .unwrap();
        let s = found.expect("state record");
        state_at = Some((s.offset as usize, record_size(s.len) as usize));
    }
    live.extend(state_at);
    (bytes, snap, live)
}

/// Opens damaged bytes, or `None` when the header and its copy are both gone.
fn open(bytes: Vec<u8>) -> Option<Result<MemRing, Error>> {
    match Ring::open(MemFlash::new(bytes, 64), Index::new(), Labels::new()) {
        Err(Error::CorruptHeader | Error::NotAStore) => None,
        r => Some(r),
    }
}

/// Every intact record, salvaged into a fresh store of the same geometry (what a repair
/// does: live copies first, one copy per sequence, in sequence order, newest state only).
fn repaired(ring: &mut MemRing) -> Snap {
    let mut found: BTreeMap<u32, Salvaged> = BTreeMap::new();
    ring.salvage(|s| {
        found.entry(s.seq).or_insert(s);
    })
    .unwrap();
    let newest_state = found
        .values()
        .filter(|s| s.kind == Kind::State)
        .map(|s| s.seq)
        .max();
    let mut fresh = create(*ring.geometry());
    let mut buf = vec![0u8; 64];
    for s in found.values() {
        if s.kind == Kind::State && Some(s.seq) != newest_state {
            continue;
        }
        let n = ring.read_payload(&s.record(), &mut buf).unwrap();
        fresh
            .restore(s.kind, s.flags, s.label, s.seq, &buf[..n])
            .unwrap();
    }
    let back = reopen(fresh.into_flash().into_inner());
    assert!(!back.open_report().has_findings());
    let mut back = back;
    snapshot(&mut back)
}

/// The checks after one injected fault. `hit`: the byte range the fault touched.
fn check(
    original: &[u8],
    damaged: Vec<u8>,
    snap: &Snap,
    live: &[(usize, usize)],
    hit: (usize, usize),
    what: &str,
) {
    let geo = small_geometry(600);
    let header_gone = {
        let copy = header_copy_offset(&geo).unwrap() as usize;
        hit.0 < STORE_HEADER_LEN && hit.1 > copy
    };
    let Some(opened) = open(damaged.clone()) else {
        assert!(header_gone, "{what}: the header became unreadable");
        return;
    };
    let mut ring = opened.unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let got = snapshot(&mut ring);
    // Never a wrong record.
    for (seq, rec) in &got.records {
        assert_eq!(
            snap.records.get(seq),
            Some(rec),
            "{what}: record {seq} differs"
        );
    }
    for (id, name) in got.labels.iter().enumerate() {
        if name.is_some() {
            assert_eq!(name, &snap.labels[id], "{what}: label {id} differs");
        }
    }
    // An unreadable newest state falls back to an older one: reported below, as a loss.
    let report = ring.open_report();
    let lost = got != *snap;
    if lost {
        assert!(
            report.is_damaged(),
            "{what}: lost records silently: {report:?}"
        );
    }
    assert_eq!(ring.is_read_only(), report.is_damaged(), "{what}");
    if report.is_damaged() {
        assert!(report.has_findings(), "{what}");
        assert_eq!(
            ring.flash_mut().bytes(),
            &damaged[..],
            "{what}: opening a damaged store wrote"
        );
        let before = ring.flash_mut().bytes().to_vec();
        assert_eq!(ring.append(0, 0, b"x"), Err(Error::Damaged), "{what}");
        assert_eq!(ring.set_state(b"s"), Err(Error::Damaged), "{what}");
        assert_eq!(
            ring.flash_mut().bytes(),
            &before[..],
            "{what}: a damaged store was written"
        );
        // Salvage keeps every record the fault did not touch.
        let back = repaired(&mut ring);
        let touched = |off: usize, size: usize| off < hit.1 && hit.0 < off + size;
        for (seq, rec) in &snap.records {
            let r_off = live
                .iter()
                .any(|&(o, s)| touched(o, s) && original[o + 8..o + 12] == seq.to_le_bytes());
            if !r_off {
                assert_eq!(
                    back.records.get(seq),
                    Some(rec),
                    "{what}: salvage lost record {seq}"
                );
            }
        }
        for (id, name) in snap.labels.iter().enumerate() {
            let lost_here = back.labels.get(id).cloned().flatten() != *name;
            if lost_here {
                let hit_label = live.iter().any(|&(o, s)| {
                    touched(o, s)
                        && original[o + 2] == Kind::Label as u8
                        && original[o + 4..o + 6] == (id as u16).to_le_bytes()
                });
                assert!(hit_label, "{what}: salvage lost label {id}");
            }
        }
    } else {
        ring.append(0, 0, b"more")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut again = reopen(ring.into_flash().into_inner());
        // A header corrected into validity through a zero byte, once its record is evicted,
        // reads like zeros over a live record's deletion marker: reported (FORMAT.md §1.8).
        let after = again.open_report();
        assert!(
            !after.is_damaged() || report.corrected > 0,
            "{what}: damaged after a write: {after:?} (before: {report:?})"
        );
        let after = snapshot(&mut again);
        for (seq, rec) in &after.records {
            assert!(
                snap.records.get(seq) == Some(rec) || rec.1 == b"more",
                "{what}: record {seq}"
            );
        }
    }
}

#[test]
fn a_bit_flip_at_every_offset_is_harmless_or_reported() {
    let (bytes, snap, live) = build();
    let mut rng = SplitMix64::new(19);
    for at in 0..bytes.len() {
        let bit = rng.below(8);
        let mut b = bytes.clone();
        b[at] ^= 1 << bit;
        check(
            &bytes,
            b,
            &snap,
            &live,
            (at, at + 1),
            &format!("flip of bit {bit} at {at}"),
        );
    }
}

#[test]
fn every_zeroed_run_is_harmless_or_reported() {
    let (bytes, snap, live) = build();
    // A run over nothing but a data record's deletion marker reads as an eviction: the one
    // damage the format cannot tell (FORMAT.md §1.8).
    let marker_only = |start: usize, end: usize| {
        live.iter()
            .any(|&(o, _)| start >= o && end <= o + 2 && bytes[o + 2] == Kind::Data as u8)
    };
    for len in [1usize, 3, 8, 24, 100, 300] {
        for start in (0..bytes.len()).step_by(match len {
            1 => 1,
            3 => 2,
            _ => 4,
        }) {
            let end = (start + len).min(bytes.len());
            if marker_only(start, end) {
                continue;
            }
            let mut b = bytes.clone();
            b[start..end].fill(0);
            if b == bytes {
                continue;
            }
            check(
                &bytes,
                b,
                &snap,
                &live,
                (start, end),
                &format!("zeros at {start}..{end}"),
            );
        }
    }
}

/// A data record whose first bytes read erased while the rest of it is written (a backend
/// that writes pages back in any order lost its header's page). The scan skips to the next
/// header: a record missing between two others is reported as damage (with every other
/// record salvaged); the last of a segment reads as a torn write, which the format cannot
/// tell apart, and everything else reads back.
#[test]
fn a_record_whose_start_reads_erased_is_skipped_to_the_next() {
    let (bytes, snap, live) = build();
    let h = RECORD_HEADER_LEN as usize;
    let (mut tried, mut damaged) = (0, 0);
    for &(o, size) in &live {
        if bytes[o + 2] != Kind::Data as u8 {
            continue;
        }
        let seq = u32::from_le_bytes(bytes[o + 8..o + 12].try_into().unwrap());
        let mut want = snap.clone();
        assert!(want.records.remove(&seq).is_some());
        for cut in [h, h + 4, size - 4] {
            if cut >= size {
                continue;
            }
            let mut b = bytes.clone();
            b[o..o + cut].fill(0xFF);
            let what = format!("erased {o}..{} of record {seq} ({size} bytes)", o + cut);
            let mut ring = open(b.clone())
                .unwrap()
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let report = ring.open_report();
            if report.is_damaged() {
                check(&bytes, b, &snap, &live, (o, o + cut), &what);
                damaged += 1;
            } else {
                assert_eq!(report.torn, 1, "{what}: {report:?}");
                assert_eq!(snapshot(&mut ring), want, "{what}");
            }
            tried += 1;
        }
    }
    assert!(
        tried > 20 && damaged > 10,
        "{tried} cases, {damaged} damaged"
    );
}

/// A record header whose CRC checks but whose length cannot be (beyond the store's record
/// bound, or past its segment's end: a store of another geometry, or a CRC collision) is
/// garbage: the scan steps past it and loses nothing else.
#[test]
fn a_valid_header_with_an_impossible_length_is_skipped() {
    let (bytes, snap, live) = build();
    let mut tried = 0;
    for &(o, size) in &live {
        if bytes[o + 2] != Kind::Data as u8 {
            continue;
        }
        let f = &bytes[o + 2..o + 20];
        let seq = u32::from_le_bytes(f[6..10].try_into().unwrap());
        let label = u16::from_le_bytes([f[2], f[3]]);
        for len in [17u32, 60, 100_000] {
            let mut b = bytes.clone();
            let fields = encode_record_fields(Kind::Data, f[1], label, seq, len);
            b[o + 2..o + 20].copy_from_slice(&fields);
            let what = format!("record {seq} at {o} claiming {len} bytes");
            check(&bytes, b, &snap, &live, (o, o + size), &what);
            tried += 1;
        }
    }
    assert!(tried > 30, "{tried}");
}

#[test]
fn a_store_without_the_header_copy_gains_it_and_still_reads() {
    let (mut bytes, snap, _) = build();
    let copy = header_copy_offset(&small_geometry(600)).unwrap() as usize;
    // What a store made before the copy existed looks like.
    bytes[copy..copy + STORE_HEADER_LEN].fill(0xFF);
    let mut ring = reopen(bytes.clone());
    assert!(!ring.open_report().has_findings());
    assert_eq!(snapshot(&mut ring), snap);
    let written = ring.into_flash().into_inner();
    assert_eq!(
        written[copy..copy + STORE_HEADER_LEN],
        bytes[..STORE_HEADER_LEN]
    );
    // With the copy, a destroyed header is read from it.
    let mut b = written.clone();
    b[..STORE_HEADER_LEN].fill(0);
    let mut ring = reopen(b);
    assert!(ring.open_report().header_from_copy);
    assert!(ring.open_report().has_findings() && !ring.open_report().is_damaged());
    assert_eq!(snapshot(&mut ring), snap);
}

/// More damaged segments than the store lists (16): salvage then finds them by scanning
/// every segment outside the active zone, and still gives back every intact record.
#[test]
fn salvage_finds_more_damaged_segments_than_it_lists() {
    let geo = small_geometry(1600);
    let mut ring = alpha_store(geo, 38, 16);
    let snap = snapshot(&mut ring);
    let head = geo.segment_of(ring.records().last().unwrap().offset);
    assert!(head >= 19, "head {head}");
    let bytes = ring.into_flash().into_inner();
    for damaged in [0usize, 5, 15, 16, 17, 18] {
        let mut b = bytes.clone();
        // Clear the magic of `damaged` segments after the first: retired out of turn.
        for s in 1..=damaged as u32 {
            let at = geo.segment_offset(s) as usize;
            b[at..at + 4].fill(0);
        }
        let Some(Ok(mut ring)) = open(b) else {
            panic!("{damaged}: open failed")
        };
        let report = ring.open_report();
        assert_eq!(report.damaged_segments as usize, damaged, "{report:?}");
        // Each record is met once: salvage visits a segment of the active zone only there.
        let mut seen = BTreeMap::new();
        ring.salvage(|s| {
            if s.kind == Kind::Data {
                *seen.entry(s.seq).or_insert(0) += 1;
            }
        })
        .unwrap();
        assert_eq!(seen.len(), snap.records.len(), "{damaged} damaged");
        assert!(
            seen.values().all(|&c| c == 1),
            "{damaged} damaged: {seen:?}"
        );
        let back = repaired(&mut ring);
        assert_eq!(back.records, snap.records, "{damaged} damaged: {report:?}");
    }
}

/// Records longer than the 64-byte chunks that compaction copies and the scan reads in: a
/// compaction moves them whole, and an erased stretch longer than a chunk at a record's
/// start is skipped to the next record without passing it.
#[test]
fn records_longer_than_a_chunk_are_moved_and_skipped_whole() {
    use anytime_core::ring::Geometry;
    let geo = Geometry::for_capacity(2400, 512, 200).unwrap();
    let mut ring = create(geo);
    let labels = [
        ring.label_id("alpha").unwrap(),
        ring.label_id("beta").unwrap(),
    ];
    let mut written = BTreeMap::new();
    for i in 0..60 {
        let data = payload(i, 120 + i % 80);
        // Alpha's two records stay (the balance evicts beta): compactions move them.
        let seq = ring.append(labels[usize::from(i >= 2)], 0, &data).unwrap();
        written.insert(seq, (ring.records().last().unwrap().offset, data));
    }
    let records = ring.records().to_vec();
    let moved = records
        .iter()
        .filter(|r| written[&r.seq].0 != r.offset)
        .count();
    assert!(moved > 0, "no record was compacted");
    let mut buf = vec![0u8; 256];
    for r in &records {
        let n = ring.read_payload(r, &mut buf).unwrap();
        assert_eq!(buf[..n], written[&r.seq].1, "record {}", r.seq);
    }
    let bytes = ring.into_flash().into_inner();

    // Erase the first 100 bytes of a record that has another after it in its segment.
    let (hit, next) = records
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|(a, b)| geo.segment_of(a.offset) == geo.segment_of(b.offset))
        .expect("two records in one segment");
    let mut b = bytes.clone();
    b[hit.offset as usize..][..100].fill(0xFF);
    let mut ring = open(b).unwrap().unwrap();
    assert!(ring.open_report().is_damaged(), "{:?}", ring.open_report());
    let mut salvaged = BTreeMap::new();
    ring.salvage(|s| {
        if s.kind == Kind::Data {
            salvaged.insert(s.seq, s);
        }
    })
    .unwrap();
    assert!(
        salvaged.contains_key(&next.seq),
        "record {} was passed",
        next.seq
    );
    let want: Vec<u32> = records
        .iter()
        .map(|r| r.seq)
        .filter(|&s| s != hit.seq)
        .collect();
    assert_eq!(salvaged.keys().copied().collect::<Vec<_>>(), want);
    for s in salvaged.values() {
        let n = ring.read_payload(&s.record(), &mut buf).unwrap();
        assert_eq!(buf[..n], written[&s.seq].1, "record {}", s.seq);
    }
}

/// The oldest segment retired while it still holds live records that no compaction copied
/// (no active segment names it as its source): damage, not a segment retired in turn.
#[test]
fn an_oldest_segment_retired_with_live_records_is_damage() {
    let geo = small_geometry(600);
    let mut ring = create(geo);
    let a = ring.label_id("alpha").unwrap();
    let b = ring.label_id("beta").unwrap();
    for i in 0..10 {
        ring.append(if i < 2 { a } else { b }, 0, &payload(i, 8))
            .unwrap();
    }
    let first = ring.records()[0];
    assert_eq!(geo.segment_of(first.offset), 0);
    assert!(ring.segments_opened() < geo.segment_count, "no wrap");
    let mut bytes = ring.into_flash().into_inner();
    let at = geo.segment_offset(0) as usize;
    bytes[at..at + 4].fill(0);
    let ring = open(bytes).unwrap().unwrap();
    let report = ring.open_report();
    assert!(
        report.is_damaged() && report.damaged_segments == 1,
        "{report:?}"
    );
    assert!(report.unreachable >= 2, "{report:?}");
}

/// Segments retired out of turn that are newer than every active one (the head, and a
/// compaction's target whose source is retired): their records are damage.
#[test]
fn segments_newer_than_the_head_retired_out_of_turn_are_damage() {
    use anytime_core::ring::layout::{decode_segment_header, NO_SOURCE, SEGMENT_HEADER_LEN};
    let geo = small_geometry(600);
    let mut ring = create(geo);
    let a = ring.label_id("alpha").unwrap();
    let b = ring.label_id("beta").unwrap();
    ring.append(a, 0, &payload(0, 16)).unwrap();
    let alpha_at = ring.records()[0].offset;
    let retire = |ring: &mut MemRing, segs: &[u32]| {
        let mut bytes = ring.flash_mut().bytes().to_vec();
        for &s in segs {
            let at = geo.segment_offset(s) as usize;
            bytes[at..at + 4].fill(0);
        }
        open(bytes).unwrap().unwrap().open_report()
    };
    // A plain head (opened for appends).
    ring.append(b, 0, &payload(1, 8)).unwrap();
    let report = retire(&mut ring, &[0]);
    assert!(
        report.is_damaged() && report.damaged_segments == 1,
        "{report:?}"
    );
    // The first compaction moves alpha's record (the balance evicts beta) into a target.
    let mut i = 2;
    while ring.records()[0].offset == alpha_at {
        ring.append(b, 0, &payload(i, 8)).unwrap();
        i += 1;
        assert!(i < 200, "no compaction");
    }
    let target = geo.segment_of(ring.records()[0].offset);
    let head = geo.segment_of(ring.records().last().unwrap().offset);
    let at = geo.segment_offset(target) as usize;
    let hb = ring.flash_mut().bytes()[at..at + SEGMENT_HEADER_LEN as usize]
        .try_into()
        .unwrap();
    assert_ne!(decode_segment_header(hb).unwrap().source, NO_SOURCE);
    let mut segs = vec![target, head];
    segs.dedup();
    let report = retire(&mut ring, &segs);
    let what = format!("target {target}, head {head}");
    assert!(report.is_damaged(), "{what}: {report:?}");
    assert_eq!(
        report.damaged_segments as usize,
        segs.len(),
        "{what}: {report:?}"
    );
}

/// A removed record's header with one flipped bit (a bit cleared, its byte not zero) is
/// corrected and stays removed: that is not the zeroed run that could hide a live record.
#[test]
fn a_flipped_bit_in_a_removed_record_is_no_damage() {
    let mut ring = alpha_store(small_geometry(600), 8, 8);
    // Sequence 3 (0b11): clearing bit 0 leaves a nonzero byte.
    let r = *ring.records().iter().find(|r| r.seq == 3).unwrap();
    ring.remove(3).unwrap();
    let snap = snapshot(&mut ring);
    assert_eq!(snap.records.len(), 7);
    let mut bytes = ring.into_flash().into_inner();
    let at = r.offset as usize + 8;
    assert_eq!(bytes[at], 3);
    bytes[at] = 2;
    let mut back = open(bytes).unwrap().unwrap();
    let report = back.open_report();
    assert!(!report.is_damaged() && report.corrected == 1, "{report:?}");
    assert_eq!(snapshot(&mut back), snap);
}

/// A segment between active ones whose header is unreadable is damage whenever anything
/// past its header is written, however far in (here its first record's start reads erased).
#[test]
fn an_unreadable_segment_header_over_written_bytes_is_damage() {
    let geo = small_geometry(600);
    let ring = alpha_store(geo, 10, 8);
    assert!(ring.segments_opened() >= 3);
    let mut bytes = ring.into_flash().into_inner();
    let at = geo.segment_offset(1) as usize;
    // Two bits of its sequence: beyond the one-bit correction.
    bytes[at + 4] ^= 0x03;
    bytes[at + 20..at + 56].fill(0xFF);
    let back = open(bytes).unwrap().unwrap();
    let report = back.open_report();
    assert!(
        report.is_damaged() && report.damaged_segments == 1,
        "{report:?}"
    );
}

/// Older versions sealed a torn write with zeros and appended after it: a run of zeros no
/// longer than a record, between records of consecutive sequence numbers, is that seal and
/// no damage. A longer run, or one not wholly zero, may have hidden a record: damage.
#[test]
fn an_old_seal_of_zeros_between_consecutive_records_is_no_damage() {
    use anytime_core::ring::Geometry;
    // Records up to 124 bytes: a seal longer than the 64-byte chunks zeros are read in.
    let geo = Geometry::for_capacity(1000, 512, 100).unwrap();
    assert!(geo.max_record > 64);
    let mut ring = alpha_store(geo, 2, 4);
    let snap = snapshot(&mut ring);
    let (first, second) = (ring.records()[0], ring.records()[1]);
    assert_eq!(second.seq, first.seq + 1);
    let bytes = ring.into_flash().into_inner();
    let with_run = |run: &[u8]| {
        let (at, size) = (second.offset as usize, second.size() as usize);
        let mut b = bytes.clone();
        let record = b[at..at + size].to_vec();
        b[at..at + run.len()].copy_from_slice(run);
        b[at + run.len()..at + run.len() + size].copy_from_slice(&record);
        let mut ring = open(b).unwrap().unwrap();
        let report = ring.open_report();
        (report, snapshot(&mut ring))
    };
    let max = geo.max_record as usize;
    let (report, got) = with_run(&vec![0; max]);
    assert!(!report.has_findings(), "{report:?}");
    assert_eq!(got, snap);
    let mut not_zero = vec![0; max];
    not_zero[8..].fill(0x55);
    for (what, run) in [("longer", vec![0; max + 4]), ("not zero", not_zero)] {
        let (report, got) = with_run(&run);
        assert!(
            report.is_damaged() && report.corrupt == 1,
            "{what}: {report:?}"
        );
        assert_eq!(got, snap, "{what}");
    }
}

/// A committed record with valid CRCs, built byte by byte (what a store of another build, or
/// a forger, could hold).
fn forged(kind: Kind, label: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let fields = encode_record_fields(kind, 0, label, seq, body.len() as u32);
    let mut r = vec![0x00, 0xFF];
    r.extend(fields);
    r.extend(body);
    r.extend(record_crc(&fields, body).to_le_bytes());
    r.resize(record_size(body.len() as u32) as usize, 0xFF);
    r
}

/// Label records that no build writes (an empty name, one longer than the limit, the
/// state's label id) are counted corrupt and leave the label table as it was.
#[test]
fn impossible_label_records_are_corrupt() {
    use anytime_core::ring::layout::STATE_LABEL;
    use anytime_core::ring::{Geometry, MAX_LABEL_NAME};
    let geo = Geometry::for_capacity(2000, 1024, 300).unwrap();
    let mut ring = alpha_store(geo, 1, 4);
    let snap = snapshot(&mut ring);
    let next = ring.records()[0].seq + 1;
    let end = (ring.records()[0].offset + ring.records()[0].size()) as usize;
    let bytes = ring.into_flash().into_inner();
    let long = vec![b'n'; MAX_LABEL_NAME + 1];
    for (what, label, name) in [
        ("an empty name", 1, &b""[..]),
        ("a name over the limit", 1, &long[..]),
        ("the state's label id", STATE_LABEL, &b"x"[..]),
    ] {
        let mut b = bytes.clone();
        let r = forged(Kind::Label, label, next, name);
        b[end..end + r.len()].copy_from_slice(&r);
        let mut back = open(b).unwrap().unwrap();
        let report = back.open_report();
        assert_eq!(report.corrupt, 1, "{what}: {report:?}");
        assert_eq!(snapshot(&mut back), snap, "{what}");
    }
}

/// The header copy is found on flash whose erase unit is smaller than two headers (the
/// header block sizes tried then start below a header's length).
#[test]
fn the_header_copy_is_found_with_a_small_erase_unit() {
    let geo = small_geometry(600);
    let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], 16);
    let mut ring = Ring::create(flash, geo, Index::new(), Labels::new()).unwrap();
    let a = ring.label_id("alpha").unwrap();
    ring.append(a, 0, &payload(0, 8)).unwrap();
    let snap = snapshot(&mut ring);
    let mut bytes = ring.into_flash().into_inner();
    bytes[..STORE_HEADER_LEN].fill(0);
    let mut ring = Ring::open(MemFlash::new(bytes, 16), Index::new(), Labels::new()).unwrap();
    assert!(ring.open_report().header_from_copy);
    assert_eq!(snapshot(&mut ring), snap);
}
