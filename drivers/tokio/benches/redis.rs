//! Throughput with the queue in Redis next to the same crawl in memory, same run, same
//! server: fifo, 40,000 requests over 8 hosts, 64 at once. Every request goes through an
//! inbox, is stored, fetched and removed (pipelined), so the ratio is the price of surviving
//! a crash. A real `redis-server` is started on a free port (append-only file, fsync every
//! second, as a production setup would use).
//!
//! `cargo bench -p downpour-tokio --bench redis`

use std::time::{Duration, Instant};

use downpour_conformance::redis::RedisServer;
use downpour_conformance::Servers;
use downpour_tokio::{ClientOptions, Config, Fetcher, Fifo, Proxy, RedisOptions, Request, Url};
use serde::{Deserialize, Serialize};

const CONCURRENCY: usize = 64;
const HOSTS: usize = 8;
const REQUESTS: usize = 40_000;
const ROUNDS: usize = 5;

#[derive(Serialize, Deserialize)]
struct Plain {
    url: Url,
}

impl Request for Plain {
    fn url(&self) -> &Url {
        &self.url
    }
}

fn config() -> Config {
    Config {
        concurrency: CONCURRENCY,
        ..Config::default()
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        proxy: Proxy::None,
        ..ClientOptions::default()
    }
}

async fn in_memory(urls: &[Url]) -> (Duration, u64) {
    let mut fetcher = Fetcher::with_options(config(), Fifo::new(), options()).unwrap();
    assert!(fetcher
        .extend(urls.iter().map(|u| Plain { url: u.clone() }))
        .is_empty());
    let started = Instant::now();
    let stats = fetcher.run().await;
    (started.elapsed(), stats.succeeded)
}

async fn with_redis(urls: &[Url], redis: &RedisServer, round: usize) -> (Duration, u64) {
    let store = RedisOptions {
        url: redis.url(),
        prefix: format!("bench-{round}"),
        ..RedisOptions::default()
    };
    // Timed from the enqueue: with Redis, requests are stored before they are fetched.
    let started = Instant::now();
    let mut fetcher = Fetcher::with_redis(config(), Fifo::new(), options(), store)
        .await
        .unwrap();
    assert!(fetcher
        .extend(urls.iter().map(|u| Plain { url: u.clone() }))
        .is_empty());
    let stats = fetcher.run().await;
    assert!(
        fetcher.redis_error().is_none(),
        "{:?}",
        fetcher.redis_error()
    );
    (started.elapsed(), stats.succeeded)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let servers = Servers::start(HOSTS);
    let redis = RedisServer::start();
    let urls: Vec<Url> = (0..REQUESTS)
        .map(|i| Url::parse(&servers.url(i % HOSTS, &format!("/p/{i}"))).unwrap())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("fifo, {REQUESTS} requests over {HOSTS} hosts, {CONCURRENCY} at once");
    // Warms the server and the loopback connections up, uncounted.
    runtime.block_on(in_memory(&urls));
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let (t_mem, ok_mem) = runtime.block_on(in_memory(&urls));
        let (t_redis, ok_redis) = runtime.block_on(with_redis(&urls, &redis, round));
        assert_eq!(ok_mem, REQUESTS as u64);
        assert_eq!(ok_redis, REQUESTS as u64);
        assert_eq!(redis.unfinished(&format!("bench-{round}"), 1), 0);
        let (mem, red) = (rate(ok_mem, t_mem), rate(ok_redis, t_redis));
        ratios.push(red / mem);
        println!(
            "round {round}: in memory {mem:>8.0} req/s   redis {red:>8.0} req/s   ratio {:.2}",
            red / mem
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "redis / in memory, median of {ROUNDS}: {:.2} (target >= 0.5)",
        ratios[ROUNDS / 2]
    );
}
