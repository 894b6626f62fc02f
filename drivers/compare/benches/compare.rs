//! End-to-end throughput of the three drivers, in one run, against the same local servers:
//!
//! 1. Fifo: the same URL list (40,000 requests over 8 hosts, concurrency 64) fetched by
//!    downpour-tokio, downpour-smol and downpour-blocking in turn, three rounds, best of
//!    each; smol and blocking must reach at least 0.6× tokio;
//! 2. Polite over 1,000 hosts at 100 ms delay, for each driver: achieved rate vs the
//!    theoretical hosts / delay (must be at least 95%), with politeness audited from the
//!    servers' own log (no violation allowed).
//!
//! `cargo bench -p downpour-compare --bench compare`

use std::time::{Duration, Instant};

use downpour_conformance::{violations, Probe, Servers};
use serde::{Deserialize, Serialize};

const CONCURRENCY: usize = 64;
const FIFO_HOSTS: usize = 8;
const FIFO_REQUESTS: usize = 40_000;
const POLITE_HOSTS: usize = 1_000;
const POLITE_PER_HOST: usize = 100;
const POLITE_DELAY: Duration = Duration::from_millis(100);

/// The smallest request: a URL, no callbacks.
#[derive(Serialize, Deserialize)]
struct Plain {
    url: downpour_tokio::Url,
}

impl downpour_tokio::Request for Plain {
    fn url(&self) -> &downpour_tokio::Url {
        &self.url
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    Tokio,
    Smol,
    Blocking,
}

const DRIVERS: [Driver; 3] = [Driver::Tokio, Driver::Smol, Driver::Blocking];

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Tokio => "downpour-tokio",
            Driver::Smol => "downpour-smol",
            Driver::Blocking => "downpour-blocking",
        }
    }
}

