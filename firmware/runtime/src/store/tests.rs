//! Store file tests: round trip through reopen, clear errors that leave a file untouched,
//! balanced sampling, and token records with the tiny model's attention weights.

use std::path::Path;

use super::*;
use anytime_core::Error as CoreError;
use anytime_testkit::{close, max_abs_diff};

fn small(capacity: u64) -> StoreConfig {
    StoreConfig {
        capacity,
        max_payload: 256,
        segment_size: Some(4096),
    }
}

fn core_of(e: StoreError) -> CoreError {
    e.core()
        .unwrap_or_else(|| panic!("expected a store error, got {e}"))
}

#[test]
fn store_round_trip_through_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.store");
    let mut s = Store::create(&path, small(20_000)).unwrap();
    let cat = s.label_id("cat").unwrap();
    let dog = s.label_id("dog").unwrap();
    assert_eq!(s.label_id("cat").unwrap(), cat);
    let mut seqs = Vec::new();
    for i in 0..100u32 {
        let l = if i % 4 == 0 { dog } else { cat };
        seqs.push(s.append(l, &i.to_le_bytes().repeat(8)).unwrap());
    }
    s.set_state(b"state v1").unwrap();
    s.set_state(b"state v2").unwrap();
    let counts = s.counts();
    drop(s);
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.counts(), counts);
    assert_eq!(s.state().unwrap().as_deref(), Some(&b"state v2"[..]));
    let labels = s.labels().unwrap();
    assert_eq!(labels[0].name.as_deref(), Some("cat"));
    assert_eq!(labels[1].name.as_deref(), Some("dog"));
    assert_eq!(
        s.read(seqs[99]).unwrap(),
        Some(99u32.to_le_bytes().repeat(8))
    );
    assert_eq!(s.verify().unwrap(), 0);
}

#[test]
fn store_evicts_balanced_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::create(dir.path().join("b.store"), small(10_000)).unwrap();
    let ids: Vec<u16> = ["a", "b", "c"]
        .iter()
        .map(|n| s.label_id(n).unwrap())
        .collect();
    for i in 0..2000u32 {
        let l = ids[if i % 10 < 7 { 0 } else { (i % 2 + 1) as usize }];
        s.append(l, &[i as u8; 100]).unwrap();
    }
    let c = s.counts();
    assert!(
        c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
        "{c:?}"
    );
    assert!(s.live_bytes() <= s.geometry().capacity);
}

#[test]
fn store_sample_is_balanced_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::create(dir.path().join("c.store"), small(50_000)).unwrap();
    let a = s.label_id("a").unwrap();
    let b = s.label_id("b").unwrap();
    for i in 0..90u32 {
        s.append(a, &i.to_le_bytes()).unwrap();
    }
    let last = (0..10u32)
        .map(|i| s.append(b, &i.to_le_bytes()).unwrap())
        .last()
        .unwrap();
    let x = s.sample_balanced(31, 3, Some(last)).unwrap();
    let y = s.sample_balanced(31, 3, Some(last)).unwrap();
    assert_eq!(x, y);
    assert_eq!(x.len(), 31);
    assert_eq!(x.iter().filter(|r| r.label == b).count(), 9);
    assert!(x.iter().all(|r| r.seq != last));
}

fn assert_untouched(path: &Path, before: &[u8], err: StoreError, want: CoreError) {
    assert_eq!(core_of(err), want);
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file must not change"
    );
}

#[test]
fn store_refuses_bad_files_without_touching_them() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 10_000]).unwrap();
    let before = std::fs::read(&junk).unwrap();
    assert_untouched(
        &junk,
        &before,
        Store::open(&junk).unwrap_err(),
        CoreError::NotAStore,
    );

    let path = dir.path().join("v.store");
    let mut s = Store::create(&path, small(20_000)).unwrap();
    let l = s.label_id("x").unwrap();
    s.append(l, b"payload").unwrap();
    drop(s);
    let good = std::fs::read(&path).unwrap();

    let mut newer = good.clone();
    newer[8..10].copy_from_slice(&2u16.to_le_bytes());
    let c = anytime_core::crc32::crc32(&newer[0..32]);
    newer[32..36].copy_from_slice(&c.to_le_bytes());
    std::fs::write(&path, &newer).unwrap();
    assert_untouched(
        &path,
        &newer,
        Store::open(&path).unwrap_err(),
        CoreError::UnsupportedVersion {
            found: 2,
            supported: 1,
        },
    );

    let short = &good[..good.len() - 4096];
    std::fs::write(&path, short).unwrap();
    assert_untouched(
        &path,
        short,
        Store::open(&path).unwrap_err(),
        CoreError::Truncated {
            expected: good.len() as u64,
            found: short.len() as u64,
        },
    );

    std::fs::write(&path, &good[..20]).unwrap();
    assert!(matches!(
        core_of(Store::open(&path).unwrap_err()),
        CoreError::Truncated { .. }
    ));

    let missing = Store::open(dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, StoreError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("nope"));
}

