//! Golden byte files of the runtime's persistent formats, committed under `tests/data/`:
//! a change that stops reading a file written by an earlier build fails here.
//!
//! - `store_v1.store`: a token store of format version 1 (`firmware/core/FORMAT.md`) with
//!   two labels, three records (one removed) and a state blob; opened by today's `Store`.
//!
//! The learner's state blob (versions 1 and 2) has its golden files in the same folder,
//! read by `learner.rs`'s unit tests (the blob's codec is private). Files are written by
//! these tests under `ANYTIME_EDGE_WRITE_GOLDEN=1`, only where absent (a new version gets
//! a new file; an old one is never rewritten).

use std::path::PathBuf;

use anytime_core::ring::FORMAT_VERSION;
use anytime_runtime::store::{Store, StoreConfig};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn write_golden() -> bool {
    std::env::var("ANYTIME_EDGE_WRITE_GOLDEN").is_ok_and(|v| v == "1")
}

/// The records of the golden store: (label name, payload).
fn records() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("cat", (0..40u8).collect()),
        ("dog", vec![0xA5; 17]),
        ("cat", b"a third record".to_vec()),
    ]
}

const STATE: &[u8] = b"learner state blob, opaque to the store";

#[test]
fn store_v1_golden_file_opens_with_its_labels_records_and_state() {
    assert_eq!(FORMAT_VERSION, 1, "a new version needs a new golden file");
    let path = data("store_v1.store");
    if write_golden() && !path.exists() {
        let cfg = StoreConfig {
            segment_size: Some(4096),
            ..StoreConfig::new(8 * 1024, 256)
        };
        let mut s = Store::create(&path, cfg).unwrap();
        let mut seqs = Vec::new();
        for (label, payload) in records() {
            let id = s.label_id(label).unwrap();
            seqs.push(s.append(id, &payload).unwrap());
        }
        assert!(s.remove(seqs[0]).unwrap());
        s.set_state(STATE).unwrap();
    }
    // Opened from a copy: opening may write (repair, lock), the committed file stays.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("store_v1.store");
    std::fs::copy(&path, &copy).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut s = Store::open(&copy).unwrap();
    assert_eq!(s.bad_reads(), 0);
    let labels = s.labels().unwrap();
    let names: Vec<(Option<String>, u32)> =
        labels.iter().map(|l| (l.name.clone(), l.count)).collect();
    assert_eq!(
        names,
        [(Some("cat".to_string()), 1), (Some("dog".to_string()), 1)]
    );
    let live: Vec<(u16, u32)> = s.records().iter().map(|r| (r.label, r.seq)).collect();
    assert_eq!(live.len(), 2, "{live:?}");
    let want = records();
    for ((label, seq), (name, payload)) in live.into_iter().zip(&want[1..]) {
        assert_eq!(s.label_name(label).unwrap(), *name);
        assert_eq!(s.read(seq).unwrap().as_deref(), Some(&payload[..]));
    }
    assert_eq!(s.state().unwrap().as_deref(), Some(STATE));
    assert_eq!(s.verify().unwrap(), 0, "records failing their CRC");
}
