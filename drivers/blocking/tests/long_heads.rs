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

/// `GET /echo?q=… HTTP/1.1\r\n` is 23 bytes besides the query's `n`.
fn echo_with_request_line(s: &Servers, line: usize, tag: u64) -> Probe {
    Probe::new(
        &s.url(0, &format!("/echo?q={}", "x".repeat(line - 23))),
        tag,
    )
}

#[test]
fn a_url_longer_than_a_line_fails_with_the_reason() {
    let s = Servers::start(1);
    let fits = echo_with_request_line(&s, 32 << 10, 0);
    let long = echo_with_request_line(&s, (32 << 10) + 1, 1);
    let finished = fetch(vec![fits, long], Proxy::None);

    assert!(finished[0].result().ok, "{:?}", finished[0].result());
    let r = finished[1].result();
    assert!(!r.ok);
    assert!(
        r.error
            .contains("URL is too long: its request line is 32769 bytes"),
        "{}",
        r.error
    );
    let log = s.log();
    assert_eq!(log.len(), 1, "only the URL that fits was sent");
    assert_eq!(log[0].path.len(), (32 << 10) - 15, "the path arrived whole");
}

#[test]
fn a_head_longer_than_a_line_through_an_http_proxy_fails_with_the_reason() {
    let Some(proxy) = Tinyproxy::start(None) else {
        eprintln!("skipped: tinyproxy is not installed");
        return;
    };
    let s = Servers::start(1);
    // The request line fits (about 32,700 bytes with the absolute URL), but through the
    // proxy the head is rewritten in one piece, and with the client's lines it would not.
    let url = s.url(0, &format!("/echo?q={}", "x".repeat(32_650)));
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
