//! `http_proxy` and `NO_PROXY` from the environment (either case), end to end through a
//! real proxy. Alone in its test binary, so changing the environment races with nothing.

use std::sync::{Arc, Mutex};

use downpour_blocking::{Config, Fetcher, Fifo};
use downpour_conformance::{Probe, Servers, Tinyproxy};

#[test]
fn proxy_variables_from_the_environment_are_honoured() {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let servers = Servers::start(2);
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("http_proxy", proxy.url());
    std::env::set_var("NO_PROXY", servers.addr(1).ip().to_string());

    // The default options read the environment.
    let mut fetcher = Fetcher::new(Config::default(), Fifo::new()).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| sink.lock().unwrap().push(p));
    fetcher
        .enqueue(Probe::new(&servers.url(0, "/echo"), 0))
        .unwrap();
    fetcher
        .enqueue(Probe::new(&servers.url(1, "/echo"), 1))
        .unwrap();
    fetcher.run();

    let mut finished = std::mem::take(&mut *finished.lock().unwrap());
    finished.sort_by_key(|p| p.tag);
    let body = |i: usize| String::from_utf8_lossy(&finished[i].result().body).to_lowercase();
    assert!(
        body(0).contains("tinyproxy"),
        "http_proxy ignored: {}",
        body(0)
    );
    assert!(
        !body(1).contains("tinyproxy"),
        "NO_PROXY ignored: {}",
        body(1)
    );
}
