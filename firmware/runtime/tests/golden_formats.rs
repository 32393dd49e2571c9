//! Golden byte files of the runtime's persistent formats, committed under `tests/data/`:
//! a change that stops reading a file written by an earlier build fails here.
//!
//! - `store_v1.store`: a token store of format version 1 (`firmware/core/FORMAT.md`) with
//!   two labels, three records (one removed) and a state blob; opened by today's `Store`.
//!
//! - `stats_v1.bin`: a private learner's per-label token statistics file (`FORMAT.md` §4.1)
//!   with labels 0 and 3, label 3 rewritten (both its slots used); read by `StatsFile`.
//! - `generator_v1.bin`: generator parameters (`FORMAT.md` §4.2) of tiny dims.
//!
//! The learner's state blob (versions 1 and 2) has its golden files in the same folder,
//! read by `learner.rs`'s unit tests (the blob's codec is private). Files are written by
//! these tests under `ANYTIME_EDGE_WRITE_GOLDEN=1`, only where absent (a new version gets
//! a new file; an old one is never rewritten).

use std::path::PathBuf;

use anytime_core::ring::FORMAT_VERSION;
use anytime_runtime::private::{
    Generator, GeneratorDims, GeneratorParams, StatsFile, StatsTable, STATS_HEADER_LEN,
};
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

/// Sample `i` of the golden statistics: `[4, 3]` values in eighths (exact in f32).
fn stats_sample(i: u32) -> Vec<f32> {
    (0..12u32)
        .map(|j| ((i * 5 + j * 3) % 17) as f32 / 8.0 - 1.0)
        .collect()
}

/// The table the golden statistics file holds: label 0 of 9 samples, label 3 of 8.
fn stats_table() -> StatsTable {
    let mut t = StatsTable::new(3, 4).unwrap();
    for i in 0..17 {
        t.observe(if i < 9 { 0 } else { 3 }, &stats_sample(i))
            .unwrap();
    }
    t
}

#[test]
fn stats_v1_golden_file_reads_with_its_labels() {
    let path = data("stats_v1.bin");
    if write_golden() && !path.exists() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("stats.bin");
        let mut f = StatsFile::open_or_create(&fresh, 3, 4).unwrap();
        for i in 0..17 {
            f.observe(if i < 9 { 0 } else { 3 }, &stats_sample(i))
                .unwrap();
        }
        std::fs::copy(&fresh, &path).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"AESF\x01\x00", "magic and version 1");
    let slot = anytime_runtime::private::slot_len(3);
    assert_eq!(
        bytes.len(),
        STATS_HEADER_LEN + 8 * slot,
        "labels 0..=3, two slots each"
    );
    let table = StatsFile::read(&path, 3, 4).unwrap();
    assert_eq!(table, stats_table());
    assert_eq!(table.published_labels(), vec![0, 3]);
    // Opening to write (from a copy) and adding samples keeps reading; a new label's
    // first samples stay in memory until its 8th.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("stats.bin");
    std::fs::copy(&path, &copy).unwrap();
    let mut f = StatsFile::open_or_create(&copy, 3, 4).unwrap();
    f.observe(3, &stats_sample(20)).unwrap();
    f.observe(0, &stats_sample(21)).unwrap();
    f.observe(1, &stats_sample(22)).unwrap();
    let back = StatsFile::read(&copy, 3, 4).unwrap();
    assert_eq!(back.get(3).unwrap().samples(), 9);
    assert!(back.get(1).is_none(), "one sample of label 1: not written");
    assert_eq!(back.get(0).unwrap().samples(), 10, "10 samples: written");
}

#[test]
fn generator_v1_golden_file_reads_its_parameters() {
    let dims = GeneratorDims {
        width: 3,
        tokens: 5,
        embed: 2,
        hidden: 4,
        components: 2,
    };
    let mut params = GeneratorParams::zeros(&dims);
    for (t, tensor) in params.tensors_mut().into_iter().enumerate() {
        for (i, x) in tensor.iter_mut().enumerate() {
            *x = (t * 100 + i) as f32 / 64.0 - 1.0;
        }
    }
    let gen = Generator::from_params(dims, params).unwrap();
    let path = data("generator_v1.bin");
    if write_golden() && !path.exists() {
        std::fs::write(&path, gen.to_bytes()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"AEGN\x01\x00", "magic and version 1");
    let read = Generator::from_bytes(&bytes, &dims).unwrap();
    assert_eq!(read.params, gen.params);
    assert_eq!(
        read.to_bytes(),
        bytes,
        "this build writes other bytes than version 1's"
    );
}
