//! End-to-end throughput of the tokio driver against the same local server:
//!
//! 1. Fifo: the driver vs a hand-written `reqwest` + `buffer_unordered` loop over the same
//!    URL list with the same concurrency (ratio must be at least 1.1);
//! 2. Polite over 1,000 hosts at 100 ms delay: achieved rate vs the theoretical
//!    hosts / delay (must be at least 95%), with politeness audited from the server's log.
//!
//! `cargo bench -p downpour-tokio --bench compare`

use std::sync::Arc;
use std::time::{Duration, Instant};

use downpour_conformance::{violations, Probe, Servers};
use downpour_tokio::{ClientOptions, Config, Fetcher, Fifo, Polite, Proxy, Request, Url};
use futures::StreamExt;
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
    url: Url,
}

impl Request for Plain {
    fn url(&self) -> &Url {
        &self.url
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        proxy: Proxy::None,
        ..ClientOptions::default()
    }
}

async fn driver_fifo(urls: &[Url]) -> (Duration, u64) {
    let config = Config {
        concurrency: CONCURRENCY,
        ..Config::default()
    };
    let mut fetcher = Fetcher::with_options(config, Fifo::new(), options()).unwrap();
    let refused = fetcher.extend(urls.iter().map(|u| Plain { url: u.clone() }));
    assert!(refused.is_empty());
    let started = Instant::now();
    let stats = fetcher.run().await;
    (started.elapsed(), stats.succeeded)
}

async fn reqwest_loop(urls: &[Url]) -> (Duration, u64) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let ok = futures::stream::iter(urls.iter().cloned())
        .map(|url| {
            let client = client.clone();
            async move {
                match client.get(url).send().await {
                    Ok(r) => r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    (started.elapsed(), ok as u64)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that names nothing here skips all.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // ----- Fifo vs reqwest -----
    let servers = Servers::start(FIFO_HOSTS.max(1));
    let urls: Vec<Url> = (0..FIFO_REQUESTS)
        .map(|i| Url::parse(&servers.url(i % FIFO_HOSTS, &format!("/bench/{i}"))).unwrap())
        .collect();
    // Warm up both (connections, allocator), then alternate and keep each one's best.
    runtime.block_on(reqwest_loop(&urls[..2_000]));
    runtime.block_on(driver_fifo(&urls[..2_000]));
    let (mut best_driver, mut best_reqwest) = (0f64, 0f64);
    for round in 0..3 {
        let (d, n) = runtime.block_on(reqwest_loop(&urls));
        assert_eq!(n as usize, urls.len(), "reqwest: every request succeeds");
        let r = rate(n, d);
        best_reqwest = best_reqwest.max(r);
        let (d, n) = runtime.block_on(driver_fifo(&urls));
        assert_eq!(n as usize, urls.len(), "driver: every request succeeds");
        let t = rate(n, d);
        best_driver = best_driver.max(t);
        println!("round {round}: reqwest {r:.0} req/s, downpour-tokio (fifo) {t:.0} req/s");
    }
    let ratio = best_driver / best_reqwest;
    println!(
        "fifo: downpour-tokio {best_driver:.0} req/s, reqwest+buffer_unordered {best_reqwest:.0} req/s, \
         ratio {ratio:.2} (target >= 1.10) {}",
        if ratio >= 1.1 { "PASS" } else { "FAIL" }
    );
    drop(servers);

    // ----- Polite over 1,000 hosts -----
    let servers = Arc::new(Servers::start(POLITE_HOSTS));
    let requests: Vec<Probe> = (0..POLITE_HOSTS * POLITE_PER_HOST)
        .map(|i| {
            Probe::new(
                &servers.url(i % POLITE_HOSTS, &format!("/polite/{i}")),
                i as u64,
            )
        })
        .collect();
    let total = requests.len();
    let config = Config {
        concurrency: POLITE_HOSTS,
        ..Config::default()
    };
    let policy = Polite::new().delay(POLITE_DELAY).allow_all(true);
    let mut fetcher = Fetcher::with_options(config, policy, options()).unwrap();
    assert!(fetcher.extend(requests).is_empty());
    let started = Instant::now();
    let stats = runtime.block_on(fetcher.run());
    let took = started.elapsed();
    assert_eq!(
        stats.succeeded as usize, total,
        "polite: every request succeeds"
    );
    // Each host's first request needs no wait: count only the ones that waited out a
    // delay, so the figure is the steady-state rate (never flattered by the first round).
    let achieved = rate((total - POLITE_HOSTS) as u64, took);
    let theoretical = POLITE_HOSTS as f64 / POLITE_DELAY.as_secs_f64();
    let efficiency = achieved / theoretical;
    let log = servers.log();
    let v = violations(&log, POLITE_DELAY);
    println!(
        "polite: {total} requests over {POLITE_HOSTS} hosts at {POLITE_DELAY:?} in {took:.2?}: \
         {achieved:.0} req/s of a theoretical {theoretical:.0} = {:.1}% (target >= 95%), \
         {} violations {}",
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
