//! Criterion benches of the core alone, under a virtual clock, with a network that answers
//! every fetch at once (pages `200`, robots.txt `404`).
//!
//! - `lifecycle/*`: whole request lifecycles (enqueue → fetch action → 200 response →
//!   callbacks run → `handle_callback`) for a batch of 100,000 requests over 10,000 hosts;
//!   the throughput line is lifecycles per second. `polite_allow_all`, `polite_robots`
//!   (robots.txt fetched once per host) and `fifo` start from a fresh scheduler per batch;
//!   the `*_warm` ones reuse one scheduler for every batch.
//! - `decision/*`: the cost of one decision (pop, dispatch, complete, re-enqueue) at a
//!   constant queue depth of 1k … 1M requests over depth/10 hosts; the time is per decision.
//! - `decision_no_enqueue/*`: the same without the re-enqueue in the timing: finished
//!   requests are enqueued again in chunks, between timings (the depth moves by at most
//!   a tenth).
//!
//! URLs are built outside the timings, and finished requests are dropped outside them.
//! Run with `cargo bench --bench core -- --warm-up-time 1 --measurement-time 3`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{epoch, requests, scheduler, Driver, Make, Req};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use downpour::{Fifo, Polite, Scheduler};

const BATCH: usize = 100_000;
const HOSTS: usize = 10_000;

/// One timed batch: enqueue every request, then run to idle. Finished requests go into
/// `kept`, whose buffer is reused, so the timing holds neither their drop (their URLs were
/// built outside) nor the first touch of fresh pages for them.
fn timed_batch(driver: &mut Driver, mut batch: Vec<Req>, kept: &mut Vec<Req>) -> Duration {
    let n = batch.len();
    kept.clear();
    let start = wall_clock();
    for request in batch.drain(..) {
        let now = driver.now;
        driver
            .scheduler
            .enqueue(now, request)
            .expect("valid request");
    }
    let finished = driver.run_to_idle(kept);
    let elapsed = start.elapsed();
    assert_eq!(finished, n);
    elapsed
}

/// Runs one batch outside the timings and checks that every request succeeded.
fn check(scheduler: Scheduler<Req>, template: &[Req], robots_fetches: usize) {
    let mut driver = Driver::new(scheduler, epoch());
    timed_batch(&mut driver, template.to_vec(), &mut Vec::new());
    let stats = driver.scheduler.stats();
    assert_eq!(stats.succeeded, template.len() as u64);
    assert_eq!(stats.robots_fetches as usize, robots_fetches);
    assert!(driver.scheduler.is_idle());
}

fn bench_lifecycles(c: &mut Criterion) {
    let template = requests(BATCH, HOSTS);
    let t0 = epoch();
    let mut kept = Vec::with_capacity(BATCH);

    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    // A fresh scheduler per batch: its tables grow from empty (and it is dropped untimed).
    let cases: [(&str, Make, usize); 3] = [
        (
            "polite_allow_all",
            || scheduler(Polite::new().allow_all(true)),
            0,
        ),
        // robots.txt enforced: fetched (404, allow all) once per host of the batch.
        ("polite_robots", || scheduler(Polite::new()), HOSTS),
        ("fifo", || scheduler(Fifo::new()), 0),
    ];
    for (name, make, robots_fetches) in cases {
        let mut checked = false;
        group.bench_function(BenchmarkId::new(name, "100k_req_10k_hosts"), |b| {
            if !std::mem::replace(&mut checked, true) {
                check(make(), &template, robots_fetches);
            }
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut driver = Driver::new(make(), t0);
                    total += timed_batch(&mut driver, template.clone(), &mut kept);
                    black_box(driver);
                }
                total
            });
        });
    }

    // The same through one long-lived scheduler: its slab, host table and queues are warm
    // (hosts are forgotten and learnt again between batches, as in a long crawl).
    let warm_cases: [(&str, Make); 2] = [
        ("polite_allow_all_warm", || {
            scheduler(Polite::new().allow_all(true))
        }),
        ("fifo_warm", || scheduler(Fifo::new())),
    ];
    for (name, make) in warm_cases {
        // Set up lazily: only when the filter selects the bench.
        let mut warm: Option<Driver> = None;
        group.bench_function(BenchmarkId::new(name, "100k_req_10k_hosts"), |b| {
            let driver = warm.get_or_insert_with(|| Driver::new(make(), t0));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += timed_batch(driver, template.clone(), &mut kept);
                    // The clock moves on past every host's delay, as between batches.
                    driver.now += Duration::from_secs(2);
                    driver.scheduler.handle_timeout(driver.now);
                }
                total
            });
        });
    }
    group.finish();
}

fn bench_decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    let policies: [(&str, Make); 2] = [
        ("polite", || scheduler(Polite::new().allow_all(true))),
        ("fifo", || scheduler(Fifo::new())),
    ];
    for (name, make) in policies {
        for depth in [1_000usize, 10_000, 100_000, 1_000_000] {
            // Filled lazily: only when the filter selects the bench.
            let mut slot: Option<Driver> = None;
            group.bench_function(BenchmarkId::new(name, depth), |b| {
                let driver = slot.get_or_insert_with(|| {
                    let mut driver = Driver::new(make(), epoch());
                    let now = driver.now;
                    for request in requests(depth, depth / 10) {
                        driver
                            .scheduler
                            .enqueue(now, request)
                            .expect("valid request");
                    }
                    driver
                });
                b.iter_custom(|iters| {
                    let start = wall_clock();
                    driver.run_recycling(iters);
                    start.elapsed()
                });
            });
            if let Some(driver) = slot {
                let stats = driver.scheduler.stats();
                assert_eq!(stats.failed, 0);
                assert_eq!(stats.unfinished, depth, "the depth stayed constant");
            }
        }
    }
    group.finish();

    let mut group = c.benchmark_group("decision_no_enqueue");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (name, make) in policies {
        for depth in [1_000usize, 10_000, 100_000, 1_000_000] {
            let chunk = (depth / 10).min(1_000);
            let mut slot: Option<Driver> = None;
            let mut kept = Vec::with_capacity(chunk);
            group.bench_function(BenchmarkId::new(name, depth), |b| {
                let driver = slot.get_or_insert_with(|| {
                    let mut driver = Driver::new(make(), epoch());
                    let now = driver.now;
                    for request in requests(depth, depth / 10) {
                        driver
                            .scheduler
                            .enqueue(now, request)
                            .expect("valid request");
                    }
                    driver
                });
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(chunk as u64);
                        let start = wall_clock();
                        driver.run_keeping(n as usize, &mut kept);
                        total += start.elapsed();
                        left -= n;
                        let now = driver.now;
                        for request in kept.drain(..) {
                            driver
                                .scheduler
                                .enqueue(now, request)
                                .expect("valid request");
                        }
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

#[allow(clippy::disallowed_methods)] // timing the bench itself needs the real clock
fn wall_clock() -> Instant {
    Instant::now()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_lifecycles, bench_decisions
}
criterion_main!(benches);
