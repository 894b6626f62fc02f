//! Inputs the `scheduler` fuzz target once failed on, minimised, replayed through the same
//! decoder and checks (`downpour::sim::fuzz_one`). Each is named after what it found.

use downpour::sim;

fn replay(input: &[u8]) {
    sim::quiet_deliberate_panics();
    sim::fuzz_one(input);
}

#[test]
fn empty_and_tiny_inputs() {
    replay(&[]);
    for b in 0..=255u8 {
        replay(&[b]);
        replay(&[b; 40]);
    }
}

/// robots.txt with `Crawl-delay` read, then the next fetch to the host went out after only
/// the policy's delay (the pace was planned when the response ended, before the rules were
/// known). Fixed in `Polite::set_crawl_delay` (counts from the last response's end).
#[test]
fn crawl_delay_counts_from_the_robots_txt_response() {
    replay(&[
        0xff, 0xff, 0xff, 0x2d, 0x3a, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x06, 0xff, 0x00, 0xff, 0xfa,
        0x00, 0xff, 0x8b, 0x00, 0xfa, 0xff, 0x01, 0xff, 0x2e, 0x00, 0x06, 0x04, 0x00, 0x06, 0x06,
        0x06, 0x9f,
    ]);
}

/// A second `cancel` of a cancelled request returns false (the checker once said otherwise).
#[test]
fn cancel_twice() {
    replay(&[
        0xb4, 0x9b, 0x26, 0x00, 0x00, 0xdb, 0x26, 0x00, 0x00, 0x26, 0x5d, 0x00, 0x00, 0x00, 0x04,
        0xfe, 0xfe, 0x32, 0x26, 0x5d, 0x00, 0x00, 0xe7, 0xe7, 0xe7, 0xe7, 0xe7, 0xe7, 0x6f, 0x04,
        0x24, 0x5b,
    ]);
}

/// `FUZZ_REPLAY=path/to/crash cargo test --test fuzz_regressions replay_file -- --nocapture`
/// replays a file the fuzzer wrote (a no-op without the variable).
#[test]
fn replay_file() {
    if let Some(path) = std::env::var_os("FUZZ_REPLAY") {
        replay(&std::fs::read(&path).expect("FUZZ_REPLAY names a readable file"));
    }
}
