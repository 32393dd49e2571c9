//! Property test: the ring against a trivial model (a `VecDeque` and the eviction rule written
//! out plainly), through label updates, appends, removals, state updates and reopens.

mod common;

use std::collections::VecDeque;

use anytime_core::ring::layout::record_size;
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Label(u8),
    Append(u8, u8, u8),
    Remove(u8),
    State(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..6).prop_map(Op::Label),
        8 => (any::<u8>(), 0u8..=16, any::<u8>()).prop_map(|(l, n, f)| Op::Append(l, n, f)),
        1 => any::<u8>().prop_map(Op::Remove),
        1 => (0u8..=16).prop_map(Op::State),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    capacity: u64,
    labels: Vec<String>,
    records: VecDeque<(u32, u16, u8, Vec<u8>)>,
    state: Option<Vec<u8>>,
    next_seq: u32,
}

impl Model {
    fn live(&self) -> u64 {
        let r: u64 = self
            .records
            .iter()
            .map(|r| record_size(r.3.len() as u32) as u64)
            .sum();
        let l: u64 = self
            .labels
            .iter()
            .map(|n| record_size(n.len() as u32) as u64)
            .sum();
        r + l
            + self
                .state
                .as_ref()
                .map_or(0, |s| record_size(s.len() as u32) as u64)
    }

    fn count(&self, l: u16) -> u32 {
        self.records.iter().filter(|r| r.1 == l).count() as u32
    }

    /// Evict from the label with most records (the incoming one counted), oldest first;
    /// ties: the label whose oldest record is oldest.
    fn evict(&mut self, incoming: Option<u16>) -> bool {
        let eff = |m: &Model, l: u16| m.count(l) + u32::from(incoming == Some(l));
        let top = (0..self.labels.len() as u16)
            .map(|l| eff(self, l))
            .max()
            .unwrap_or(0);
        let mut victim = self.records.iter().position(|r| eff(self, r.1) == top);
        if victim.is_none() {
            let top = (0..self.labels.len() as u16)
                .map(|l| self.count(l))
                .max()
                .unwrap_or(0);
            victim = self.records.iter().position(|r| self.count(r.1) == top);
        }
        match victim {
            Some(i) => {
                self.records.remove(i);
                true
            }
            None => false,
        }
    }

    fn reserve(&mut self, size: u32, incoming: Option<u16>) {
        while self.live() + size as u64 > self.capacity {
            assert!(self.evict(incoming), "model ran out of evictable records");
        }
    }
}

fn check(ring: &mut MemRing, m: &Model) {
    let snap = snapshot(ring);
    let want: Vec<(u32, u16, Vec<u8>)> =
        m.records.iter().map(|r| (r.0, r.1, r.3.clone())).collect();
    let got: Vec<(u32, u16, Vec<u8>)> = snap
        .records
        .iter()
        .map(|(s, (l, p))| (*s, *l, p.clone()))
        .collect();
    assert_eq!(got, want);
    let flags: Vec<u8> = ring.records().iter().map(|r| r.flags).collect();
    assert_eq!(flags, m.records.iter().map(|r| r.2).collect::<Vec<_>>());
    let names: Vec<Option<String>> = m.labels.iter().cloned().map(Some).collect();
    assert_eq!(snap.labels, names);
    assert_eq!(snap.state, m.state);
    for (i, l) in ring.labels().iter().enumerate() {
        assert_eq!(l.count, m.count(i as u16));
    }
    assert_eq!(ring.live_bytes(), m.live());
    assert!(ring.live_bytes() <= ring.geometry().capacity);
}

fn run(ops: Vec<Op>, capacity: u64) {
    let geo = small_geometry(capacity);
    let mut ring = create(geo);
    let mut m = Model {
        capacity,
        next_seq: 1,
        ..Model::default()
    };
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Label(k) => {
                let name = format!("label-{k}");
                let id = ring.label_id(&name).unwrap();
                match m.labels.iter().position(|n| *n == name) {
                    Some(j) => assert_eq!(id as usize, j),
                    None => {
                        m.reserve(record_size(name.len() as u32), None);
                        m.labels.push(name);
                        m.next_seq += 1;
                        assert_eq!(id as usize, m.labels.len() - 1);
                    }
                }
            }
            Op::Append(l, n, f) => {
                if m.labels.is_empty() {
                    assert!(ring.append(0, f, b"x").is_err());
                    continue;
                }
                let label = l as u16 % m.labels.len() as u16;
                let p = payload(i, n as usize);
                let seq = ring.append(label, f, &p).unwrap();
                m.reserve(record_size(n as u32), Some(label));
                assert_eq!(seq, m.next_seq);
                m.next_seq += 1;
                m.records.push_back((seq, label, f, p));
            }
            Op::Remove(k) => {
                if m.records.is_empty() {
                    continue;
                }
                let j = k as usize % m.records.len();
                let seq = m.records[j].0;
                assert!(ring.remove(seq).unwrap());
                m.records.remove(j);
            }
            Op::State(n) => {
                let p = payload(i + 7, n as usize);
                ring.set_state(&p).unwrap();
                m.reserve(record_size(n as u32), None);
                m.state = Some(p);
                m.next_seq += 1;
            }
            Op::Reopen => {
                ring = reopen(ring.into_flash().into_inner());
                assert_eq!(ring.open_report().corrupt, 0);
            }
        }
        check(&mut ring, &m);
    }
    let mut ring = reopen(ring.into_flash().into_inner());
    check(&mut ring, &m);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn ring_matches_model(ops in proptest::collection::vec(op(), 1..160), cap in 300u64..700) {
        run(ops, cap);
    }
}
