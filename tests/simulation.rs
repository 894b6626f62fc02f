//! The core against a fake web in virtual time: many seeds, every invariant checked after
//! every step, then liveness (everything drains). See `downpour::sim`.
//!
//! `SIM_RUNS` seeds (default 12) starting at `SIM_SEED` (default 1). A failing seed prints the
//! command that replays it alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use downpour::sim::{self, PolicyKind, Setup};

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-text panic)".to_string()
    }
}

/// Runs `setup`, returning the panic message of a broken invariant.
fn try_simulate(setup: &Setup) -> Result<sim::Report, String> {
    catch_unwind(AssertUnwindSafe(|| sim::simulate(setup))).map_err(message)
}

#[test]
fn every_seed_keeps_every_invariant() {
    sim::quiet_deliberate_panics();
    let first = env("SIM_SEED", 1);
    let runs = env("SIM_RUNS", 12);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(runs.max(1) as usize) as u64;
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(sim::Report::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                // Enough failures to see a pattern; no need to run the rest.
                if i >= runs || failures.lock().unwrap().len() >= 5 {
                    return;
                }
                let seed = first + i;
                match try_simulate(&Setup::from_seed(seed)) {
                    Ok(report) => {
                        let mut t = totals.lock().unwrap();
                        t.requests += report.requests;
                        t.fetches += report.fetches;
                        t.virtual_time += report.virtual_time;
                        for (kind, n) in report.outcomes {
                            *t.outcomes.entry(kind).or_default() += n;
                        }
                    }
                    Err(e) => failures.lock().unwrap().push((seed, e)),
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    if let Some((seed, error)) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|f| f.0).collect();
        panic!(
            "simulation failed for seeds {seeds:?}; first, seed {seed}: {error}\n\
             reproduce with: SIM_SEED={seed} SIM_RUNS=1 cargo test --test simulation"
        );
    }
    let totals = totals.into_inner().unwrap();
    println!(
        "{runs} seeds: {} requests, {} hops, {:?} virtual time; outcomes {:?}",
        totals.requests, totals.fetches, totals.virtual_time, totals.outcomes
    );
    // The fake web must keep exercising every way a request can end, or the run proves little.
    if runs >= 12 {
        for kind in [
            "ok",
            "status",
            "reset",
            "timeout",
            "body_too_large",
            "disallowed",
            "robots_unavailable",
            "too_many_redirects",
            "redirect_loop",
            "bad_redirect",
            "retry_after_too_long",
            "callback_panicked",
        ] {
            assert!(
                totals.outcomes.get(kind).is_some_and(|&n| n > 0),
                "no request ended {kind:?} in {runs} seeds: {:?}",
                totals.outcomes
            );
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    sim::quiet_deliberate_panics();
    let seed = env("SIM_SEED", 1);
    let a = sim::simulate(&Setup::from_seed(seed));
    let b = sim::simulate(&Setup::from_seed(seed));
    assert_eq!(a.digest, b.digest, "seed {seed} ran differently twice");
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!((a.fetches, a.virtual_time), (b.fetches, b.virtual_time));
    let c = sim::simulate(&Setup::from_seed(seed + 1));
    assert_ne!(a.digest, c.digest, "the digest does not see the trace");
}

#[test]
fn the_checker_catches_an_impolite_policy() {
    sim::quiet_deliberate_panics();
    // Fifo sends to a host as fast as it can; hold it to a polite policy's rules.
    let mut setup = Setup::from_seed(3);
    setup.policy = PolicyKind::Fifo;
    setup.expect = PolicyKind::Polite {
        per_host: 1,
        delay: Duration::from_secs(1),
        allow_all: true,
        adaptive: false,
    };
    setup.config.concurrency = 64;
    let error = try_simulate(&setup).expect_err("an impolite run passed");
    assert!(
        error.contains("hops in flight to") || error.contains("may be fetched again"),
        "{error}"
    );
}

#[test]
fn the_checker_catches_robots_txt_ignored() {
    sim::quiet_deliberate_panics();
    let mut setup = Setup::from_seed(4);
    let polite = |allow_all| PolicyKind::Polite {
        per_host: 1,
        delay: Duration::from_secs(1),
        allow_all,
        adaptive: false,
    };
    setup.policy = polite(true);
    setup.expect = polite(false);
    let error = try_simulate(&setup).expect_err("a run ignoring robots.txt passed");
    assert!(error.contains("before robots.txt"), "{error}");
}

#[test]
fn requests_round_trip_through_serde() {
    let url = downpour::Url::parse("http://a.test/x").unwrap();
    let mut request = sim::SimRequest::new(7, url.clone());
    request.follow_ups.push((8, url.clone()));
    request.log = vec![
        sim::Event::Status(200),
        sim::Event::Headers,
        sim::Event::Success(200),
        sim::Event::Done {
            ok: true,
            error: None,
            redirects: 0,
            retries: 1,
            url,
        },
    ];
    let json = serde_json::to_string(&request).unwrap();
    let back: sim::SimRequest = serde_json::from_str(&json).unwrap();
    assert_eq!(back.log, request.log);
    assert_eq!(back.follow_ups, request.follow_ups);
}
