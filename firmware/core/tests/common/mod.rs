//! Helpers shared by the ring tests: a std-backed ring over the NOR model and snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;

use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::{Geometry, LabelRef, RecordRef, Ring, MAX_LABEL_NAME};

/// Index and label table as fixed-capacity `heapless` vectors: the no-allocation path.
pub type Index = heapless::Vec<RecordRef, 512>;
pub type Labels = heapless::Vec<LabelRef, 16>;
pub type MemRing = Ring<MemFlash<Vec<u8>>, Index, Labels>;

/// A small geometry: 128-byte segments, payloads up to 16 bytes.
pub fn small_geometry(capacity: u64) -> Geometry {
    Geometry::for_capacity(capacity, 128, 16).expect("geometry")
}

pub fn create(geo: Geometry) -> MemRing {
    let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], 64);
    Ring::create(flash, geo, Index::new(), Labels::new()).expect("create")
}

/// A store of `geo` with one label, "alpha" (id 0), and `n` data records of it, the `i`th
/// holding `payload(i, len)`.
pub fn alpha_store(geo: Geometry, n: usize, len: usize) -> MemRing {
    let mut ring = create(geo);
    let a = ring.label_id("alpha").expect("label");
    for i in 0..n {
        ring.append(a, 0, &payload(i, len)).expect("append");
    }
    ring
}

pub fn reopen(bytes: Vec<u8>) -> MemRing {
    Ring::open(MemFlash::new(bytes, 64), Index::new(), Labels::new()).expect("reopen")
}

/// Everything a store holds, read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snap {
    pub records: BTreeMap<u32, (u16, Vec<u8>)>,
    pub labels: Vec<Option<String>>,
    pub state: Option<Vec<u8>>,
}

pub fn snapshot(ring: &mut MemRing) -> Snap {
    let mut s = Snap::default();
    let recs: Vec<RecordRef> = ring.records().to_vec();
    let mut buf = vec![0u8; 4096];
    for r in recs {
        let n = ring.read_payload(&r, &mut buf).expect("payload");
        s.records.insert(r.seq, (r.label, buf[..n].to_vec()));
    }
    for id in 0..ring.labels().len() {
        let mut nb = [0u8; MAX_LABEL_NAME];
        s.labels
            .push(ring.label_name(id as u16, &mut nb).ok().map(str::to_string));
    }
    if let Some(n) = ring.read_state(&mut buf).expect("state") {
        s.state = Some(buf[..n].to_vec());
    }
    s
}

/// Deterministic payload for step `i`.
pub fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7 + 1) as u8).collect()
}