/// Runs these requests with this config and policy on a driver; returns the time the run
/// took and the counters.
fn run<R: downpour_tokio::Request + Send + 'static>(
    driver: Driver,
    runtime: &tokio::runtime::Runtime,
    config: downpour_tokio::Config,
    policy: impl downpour_tokio::Policy + 'static,
    requests: Vec<R>,
) -> (Duration, downpour_tokio::Stats) {
    match driver {
        Driver::Tokio => {
            let options = downpour_tokio::ClientOptions {
                proxy: downpour_tokio::Proxy::None,
                ..Default::default()
            };
            let mut f = downpour_tokio::Fetcher::with_options(config, policy, options).unwrap();
            assert!(f.extend(requests).is_empty());
            let started = Instant::now();
            let stats = runtime.block_on(f.run());
            (started.elapsed(), stats)
        }
        Driver::Smol => {
            let options = downpour_smol::ClientOptions {
                proxy: downpour_smol::Proxy::None,
                ..Default::default()
            };
            let mut f = downpour_smol::Fetcher::with_options(config, policy, options).unwrap();
            assert!(f.extend(requests).is_empty());
            let started = Instant::now();
            let stats = smol::block_on(f.run());
            (started.elapsed(), stats)
        }
        Driver::Blocking => {
            let options = downpour_blocking::ClientOptions {
                proxy: downpour_blocking::Proxy::None,
                ..Default::default()
            };
            let mut f = downpour_blocking::Fetcher::with_options(config, policy, options).unwrap();
            assert!(f.extend(requests).is_empty());
            let started = Instant::now();
            let stats = f.run();
            (started.elapsed(), stats)
        }
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn fifo(driver: Driver, runtime: &tokio::runtime::Runtime, urls: &[downpour_tokio::Url]) -> f64 {
    let config = downpour_tokio::Config {
        concurrency: CONCURRENCY,
        ..downpour_tokio::Config::default()
    };
    let requests = urls.iter().map(|u| Plain { url: u.clone() }).collect();
    let (took, stats) = run(
        driver,
        runtime,
        config,
        downpour_tokio::Fifo::new(),
        requests,
    );
    assert_eq!(
        stats.succeeded as usize,
        urls.len(),
        "{}: every request succeeds",
        driver.name()
    );
    rate(stats.succeeded, took)
}

/// Which drivers and parts run: `cargo bench ... -- [tokio|smol|blocking]... [fifo|polite]`
/// (everything by default).
fn wanted(word: &str) -> bool {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let drivers = ["tokio", "smol", "blocking"];
    let parts = ["fifo", "polite", "clients"];
    let group: &[&str] = if drivers.contains(&word) {
        &drivers
    } else {
        &parts
    };
    !args.iter().any(|a| group.contains(&a.as_str())) || args.iter().any(|a| a == word)
}

fn main() {
    let drivers: Vec<Driver> = DRIVERS
        .into_iter()
        .filter(|d| wanted(d.name().trim_start_matches("downpour-")))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // ----- Fifo: the three drivers, same servers, same URL list -----
    if wanted("fifo") {
        fifo_part(&drivers, &runtime);
    }
    if wanted("polite") {
        polite_part(&drivers, &runtime);
    }
}

/// The HTTP clients alone, for reference: isahc with `buffer_unordered`, and ureq on as many
/// threads as the concurrency, each taking the next URL.
fn clients_alone(urls: &[downpour_tokio::Url]) {
    use futures::StreamExt;
    use isahc::config::{Configurable, RedirectPolicy};
    let client = isahc::HttpClient::builder()
        .proxy(None)
        .redirect_policy(RedirectPolicy::None)
        .automatic_decompression(false)
        .build()
        .unwrap();
    let started = Instant::now();
    let ok = smol::block_on(
        futures::stream::iter(urls.iter().cloned())
            .map(|url| {
                let client = client.clone();
                async move {
                    let Ok(mut response) = client.get_async(url.as_str()).await else {
                        return false;
                    };
                    let mut sink = Vec::new();
                    futures::AsyncReadExt::read_to_end(response.body_mut(), &mut sink)
                        .await
                        .is_ok()
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter(|ok| futures::future::ready(*ok))
            .count(),
    );
    println!(
        "  isahc + buffer_unordered: {:.0} req/s",
        rate(ok as u64, started.elapsed())
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .max_idle_connections(CONCURRENCY * 2)
        .max_idle_connections_per_host(CONCURRENCY)
        .build()
        .into();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let ok: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                scope.spawn(|| {
                    let mut ok = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(url) = urls.get(i) else { break ok };
                        if let Ok(mut r) = agent.get(url.as_str()).call() {
                            if r.body_mut().read_to_vec().is_ok() {
                                ok += 1;
                            }
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    println!(
        "  ureq on {CONCURRENCY} threads: {:.0} req/s",
        rate(ok as u64, started.elapsed())
    );
}

fn fifo_part(drivers: &[Driver], runtime: &tokio::runtime::Runtime) {
    let servers = Servers::start(FIFO_HOSTS);
    let urls: Vec<downpour_tokio::Url> = (0..FIFO_REQUESTS)
        .map(|i| {
            downpour_tokio::Url::parse(&servers.url(i % FIFO_HOSTS, &format!("/bench/{i}")))
                .unwrap()
        })
        .collect();
    // Warm up each (connections, allocator), then alternate and keep each one's best.
    for &driver in drivers {
        fifo(driver, runtime, &urls[..2_000]);
    }
    let mut best = [0f64; 3];
    for round in 0..3 {
        let mut line = format!("round {round}:");
        for &driver in drivers {
            let i = DRIVERS.iter().position(|d| *d == driver).unwrap_or(0);
            let r = fifo(driver, runtime, &urls);
            best[i] = best[i].max(r);
            line.push_str(&format!(" {} {r:.0} req/s;", driver.name()));
        }
        println!("{line}");
    }
    println!("fifo ({FIFO_REQUESTS} requests, {FIFO_HOSTS} hosts, concurrency {CONCURRENCY}), best of 3:");
    for &driver in drivers {
        let i = DRIVERS.iter().position(|d| *d == driver).unwrap_or(0);
        let ratio = best[i] / best[0];
        let verdict = match driver {
            Driver::Tokio => String::new(),
            _ if ratio >= 0.6 => "(target >= 0.60) PASS".into(),
            _ => "(target >= 0.60) FAIL".into(),
        };
        println!(
            "  {:<18} {:>8.0} req/s  {ratio:.2}x tokio {verdict}",
            driver.name(),
            best[i]
        );
    }
    if wanted("clients") {
        println!("the HTTP clients alone, same URL list:");
        clients_alone(&urls);
    }
}

/// Polite over 1,000 hosts, each driver on fresh servers.
fn polite_part(drivers: &[Driver], runtime: &tokio::runtime::Runtime) {
    let theoretical = POLITE_HOSTS as f64 / POLITE_DELAY.as_secs_f64();
    for &driver in drivers {
        let servers = Servers::start(POLITE_HOSTS);
        let requests: Vec<Probe> = (0..POLITE_HOSTS * POLITE_PER_HOST)
            .map(|i| {
                Probe::new(
                    &servers.url(i % POLITE_HOSTS, &format!("/polite/{i}")),
                    i as u64,
                )
            })
            .collect();
        let total = requests.len();
        let config = downpour_tokio::Config {
            concurrency: POLITE_HOSTS,
            ..downpour_tokio::Config::default()
        };
        let policy = downpour_tokio::Polite::new()
            .delay(POLITE_DELAY)
            .allow_all(true);
        let (took, stats) = run(driver, runtime, config, policy, requests);
        assert_eq!(
            stats.succeeded as usize,
            total,
            "{}: every request succeeds",
            driver.name()
        );
        // Each host's first request needs no wait: count only the ones that waited out a
        // delay, so the figure is the steady-state rate (never flattered by the first round).
        let achieved = rate((total - POLITE_HOSTS) as u64, took);
        let efficiency = achieved / theoretical;
        let v = violations(&servers.log(), POLITE_DELAY);
        println!(
            "polite {:<18} {total} requests over {POLITE_HOSTS} hosts at {POLITE_DELAY:?} in {took:.2?}: \
             {achieved:.0} req/s of a theoretical {theoretical:.0} = {:.1}% (target >= 95%), \
             {} violations {}",
            driver.name(),
            efficiency * 100.0,
            v.len(),
            if efficiency >= 0.95 && v.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        for line in v.iter().take(5) {
            println!("  violation: {line}");
        }
    }
}
