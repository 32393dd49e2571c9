//! Fuzz target: random label updates, appends, removals, state updates, reopens and power
//! cuts on the ring buffer; see `harness.rs` for the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
