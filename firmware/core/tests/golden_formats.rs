//! Golden byte files of the core's persistent formats, committed under `tests/data/`: a
//! change that stops reading a file written by an earlier build fails here. Each test
//! also checks that this build writes the same bytes (so a format change is a deliberate
//! new version, with a new file next to the old one).
//!
//! The files are written by these same tests under `ANYTIME_EDGE_WRITE_GOLDEN=1` (only
//! ever for a new version: an existing file is never rewritten).

use std::path::PathBuf;

use anytime_core::ocw::{LabelStats, OcwState, FORMAT_VERSION};
use anytime_testkit::close;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The committed file `name`, written from `fresh` first when asked (and absent).
fn golden(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = data(name);
    if std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1") && !path.exists() {
        std::fs::write(&path, fresh).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The OCW state of the golden file: three labels, one past warm-up.
fn ocw_example() -> OcwState<64> {
    let mut s = OcwState::<64>::new();
    for i in 0..7u32 {
        s.observe(3, i % 2 == 0, i % 3 == 0).unwrap();
    }
    s.observe(40, true, false).unwrap();
    for i in 0..130u32 {
        s.observe(1000, i % 4 != 0, i % 5 == 0).unwrap();
    }
    s
}

#[test]
fn ocw_state_v1_golden_file_reads_and_is_what_this_build_writes() {
    assert_eq!(FORMAT_VERSION, 1, "a new version needs a new golden file");
    let want = ocw_example();
    let mut buf = vec![0u8; OcwState::<64>::MAX_ENCODED_LEN];
    let n = want.to_slice(&mut buf).unwrap();
    let bytes = golden("ocw_state_v1.bin", &buf[..n]);
    assert_eq!(bytes[0], 1, "version byte");
    let back = OcwState::<64>::from_bytes(&bytes).unwrap();
    assert_eq!(back, want);
    // The values themselves, not only equality with this build's state.
    assert_eq!(back.len(), 3);
    let s3 = back.get(3).unwrap();
    assert_eq!(s3.n, 7);
    assert!(close(s3.c_tuned, 4.0 / 7.0, 1e-6, 0.0), "{s3:?}");
    assert!(close(s3.c_original, 3.0 / 7.0, 1e-6, 0.0), "{s3:?}");
    let s40 = back.get(40).unwrap();
    assert_eq!(
        s40,
        LabelStats {
            c_tuned: 1.0,
            c_original: 0.0,
            n: 1
        }
    );
    let s1000 = back.get(1000).unwrap();
    assert!(s1000.n >= 100, "{s1000:?}");
    assert!(s1000.c_tuned > 0.6 && s1000.c_tuned < 0.9, "{s1000:?}");
    assert_eq!(&buf[..n], &bytes[..], "this build writes other bytes");
}

/// A ring store (format v1) over the NOR model after labels, appends, evictions, a
/// compaction, state updates and a removal: the file reads back to the same contents, and
/// this build writes the same bytes for the same operations.
#[test]
fn ring_store_v1_golden_file_reads_and_is_what_this_build_writes() {
    use anytime_core::mem_flash::MemFlash;
    use anytime_core::ring::layout::FORMAT_VERSION as STORE_VERSION;
    use anytime_core::ring::{Geometry, LabelRef, RecordRef, Ring};
    type R = Ring<MemFlash<Vec<u8>>, heapless::Vec<RecordRef, 64>, heapless::Vec<LabelRef, 4>>;
    assert_eq!(STORE_VERSION, 1, "a new version needs a new golden file");
    let geo = Geometry::for_capacity(600, 128, 16).unwrap();
    let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], 64);
    let mut ring: R = Ring::create(flash, geo, heapless::Vec::new(), heapless::Vec::new()).unwrap();
    let a = ring.label_id("alpha").unwrap();
    let b = ring.label_id("beta").unwrap();
    for i in 0..40u32 {
        let p: Vec<u8> = (0..4 + i % 12).map(|j| (i * 31 + j * 7) as u8).collect();
        ring.append(if i % 3 == 0 { a } else { b }, (i % 5) as u8, &p)
            .unwrap();
        if i % 9 == 0 {
            ring.set_state(&i.to_le_bytes()).unwrap();
        }
    }
    let victim = ring.records()[3].seq;
    assert!(ring.remove(victim).unwrap());
    assert!(
        ring.segments_opened() > geo.segment_count,
        "it must have wrapped"
    );
    let want: Vec<(u32, u16, Vec<u8>)> = {
        let recs = ring.records().to_vec();
        let mut buf = [0u8; 16];
        recs.iter()
            .map(|r| {
                let n = ring.read_payload(r, &mut buf).unwrap();
                (r.seq, r.label, buf[..n].to_vec())
            })
            .collect()
    };
    let fresh = ring.into_flash().into_inner();
    let bytes = golden("ring_store_v1.bin", &fresh);
    let mut back: R = Ring::open(
        MemFlash::new(bytes.clone(), 64),
        heapless::Vec::new(),
        heapless::Vec::new(),
    )
    .unwrap();
    assert!(!back.open_report().has_findings());
    assert_eq!(back.geometry(), &geo);
    let mut buf = [0u8; 16];
    let got: Vec<(u32, u16, Vec<u8>)> = back
        .records()
        .to_vec()
        .iter()
        .map(|r| {
            let n = back.read_payload(r, &mut buf).unwrap();
            (r.seq, r.label, buf[..n].to_vec())
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(back.find_label("alpha"), Ok(Some(a)));
    assert_eq!(back.find_label("beta"), Ok(Some(b)));
    let mut st = [0u8; 8];
    assert_eq!(back.read_state(&mut st), Ok(Some(4)));
    assert_eq!(&st[..4], &36u32.to_le_bytes());
    assert_eq!(fresh, bytes, "this build writes other bytes");
}
