//! Soak: one million appends through a small store (thousands of wrap-arounds), labels
//! arriving at very different rates. Counts stay exact and the store stays class-balanced.

mod common;

use anytime_core::ring::Geometry;
use anytime_core::rng::SplitMix64;
use common::*;

#[test]
fn million_appends_stay_balanced() {
    const N: u32 = 1_000_000;
    // 256-byte segments, 8-byte payloads (32-byte records): about 26 records live.
    let geo = Geometry::for_capacity(1000, 256, 8).unwrap();
    let mut ring = create(geo);
    let names = ["a", "b", "c", "d", "e"];
    let ids: Vec<u16> = names.iter().map(|n| ring.label_id(n).unwrap()).collect();
    let mut rng = SplitMix64::new(42);
    let mut appended = [0u64; 5];
    for i in 0..N {
        // Skewed arrivals: label a is 16x more frequent than label e.
        let x = rng.below(31);
        let k = match x {
            0..16 => 0,
            16..24 => 1,
            24..28 => 2,
            28..30 => 3,
            _ => 4,
        };
        let p = (i as u64).to_le_bytes();
        ring.append(ids[k], 0, &p).unwrap();
        appended[k] += 1;
    }
    assert!(appended.iter().all(|&a| a > 10_000));
    assert!(
        ring.segments_opened() > 100 * geo.segment_count,
        "wrapped {} segments",
        ring.segments_opened()
    );
    let counts: Vec<u32> = ring.labels().iter().map(|l| l.count).collect();
    let total: u32 = counts.iter().sum();
    assert_eq!(total as usize, ring.len());
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(hi - lo <= 1, "unbalanced: {counts:?}");
    assert!(ring.live_bytes() <= geo.capacity);
    assert!(
        ring.live_bytes() + 32 > geo.capacity - 32 * 5,
        "store should be full"
    );
    // The newest record of every label is kept, and everything survives a reopen intact.
    let before = snapshot(&mut ring);
    let newest = before.records.values().last().unwrap().1.clone();
    assert_eq!(newest, (N as u64 - 1).to_le_bytes().to_vec());
    let mut re = reopen(ring.into_flash().into_inner());
    assert_eq!(snapshot(&mut re), before);
    assert_eq!(re.open_report().corrupt, 0);
}
