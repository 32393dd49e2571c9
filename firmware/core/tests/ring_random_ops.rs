//! Bounded random-operations test: the fuzz harness (`fuzz/harness.rs`) on inputs from a
//! seeded generator, so the same invariants run in every `cargo test`. The fuzz target itself
//! needs nightly and cargo-fuzz, which CI does not have; by hand:
//! `cd firmware/core/fuzz && cargo +nightly fuzz run ring_ops -- -max_total_time=60`.

#[path = "../fuzz/harness.rs"]
mod harness;

use anytime_core::rng::SplitMix64;

#[test]
fn random_ops_with_power_cuts() {
    let mut rng = SplitMix64::new(2024);
    for _ in 0..300 {
        let len = 16 + rng.below(400) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        harness::run(&data);
    }
}