#[test]
fn store_token_records_with_tiny_model_weights() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-clip");
    // The tiny model is committed: its absence is a failure, not a skip.
    let assets = crate::assets::ModelAssets::open(&dir).expect("the bundled tiny-clip");
    let dims = assets.dims().block();
    let block =
        crate::block::LastBlock::load(&assets.file("last_block.safetensors"), dims).unwrap();
    let (n, d) = (dims.tokens, dims.width);
    let mut rng = anytime_core::rng::SplitMix64::new(1);
    let tokens: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let w = token_weights(&block, &tokens, 1);
    assert_eq!(w.len(), n);
    assert_eq!(w[0], 1.0);
    assert!(close(w[1..].iter().sum::<f32>(), 1.0, 1e-4, 0.0));
    let exact = CodecParams {
        k: n as u16 - 1,
        bits: 32,
        weighted: true,
    };
    let rec = encode_tokens(&tokens, &w, n, d, &exact).unwrap();
    let (back, n2, d2) = decode_tokens(&rec).unwrap();
    assert_eq!((n2, d2), (n, d));
    let max = max_abs_diff(&tokens, &back);
    assert!(max < 1e-4, "{max}");
    let rec = encode_tokens(&tokens, &w, n, d, &CodecParams::DEFAULT).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Store::create(
        tmp.path().join("t.store"),
        StoreConfig::new(1 << 20, rec.len() as u32),
    )
    .unwrap();
    let l = s.label_id("noise").unwrap();
    let seq = s.append(l, &rec).unwrap();
    assert_eq!(s.read(seq).unwrap(), Some(rec));
}

#[test]
fn one_writer_at_a_time_and_snapshots_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.store");
    let mut w = Store::create(&path, small(20_000)).unwrap();
    let cat = w.label_id("cat").unwrap();
    w.append(cat, b"one").unwrap();

    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "the refusal names the holder: {msg}"
    );
    assert!(matches!(
        Store::create(&path, small(20_000)).unwrap_err(),
        StoreError::Locked { .. }
    ));

    // A reader sees every acknowledged change, and its own writes stay in its copy.
    let mut r = Store::open_snapshot(&path).unwrap();
    assert!(!r.is_writer());
    assert_eq!(r.counts(), vec![1]);
    w.append(cat, b"two").unwrap();
    w.set_state(b"state").unwrap();
    let mut r2 = Store::open_snapshot(&path).unwrap();
    assert_eq!(r2.counts(), vec![2]);
    assert_eq!(r2.state().unwrap().as_deref(), Some(&b"state"[..]));
    r.append(cat, b"only in the copy").unwrap();
    drop(w);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.counts(), vec![2], "a snapshot never writes the file");
}

#[test]
fn a_damaged_store_is_refused_then_repaired_with_every_intact_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.store");
    let mut s = Store::create(&path, small(60_000)).unwrap();
    let a = s.label_id("a").unwrap();
    let b = s.label_id("b").unwrap();
    let mut want = std::collections::BTreeMap::new();
    for i in 0..120u32 {
        let l = if i % 3 == 0 { a } else { b };
        let payload = i.to_le_bytes().repeat(30);
        let seq = s.append(l, &payload).unwrap();
        want.insert(seq, payload);
    }
    s.set_state(b"state").unwrap();
    let geo = s.geometry();
    drop(s);
    // Zero the header of the segment holding the first record: its records are hidden.
    let mut bytes = std::fs::read(&path).unwrap();
    let seg = geo.segment_of(Store::open_snapshot(&path).unwrap().records()[0].offset);
    let at = geo.segment_offset(seg) as usize;
    bytes[at..at + 20].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let e = Store::open(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Damaged { .. }), "{msg}");
    assert!(msg.contains("--repair"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was written");
    let snap = Store::open_snapshot(&path).unwrap();
    let r = snap.open_report();
    assert_eq!(r.damaged_segments, 1, "{r:?}");
    assert!(r.unreachable > 0 && (snap.len() as u32) < 120, "{r:?}");

    let report = Store::repair(&path).unwrap();
    assert_eq!(report.records, 120, "{report:?}");
    // The hidden segment held the two label records too.
    assert_eq!(report.recovered as u32 + 2, r.unreachable);
    assert_eq!(report.labels, 2);
    assert!(report.state);
    assert_eq!(std::fs::read(&report.kept_as).unwrap(), bytes);
    let mut s = Store::open(&path).unwrap();
    assert!(!s.open_report().has_findings());
    for (seq, payload) in &want {
        assert_eq!(
            s.read(*seq).unwrap().as_ref(),
            Some(payload),
            "record {seq}"
        );
    }
    assert_eq!(s.label_name(a).unwrap(), "a");
    assert_eq!(s.state().unwrap().as_deref(), Some(&b"state"[..]));
    s.append(a, b"and it writes again").unwrap();
}

#[test]
fn a_corrupt_record_met_while_sampling_is_skipped_and_reported_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.store");
    let mut s = Store::create(&path, small(20_000)).unwrap();
    let a = s.label_id("a").unwrap();
    for i in 0..10u32 {
        s.append(a, &i.to_le_bytes().repeat(4)).unwrap();
    }
    // A bit flips under the running writer (the file is mapped shared).
    let off = s.records()[3].offset as u64 + 20 + 2;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&[b[0] ^ 0x40]).unwrap();
    }
    let got = s.sample_balanced(31, 1, None).unwrap();
    assert_eq!(got.len(), 9);
    assert_eq!(s.bad_reads(), 1);
    // Appends go on; the record stays, so the next open reports it.
    s.append(a, b"more").unwrap();
    drop(s);
    assert!(matches!(
        Store::open(&path).unwrap_err(),
        StoreError::Damaged { .. }
    ));
}

#[test]
fn create_leaves_nothing_behind_and_a_blank_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.store");
    // What a create cut short by an older version left: a sized file of zeros.
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let s = Store::open_or_create(&path, small(20_000)).unwrap();
    assert_eq!(s.len(), 0);
    drop(s);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "b.store" || n == "b.store.lock"),
        "{names:?}"
    );
    // A folder is not a store.
    let e = Store::open_snapshot(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::NotAFile { .. }), "{e}");
}
