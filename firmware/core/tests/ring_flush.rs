//! Flush discipline, against a page-cache model of the memory-mapped file backend: writes and
//! erases change a cached image, `flush` makes it durable, and a crash keeps, for each page
//! changed since the last flush, either its flushed or its current content (pages are written
//! back whole and in any order).
//! - Every acknowledged operation is durable: right after `append` (or `label_id`,
//!   `set_state`, `remove`) returns, the flushed image alone reopens to exactly the store.
//! - A crash in the middle of an operation, with any mix of written-back pages, reopens to a
//!   store between the states before and after that operation, with no corrupt record.

mod common;

use anytime_core::error::Error;
use anytime_core::flash::Flash;
use anytime_core::rng::SplitMix64;
use common::*;

const PAGE: usize = 64;

/// A cached flash: `cur` is what reads see, `durable` what survives a crash untouched.
struct PageCache {
    cur: Vec<u8>,
    durable: Vec<u8>,
    rng: SplitMix64,
    /// Crash images taken at random points since the last `take_crashes`.
    crashes: Vec<Vec<u8>>,
    /// Take a crash image on average every this many writes/erases.
    every: u64,
}

impl PageCache {
    fn maybe_crash(&mut self) {
        if self.rng.below(self.every) != 0 {
            return;
        }
        let mut img = self.durable.clone();
        for p in (0..img.len()).step_by(PAGE) {
            let r = p..p + PAGE;
            if self.cur[r.clone()] != img[r.clone()] && self.rng.below(2) == 0 {
                img[r.clone()].copy_from_slice(&self.cur[r]);
            }
        }
        self.crashes.push(img);
    }
}

impl Flash for &mut PageCache {
    fn capacity(&self) -> u32 {
        self.cur.len() as u32
    }
    fn erase_size(&self) -> u32 {
        PAGE as u32
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        let o = offset as usize;
        buf.copy_from_slice(&self.cur[o..o + buf.len()]);
        Ok(())
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        self.maybe_crash();
        let o = offset as usize;
        for (c, d) in self.cur[o..o + data.len()].iter_mut().zip(data) {
            *c &= d;
        }
        Ok(())
    }
    fn erase(&mut self, offset: u32, len: u32) -> Result<(), Error> {
        self.maybe_crash();
        let o = offset as usize;
        self.cur[o..o + len as usize].fill(0xFF);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.durable.copy_from_slice(&self.cur);
        Ok(())
    }
}

#[test]
fn acknowledged_means_flushed_and_crashes_between_flushes_are_safe() {
    for seed in 0..6 {
        run(seed);
    }
}

fn run(seed: u64) {
    let geo = small_geometry(300);
    let len = geo.region_len() as usize;
    let mut cache = PageCache {
        cur: vec![0u8; len],
        durable: vec![0u8; len],
        rng: SplitMix64::new(100 + seed),
        crashes: Vec::new(),
        every: 3,
    };
    let mut ring = anytime_core::ring::Ring::create(&mut cache, geo, Index::new(), Labels::new())
        .expect("create");
    // A crash inside `create` leaves no store (NotAStore): creation is not an acknowledgement.
    ring.flash_mut().crashes.clear();
    let mut state = Snap::default();
    let mut seqs = Vec::new();
    let mut rng = SplitMix64::new(seed);
    let mut checked = 0;
    for step in 0..400usize {
        match rng.below(16) {
            0 => {
                ring.label_id(["cat", "dog", "emu", "yak"][rng.below(4) as usize])
                    .unwrap();
            }
            1 => ring
                .set_state(&payload(step, rng.below(17) as usize))
                .unwrap(),
            2 if !seqs.is_empty() => {
                let k = rng.below(seqs.len() as u64) as usize;
                ring.remove(seqs[k]).unwrap();
            }
            _ if !ring.labels().is_empty() => {
                let l = rng.below(ring.labels().len() as u64) as u16;
                let p = payload(step, rng.below(17) as usize);
                seqs.push(ring.append(l, 0, &p).unwrap());
            }
            _ => continue,
        }
        let flash = ring.flash_mut();
        let now = snapshot(&mut reopen(flash.cur.clone()));
        // Acknowledged: the flushed image alone holds everything.
        assert_eq!(
            snapshot(&mut reopen(flash.durable.clone())),
            now,
            "seed {seed} step {step}: acknowledged but not durable"
        );
        for img in std::mem::take(&mut flash.crashes) {
            let mut re = reopen(img);
            assert_eq!(re.open_report().corrupt, 0, "seed {seed} step {step}");
            assert!(
                !re.open_report().is_damaged(),
                "seed {seed} step {step}: {:?}",
                re.open_report()
            );
            assert_eq!(re.verify(), Ok(0), "seed {seed} step {step}");
            let got = snapshot(&mut re);
            for (seq, rec) in &got.records {
                let known = state.records.get(seq).or(now.records.get(seq));
                assert_eq!(
                    known,
                    Some(rec),
                    "seed {seed} step {step}: unexpected record {seq}"
                );
            }
            for (seq, rec) in &state.records {
                if now.records.get(seq) == Some(rec) {
                    assert_eq!(
                        got.records.get(seq),
                        Some(rec),
                        "seed {seed} step {step}: lost {seq}"
                    );
                }
            }
            assert!(got.labels == state.labels || got.labels == now.labels);
            assert!(got.state == state.state || got.state == now.state);
            checked += 1;
        }
        state = now;
    }
    assert!(
        ring.segments_opened() > 3 * geo.segment_count,
        "the run must wrap around"
    );
    assert!(checked > 300, "only {checked} crash images");
}
