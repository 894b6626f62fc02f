//! What the blocking driver cannot send: a request line or a header longer than the line
//! its connections are built for, and through an HTTP proxy a head longer than that. Each
//! fails its hop with a message that says why, and nothing reaches the server; what fits
//! goes out whole.

use std::sync::{Arc, Mutex};

use downpour_blocking::{ClientOptions, Config, Fetcher, Fifo, Proxy, Url};
use downpour_conformance::{test_config, Probe, Servers, Tinyproxy};

fn fetch(probes: Vec<Probe>, proxy: Proxy) -> Vec<Probe> {
    let config = Config {
        max_retries: 0,
        ..test_config()
    };
    let options = ClientOptions {
        proxy,
        ..Default::default()
    };
    let mut fetcher = Fetcher::with_options(config, Fifo::new(), options).unwrap();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let sink = finished.clone();
    fetcher.on_finished(move |p: Probe| sink.lock().unwrap().push(p));
    for probe in probes {
        fetcher.enqueue(probe).unwrap();
    }
    fetcher.run();
    let mut finished = std::mem::take(&mut *finished.lock().unwrap());
    finished.sort_by_key(|p| p.tag);
    finished
}

#[test]
fn a_url_longer_than_a_line_fails_with_the_reason() {
    let s = Servers::start(1);
    let long = Probe::new(&s.url(0, &format!("/echo?q={}", "x".repeat(40_000))), 0);
    let fits = Probe::new(&s.url(0, &format!("/echo?q={}", "y".repeat(30_000))), 1);
    let finished = fetch(vec![long, fits], Proxy::None);

    let r = finished[0].result();
    assert!(!r.ok);
    assert!(
        r.error.contains("URL is too long") && r.error.contains("request line is 40"),
        "{}",
        r.error
    );
    assert!(finished[1].result().ok, "{:?}", finished[1].result());
    let log = s.log();
    assert_eq!(log.len(), 1, "only the URL that fits was sent");
    assert_eq!(log[0].path.len(), "/echo?q=".len() + 30_000);
}

#[test]
fn a_head_longer_than_a_line_through_an_http_proxy_fails_with_the_reason() {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start(1);
    // 32 KB of query: one line fits, but the head is rewritten in one piece through the
    // proxy, and with the absolute URL and the client's lines it would not.
    let url = s.url(0, &format!("/echo?q={}", "x".repeat(32_000)));
    let finished = fetch(
        vec![Probe::new(&url, 0)],
        Proxy::Rules {
            http: Some(Url::parse(&proxy.url()).unwrap()),
            https: None,
            no: String::new(),
        },
    );
    let r = finished[0].result();
    assert!(!r.ok);
    assert!(
        r.error.contains("sent through an HTTP proxy in one piece"),
        "{}",
        r.error
    );
    assert!(s.log().is_empty(), "nothing reached the server");
}
