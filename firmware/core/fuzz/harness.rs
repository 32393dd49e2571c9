//! Shared by the `ring_ops` fuzz target and the bounded random-ops test
//! (`tests/ring_random_ops.rs`): interprets bytes as operations on a small store over the
//! NOR flash model, with power cuts, and checks after every step that
//! - a reopened store holds exactly what an uninterrupted twin holds (after a completed op),
//!   or something between the states before and after the interrupted op (after a cut);
//! - no record is ever corrupt (every payload is byte-identical to what was appended);
//! - the store stays appendable, and live bytes never exceed the capacity.
#![allow(dead_code)]

use std::collections::BTreeMap;

use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::{Geometry, LabelRef, RecordRef, Ring, MAX_LABEL_NAME};
use anytime_core::Error;

type FuzzRing = Ring<MemFlash<Vec<u8>>, heapless::Vec<RecordRef, 256>, heapless::Vec<LabelRef, 8>>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Snap {
    records: BTreeMap<u32, (u16, Vec<u8>)>,
    labels: Vec<Option<String>>,
    state: Option<Vec<u8>>,
}

fn snap(r: &mut FuzzRing) -> Snap {
    let mut s = Snap::default();
    let mut buf = [0u8; 64];
    for rec in r.records().to_vec() {
        let n = r
            .read_payload(&rec, &mut buf)
            .expect("live record must read back");
        s.records.insert(rec.seq, (rec.label, buf[..n].to_vec()));
    }
    for id in 0..r.labels().len() {
        let mut nb = [0u8; MAX_LABEL_NAME];
        s.labels
            .push(r.label_name(id as u16, &mut nb).ok().map(str::to_string));
    }
    if let Some(n) = r.read_state(&mut buf).expect("state") {
        s.state = Some(buf[..n].to_vec());
    }
    s
}

fn reopen(r: FuzzRing) -> FuzzRing {
    let bytes = r.into_flash().into_inner();
    let mut re = Ring::open(
        MemFlash::new(bytes, 64),
        heapless::Vec::new(),
        heapless::Vec::new(),
    )
    .expect("a store must always reopen");
    assert_eq!(
        re.open_report().corrupt,
        0,
        "no corruption without bit flips"
    );
    assert_eq!(re.verify(), Ok(0));
    assert!(re.live_bytes() <= re.geometry().capacity);
    re
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Label(u8),
    Append(u8, u8),
    Remove(u8),
    State(u8),
}

fn apply(r: &mut FuzzRing, op: Op, counter: u32) -> Result<(), Error> {
    match op {
        Op::Label(i) => r
            .label_id(["cat", "dog", "emu", "yak", "owl"][i as usize % 5])
            .map(|_| ()),
        Op::Append(l, n) => {
            if r.labels().is_empty() {
                return Ok(());
            }
            let label = l as u16 % r.labels().len() as u16;
            let len = n as usize % 17;
            let p: Vec<u8> = (0..len)
                .map(|j| (counter as usize * 13 + j) as u8)
                .collect();
            r.append(label, n, &p).map(|_| ())
        }
        Op::Remove(k) => {
            let n = r.records().len();
            if n == 0 {
                return Ok(());
            }
            let seq = r.records()[k as usize % n].seq;
            r.remove(seq).map(|_| ())
        }
        Op::State(n) => {
            let p: Vec<u8> = (0..n as usize % 17)
                .map(|j| (counter as usize + j) as u8)
                .collect();
            r.set_state(&p)
        }
    }
}

/// Runs the operations encoded in `data`.
pub fn run(data: &[u8]) {
    let geo = Geometry::for_capacity(320, 128, 16).expect("geometry");
    let flash = MemFlash::new(vec![0u8; geo.region_len() as usize], 64);
    let mut ring: FuzzRing =
        Ring::create(flash, geo, heapless::Vec::new(), heapless::Vec::new()).expect("create");
    let mut bytes = data.iter().copied();
    let mut counter = 0u32;
    while let Some(code) = bytes.next() {
        counter += 1;
        let arg = bytes.next().unwrap_or(0);
        let op = match code % 8 {
            0 => Op::Label(arg),
            1..=3 => Op::Append(arg, arg.rotate_right(3)),
            4 => Op::Remove(arg),
            5 => Op::State(arg),
            6 => {
                ring = reopen(ring);
                continue;
            }
            _ => {
                // Power cut during the next op, after `cut` bytes.
                let cut = u16::from_le_bytes([arg, bytes.next().unwrap_or(0)]) as u64 % 600;
                let code = bytes.next().unwrap_or(1);
                let arg = bytes.next().unwrap_or(0);
                let op = match code % 4 {
                    0 => Op::Label(arg),
                    1 => Op::Append(arg, arg.rotate_right(3)),
                    2 => Op::Remove(arg),
                    _ => Op::State(arg),
                };
                let before = snap(&mut ring);
                let mut twin = ring.clone();
                apply(&mut twin, op, counter).expect("uncut twin");
                let after = snap(&mut twin);
                ring.flash_mut().cut_after(cut);
                let res = apply(&mut ring, op, counter);
                let mut re = reopen(ring);
                let got = snap(&mut re);
                match res {
                    Ok(()) => assert_eq!(got, after, "completed op"),
                    Err(Error::FlashFailure) => {
                        for (seq, rec) in &got.records {
                            let known = before.records.get(seq).or(after.records.get(seq));
                            assert_eq!(known, Some(rec), "unexpected or corrupt record {seq}");
                        }
                        for (seq, rec) in &before.records {
                            if after.records.get(seq) == Some(rec) {
                                assert_eq!(got.records.get(seq), Some(rec), "lost record {seq}");
                            }
                        }
                        assert!(got.labels == before.labels || got.labels == after.labels);
                        assert!(got.state == before.state || got.state == after.state);
                    }
                    Err(e) => panic!("op {op:?} failed with {e}"),
                }
                ring = re;
                continue;
            }
        };
        let before_err = ring.clone();
        match apply(&mut ring, op, counter) {
            Ok(()) => {}
            // The index (256) or label table (8) is bounded in this harness; nothing else may fail.
            Err(Error::LabelTableFull) => ring = before_err,
            Err(e) => panic!("op {op:?} failed with {e}"),
        }
    }
    let final_snap = snap(&mut ring);
    let mut re = reopen(ring);
    assert_eq!(
        snap(&mut re),
        final_snap,
        "reopen must give back the same store"
    );
}
