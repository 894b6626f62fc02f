//! Arbitrary sequences of inputs into the scheduler, with every invariant checked after every
//! step and liveness at the end. The decoding and the checks live in `downpour::sim::fuzz_one`
//! so that `tests/fuzz_regressions.rs` replays crashes exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // Callbacks panic on purpose (the scheduler traps that); keep libFuzzer's abort-on-
        // panic hook for every other panic.
        downpour::sim::quiet_deliberate_panics();
    },
    |data: &[u8]| {
        downpour::sim::fuzz_one(data);
    }
);
