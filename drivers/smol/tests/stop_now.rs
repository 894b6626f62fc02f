//! `Handle::stop_now` gives up the hops in flight at once: their requests end with an
//! "aborted" error and `run` returns without waiting for them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use downpour_conformance::{Probe, Servers};
use downpour_smol::{ClientOptions, Config, Fetcher, Fifo, Proxy};

#[test]
fn stop_now_aborts_the_hops_in_flight() {
    let servers = Servers::start(1);
    let config = Config {
        concurrency: 5,
        ..Config::default()
    };
    let options = ClientOptions {
        proxy: Proxy::None,
        ..ClientOptions::default()
    };
    let mut fetcher = Fetcher::with_options(config, Fifo::new(), options).unwrap();
    // One quick request and four that take 20 s: all five start together, so when the
    // quick one is finished the slow ones are in flight.
    fetcher
        .enqueue(Probe::new(&servers.url(0, "/quick"), 0))
        .unwrap();
    for i in 1..5 {
        let url = servers.url(0, &format!("/delay?ms=20000&i={i}"));
        fetcher.enqueue(Probe::new(&url, i)).unwrap();
    }
    let handle = fetcher.handle();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| {
        if p.tag == 0 {
            handle.stop_now();
        }
        sink.lock().unwrap().push(p);
    });
    let started = Instant::now();
    let stats = smol::block_on(fetcher.run());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stop_now waited {took:?}");
    let finished = std::mem::take(&mut *finished.lock().unwrap());
    assert_eq!(finished.len(), 5, "every request finished");
    for p in &finished {
        let r = p.result();
        if p.tag == 0 {
            assert!(r.ok, "{r:?}");
        } else {
            assert_eq!(r.kind, "transport", "{r:?}");
            assert!(r.error.contains("aborted"), "{}", r.error);
        }
    }
    assert_eq!(stats.succeeded, 1);
    assert!(fetcher.take_unfinished().is_empty());
}
