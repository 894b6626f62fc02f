//! The cases. Each takes the driver and panics with a clear message on failure.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use downpour::{Config, Fifo, Policy, Polite};

use crate::{
    test_config, Driver, LogEntry, Options, Probe, ProxyRules, Robots, Run, RunOutcome, Servers,
    Tinyproxy,
};

/// Longest a single case's run may take before the driver is declared stuck.
const WATCHDOG: Duration = Duration::from_secs(300);

fn run<D: Driver>(driver: &D, run: Run) -> RunOutcome {
    let driver = driver.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(driver.run(run));
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the driver did not finish within {WATCHDOG:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the driver panicked"),
    }
}

fn fifo(config: Config, requests: Vec<Probe>) -> Run {
    Run {
        config,
        policy: Box::new(Fifo::new()),
        requests,
        options: Options::default(),
    }
}

fn polite(config: Config, policy: Polite, requests: Vec<Probe>) -> Run {
    Run {
        config,
        policy: Box::new(policy),
        requests,
        options: Options::default(),
    }
}

fn no_retries() -> Config {
    Config {
        max_retries: 0,
        ..test_config()
    }
}

/// Runs one request and returns it, finished.
fn one<D: Driver>(driver: &D, config: Config, url: &str) -> Probe {
    let mut out = run(driver, fifo(config, vec![Probe::new(url, 0)]));
    assert_eq!(out.finished.len(), 1, "one request, one finish: {out:?}");
    out.finished.pop().unwrap()
}

fn by_tag(finished: Vec<Probe>) -> HashMap<u64, Probe> {
    let mut map = HashMap::new();
    for p in finished {
        let tag = p.tag;
        assert!(map.insert(tag, p).is_none(), "request {tag} finished twice");
    }
    map
}

fn expect_kind(probe: &Probe, kind: &str) {
    let r = probe.result();
    assert_eq!(
        r.kind, kind,
        "{} should end with {kind}, got {} ({}); events {:?}",
        probe.url, r.kind, r.error, probe.events
    );
}

fn assert_polite(servers: &Servers, delay: Duration) {
    let v = crate::violations(&servers.log(), delay);
    assert!(
        v.is_empty(),
        "{} politeness violations, e.g. {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
}

/// Callbacks of a redirect hop then the final hop, in order.
pub fn callback_order_per_hop<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let target = s.url(0, "/final");
    let p = one(
        driver,
        test_config(),
        &s.url(0, &format!("/redirect?to={target}")),
    );
    assert_eq!(
        p.events,
        vec![
            "status 302".to_string(),
            "headers".into(),
            format!("url {target}"),
            "status 200".into(),
            "headers".into(),
            "success".into(),
            "done".into(),
        ]
    );
    let r = p.result();
    assert_eq!(
        (r.status, r.redirects, r.url.as_str()),
        (Some(200), 1, target.as_str())
    );
    assert_eq!(r.body, b"ok /final");
}

/// Requests to host A redirect to host B; host B also gets its own requests. Each host's
/// delay holds, as the servers saw it.
pub fn redirects_across_hosts_keep_each_hosts_politeness<D: Driver>(driver: &D) {
    let s = Servers::start(2);
    let delay = Duration::from_millis(150);
    let mut requests = Vec::new();
    for i in 0..4 {
        let to = s.url(1, &format!("/from-a/{i}"));
        requests.push(Probe::new(&s.url(0, &format!("/redirect?to={to}")), i));
        requests.push(Probe::new(&s.url(1, &format!("/direct/{i}")), 100 + i));
    }
    let out = run(
        driver,
        polite(
            test_config(),
            Polite::new().delay(delay).allow_all(true),
            requests,
        ),
    );
    let done = by_tag(out.finished);
    assert_eq!(done.len(), 8);
    for (tag, p) in &done {
        assert!(p.result().ok, "request {tag}: {:?}", p.result());
    }
    assert_eq!(done[&2].result().url.as_str(), s.url(1, "/from-a/2"));
    assert_eq!(s.hits("/from-a/").len() + s.hits("/direct/").len(), 8);
    assert_polite(&s, delay);
}

fn robots_case<D: Driver>(
    driver: &D,
    robots: Robots,
    paths: &[&str],
) -> (Servers, HashMap<u64, Probe>) {
    let s = Servers::start(2);
    s.set_robots(0, robots);
    let requests = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Probe::new(&s.url(0, p), i as u64))
        .collect();
    let mut config = test_config();
    config.robots.retry_delay = Duration::from_millis(50);
    config.robots.max_attempts = 2;
    let out = run(
        driver,
        polite(
            config,
            Polite::new().delay(Duration::from_millis(20)),
            requests,
        ),
    );
    let done = by_tag(out.finished);
    assert_eq!(done.len(), paths.len());
    (s, done)
}

/// robots.txt allows: everything is fetched, robots.txt first and once.
pub fn robots_allow<D: Driver>(driver: &D) {
    let (s, done) = robots_case(
        driver,
        Robots::Body("User-agent: *\nAllow: /\n".into()),
        &["/a", "/b", "/c"],
    );
    assert!(done.values().all(|p| p.result().ok));
    let log = s.log();
    assert_eq!(log[0].path, "/robots.txt", "robots.txt comes first");
    assert_eq!(s.hits("/robots.txt").len(), 1, "robots.txt is fetched once");
    assert_polite(&s, Duration::from_millis(20));
}

/// robots.txt disallows a prefix: those requests fail as disallowed and are never fetched.
pub fn robots_disallow<D: Driver>(driver: &D) {
    let (s, done) = robots_case(
        driver,
        Robots::Body("User-agent: *\nDisallow: /private\n".into()),
        &["/public", "/private/x", "/private/y"],
    );
    assert!(done[&0].result().ok);
    expect_kind(&done[&1], "disallowed");
    expect_kind(&done[&2], "disallowed");
    assert!(
        s.hits("/private").is_empty(),
        "disallowed URLs were fetched"
    );
}

/// robots.txt 404: everything is allowed.
pub fn robots_not_found_allows_all<D: Driver>(driver: &D) {
    let (s, done) = robots_case(driver, Robots::NotFound, &["/a", "/private"]);
    assert!(done.values().all(|p| p.result().ok));
    assert_eq!(s.hits("/robots.txt").len(), 1);
}

/// robots.txt 500: the origin is off-limits; nothing else is fetched.
pub fn robots_server_error_makes_the_origin_unavailable<D: Driver>(driver: &D) {
    let (s, done) = robots_case(driver, Robots::Status(500), &["/a", "/b"]);
    for p in done.values() {
        expect_kind(p, "robots_unavailable");
    }
    assert_eq!(s.hits("/a").len() + s.hits("/b").len(), 0);
    assert!(!s.hits("/robots.txt").is_empty());
}

/// robots.txt redirects (to another host): the target's rules apply.
pub fn robots_that_redirects_is_followed<D: Driver>(driver: &D) {
    let s = Servers::start(2);
    s.set_robots(0, Robots::Redirect(s.url(1, "/robots.txt")));
    s.set_robots(1, Robots::Body("User-agent: *\nDisallow: /secret\n".into()));
    let requests = vec![
        Probe::new(&s.url(0, "/open"), 0),
        Probe::new(&s.url(0, "/secret/file"), 1),
    ];
    let out = run(
        driver,
        polite(
            test_config(),
            Polite::new().delay(Duration::from_millis(20)),
            requests,
        ),
    );
    let done = by_tag(out.finished);
    assert!(done[&0].result().ok, "{:?}", done[&0].result());
    expect_kind(&done[&1], "disallowed");
    assert!(s.hits("/secret").is_empty());
}

/// 404 fails with the status and is not retried.
pub fn client_errors_are_not_retried<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, test_config(), &s.url(0, "/status/404"));
    expect_kind(&p, "status");
    assert_eq!(p.result().status, Some(404));
    assert_eq!(p.result().body, b"status 404");
    assert_eq!(s.hits("/status/404").len(), 1);
}

/// 500 is retried `max_retries` times, then fails with the status.
pub fn server_errors_are_retried<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let config = Config {
        max_retries: 2,
        ..test_config()
    };
    let p = one(driver, config, &s.url(0, "/status/500"));
    expect_kind(&p, "status");
    assert_eq!(p.result().status, Some(500));
    assert_eq!(p.result().retries, 2);
    assert_eq!(s.hits("/status/500").len(), 3);
}

/// A 503 with `Retry-After: 1` is retried after a second, then succeeds.
pub fn retry_after_503_is_honoured<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, test_config(), &s.url(0, "/flaky/x?n=1&after=1"));
    assert!(p.result().ok, "{:?}", p.result());
    assert_eq!(p.result().retries, 1);
    assert_eq!(p.result().body, b"finally");
    let hits = s.hits("/flaky/x");
    assert_eq!(hits.len(), 2);
    let gap = hits[1].arrived - hits[0].ended.expect("the 503 ended");
    assert!(
        gap >= Duration::from_millis(990),
        "retried after {gap:?}, asked 1 s"
    );
    assert_eq!(p.events[..2], ["status 503".to_string(), "headers".into()]);
}

/// The connection is reset in the middle of the body: a reset error, nothing else.
pub fn connection_reset_mid_body<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/reset"));
    expect_kind(&p, "reset");
}

/// A server that never answers: the hop times out, on time.
pub fn stalled_server_times_out<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let config = Config {
        timeout: Duration::from_millis(500),
        ..no_retries()
    };
    let started = Instant::now();
    let p = one(driver, config, &s.url(0, "/stall"));
    expect_kind(&p, "timeout");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a 500 ms timeout took {took:?}"
    );
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A 2 GB body is cut at the cap with a clear error; reading stops (the server could not
/// send much more) and memory stays bounded.
pub fn huge_body_is_cut_at_the_cap<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let config = Config {
        max_body_size: 1 << 20,
        ..no_retries()
    };
    let before = resident_bytes();
    let p = one(driver, config, &s.url(0, "/huge?size=2000000000"));
    expect_kind(&p, "body_too_large");
    assert!(
        p.result().error.contains("1048576"),
        "the error names the limit: {}",
        p.result().error
    );
    let sent = s.huge_bytes_sent();
    assert!(
        sent < 256 << 20,
        "the server could write {sent} bytes: reading did not stop"
    );
    if let (Some(a), Some(b)) = (before, resident_bytes()) {
        let grown = b.saturating_sub(a);
        assert!(grown < 256 << 20, "memory grew by {grown} bytes");
    }
}

/// A gzip bomb (256 MiB of zeros in 1.6 MiB) is decoded only up to the cap.
pub fn gzip_bomb_is_cut_at_the_cap<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    crate::gzip_bomb(); // built before the clock starts
    let config = Config {
        max_body_size: 1 << 20,
        ..no_retries()
    };
    let before = resident_bytes();
    let p = one(driver, config, &s.url(0, "/gzip-bomb"));
    expect_kind(&p, "body_too_large");
    if let (Some(a), Some(b)) = (before, resident_bytes()) {
        let grown = b.saturating_sub(a);
        assert!(grown < 128 << 20, "memory grew by {grown} bytes");
    }
}

/// gzip, deflate and brotli bodies come out decoded.
pub fn gzip_deflate_and_brotli_are_decoded<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = ["/gzip", "/deflate", "/br"]
        .iter()
        .enumerate()
        .map(|(i, p)| Probe::new(&s.url(0, p), i as u64))
        .collect();
    let done = by_tag(run(driver, fifo(test_config(), requests)).finished);
    for (tag, p) in &done {
        assert!(p.result().ok, "{tag}: {:?}", p.result());
        assert_eq!(p.result().body, crate::TEXT, "{}", p.url);
    }
    let accept = &s.hits("/gzip")[0].headers;
    let accept = accept
        .iter()
        .find(|(n, _)| n == "accept-encoding")
        .map(|(_, v)| v.as_str());
    let accept = accept.expect("accept-encoding sent");
    for coding in ["gzip", "deflate", "br"] {
        assert!(
            accept.contains(coding),
            "accept-encoding {accept:?} lacks {coding}"
        );
    }
}

/// A body that claims gzip but is not: a decode error.
pub fn corrupt_gzip_is_a_decode_error<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/bad-gzip"));
    expect_kind(&p, "decode");
}

/// A status line that is not HTTP: a protocol error.
pub fn malformed_status_line<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/malformed-status"));
    expect_kind(&p, "protocol");
}

/// A header line without a colon: a protocol error.
pub fn malformed_header<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/malformed-header"));
    expect_kind(&p, "protocol");
}

/// A response head larger than `max_header_size`: a protocol error.
pub fn header_larger_than_the_limit<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let config = Config {
        max_header_size: 16 << 10,
        ..no_retries()
    };
    let p = one(driver, config.clone(), &s.url(0, "/huge-header?size=40000"));
    expect_kind(&p, "protocol");
    let p = one(driver, config, &s.url(0, "/huge-header?size=10000"));
    assert!(p.result().ok, "a head under the limit: {:?}", p.result());
}

/// A head of 120 headers, more than some HTTP stacks take by default (hyper's 100), well
/// under `max_header_size`: a response. (ureq stops at 128.)
pub fn many_headers_under_the_limit<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/many-headers?n=120"));
    assert!(p.result().ok, "120 headers: {:?}", p.result());
    assert_eq!(p.result().status, Some(200));
}

/// URLs that can never be fetched are refused at once, with the reason; the rest runs.
pub fn invalid_urls_are_refused<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = vec![
        Probe::new("ftp://127.0.0.2/file", 0),
        Probe::new("mailto:someone@example.com", 1),
        Probe::new(&s.url(0, "/fine"), 2),
    ];
    let out = run(driver, fifo(test_config(), requests));
    assert_eq!(out.refused.len(), 2, "{:?}", out.refused);
    assert!(out
        .refused
        .iter()
        .any(|(p, why)| p.tag == 0 && why.contains("ftp")));
    assert_eq!(out.finished.len(), 1);
    assert!(out.finished[0].result().ok);
}

/// A host name that does not resolve: a DNS error.
pub fn unresolvable_host<D: Driver>(driver: &D) {
    let p = one(driver, no_retries(), "http://does-not-exist.invalid/");
    expect_kind(&p, "dns");
}

/// Nothing listens: a connect error.
pub fn connection_refused<D: Driver>(driver: &D) {
    let port = crate::free_port();
    let p = one(driver, no_retries(), &format!("http://127.0.0.1:{port}/"));
    expect_kind(&p, "connect");
}

/// A panicking callback ends its request with an error; the others are undisturbed.
pub fn panicking_callback_is_trapped<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let mut requests: Vec<Probe> = (0..6)
        .map(|i| Probe::new(&s.url(0, &format!("/p/{i}")), i))
        .collect();
    requests[1].panic_in = Some("on_headers".into());
    requests[3].panic_in = Some("on_status".into());
    requests[4].panic_in = Some("on_success".into());
    requests[5].panic_in = Some("on_done".into());
    let out = run(driver, fifo(test_config(), requests));
    let done = by_tag(out.finished);
    assert_eq!(done.len(), 6, "every request finished");
    for i in [0, 2] {
        assert!(done[&i].result().ok, "request {i}: {:?}", done[&i].result());
    }
    expect_kind(&done[&1], "callback_panicked");
    expect_kind(&done[&3], "callback_panicked");
    assert!(done[&3]
        .events
        .contains(&"error callback_panicked".to_string()));
    // A panic in `on_success` or `on_done` comes once the outcome is decided: `on_done`
    // still runs, and the panic is counted.
    assert_eq!(
        done[&4].events[done[&4].events.len() - 2..],
        ["success".to_string(), "done".into()]
    );
    assert_eq!(done[&5].events.last().map(String::as_str), Some("done"));
    assert_eq!(out.stats.callback_panics, 4);
}

/// A graceful stop: in-flight requests finish, the rest stays queued, nothing is lost.
pub fn graceful_stop_keeps_the_rest_queued<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = (0..40)
        .map(|i| Probe::new(&s.url(0, &format!("/delay?ms=30&i={i}")), i))
        .collect();
    let mut run_spec = fifo(
        Config {
            concurrency: 4,
            ..test_config()
        },
        requests,
    );
    run_spec.options.stop_after = Some(6);
    let out = run(driver, run_spec);
    let finished = out.finished.len();
    assert!((6..40).contains(&finished), "{finished} finished");
    assert!(out.finished.iter().all(|p| p.result().ok));
    assert_eq!(finished + out.unfinished.len(), 40, "nothing lost");
    let mut tags: Vec<u64> = out
        .finished
        .iter()
        .chain(&out.unfinished)
        .map(|p| p.tag)
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), 40, "nothing twice");
    assert_eq!(
        s.hits("/delay").len(),
        finished,
        "every fetch started was finished"
    );
}

/// A request enqueued through a handle after `run` returned is not lost: `take_unfinished`
/// hands it back with the rest, in order, without fetching it.
pub fn requests_enqueued_after_the_run_are_taken_back<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = (0..10)
        .map(|i| Probe::new(&s.url(0, &format!("/delay?ms=20&i={i}")), i))
        .collect();
    let mut run_spec = fifo(
        Config {
            concurrency: 1,
            ..test_config()
        },
        requests,
    );
    run_spec.options.stop_after = Some(2);
    run_spec.options.enqueue_after_run = (100..103)
        .map(|i| Probe::new(&s.url(0, &format!("/late?i={i}")), i))
        .collect();
    let out = run(driver, run_spec);
    let finished = out.finished.len();
    assert!((2..10).contains(&finished), "{finished} finished");
    let unfinished: Vec<u64> = out.unfinished.iter().map(|p| p.tag).collect();
    let queued: Vec<u64> = (finished as u64..10).chain(100..103).collect();
    assert_eq!(unfinished, queued, "the rest, then the late ones, in order");
    assert!(s.hits("/late").is_empty(), "a late request was fetched");
}

/// Requests fed through a handle from another thread while the fetcher runs, with pauses in
/// which it has nothing left to do, are all fetched by `run_until_closed`, which returns once
/// the handle is closed and they are done (`run` would return in the first pause).
pub fn requests_fed_until_the_handle_closes_are_all_fetched<D: Driver>(driver: &D) {
    const COUNT: u64 = 6;
    let s = Servers::start(2);
    let mut fed = fifo(test_config(), Vec::new());
    fed.options.fed_until_closed = (0..COUNT)
        .map(|i| Probe::new(&s.url(i as usize % 2, &format!("/fed?i={i}")), i))
        .collect();
    let started = Instant::now();
    let out = run(driver, fed);
    let took = started.elapsed();
    assert!(
        out.refused.is_empty() && out.unfinished.is_empty(),
        "{out:?}"
    );
    let done = by_tag(out.finished);
    assert_eq!(done.len(), COUNT as usize, "fetched: {:?}", done.keys());
    for p in done.values() {
        assert!(p.result().ok, "{}: {:?}", p.url, p.result());
    }
    assert_eq!(s.hits("/fed").len(), COUNT as usize, "each fetched once");
    assert!(
        took >= crate::FED_EVERY * COUNT as u32,
        "returned after {took:?}, before the producer was done"
    );
}

/// A request enqueued through a handle after a run that ended with nothing left to do is
/// taken back too, not started: the fetcher is not stopped, yet a request in flight could
/// not be handed back.
pub fn requests_enqueued_after_an_idle_run_are_taken_back<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = (0..3)
        .map(|i| Probe::new(&s.url(0, &format!("/delay?ms=5&i={i}")), i))
        .collect();
    let mut run_spec = fifo(test_config(), requests);
    run_spec.options.enqueue_after_run = (100..103)
        .map(|i| Probe::new(&s.url(0, &format!("/late?i={i}")), i))
        .collect();
    let out = run(driver, run_spec);
    assert_eq!(out.finished.len(), 3);
    let unfinished: Vec<u64> = out.unfinished.iter().map(|p| p.tag).collect();
    assert_eq!(unfinished, vec![100, 101, 102], "the late ones, in order");
    assert!(s.hits("/late").is_empty(), "a late request was fetched");
}

/// A list fed as the crawl goes: only the backlog is enqueued before the run, and each
/// request that finishes lets the next in, through a handle from `on_finished` (how a
/// program fetches a list of any length in bounded memory). However large the concurrency,
/// the server never has more than the backlog at once; every request is fetched once, and
/// the run ends when the list does.
pub fn a_list_fed_as_requests_finish_stays_within_its_backlog<D: Driver>(driver: &D) {
    const COUNT: usize = 40;
    const BACKLOG: usize = 5;
    let s = Servers::start(4);
    let requests = (0..COUNT)
        .map(|i| Probe::new(&s.url(i % 4, &format!("/delay?ms=20&i={i}")), i as u64))
        .collect();
    let mut fed = fifo(test_config(), requests);
    fed.options.backlog = Some(BACKLOG);
    assert!(fed.config.concurrency > BACKLOG);
    let out = run(driver, fed);
    assert!(
        out.refused.is_empty() && out.unfinished.is_empty(),
        "{out:?}"
    );
    let done = by_tag(out.finished);
    assert_eq!(done.len(), COUNT);
    for p in done.values() {
        assert!(p.result().ok, "{}: {:?}", p.url, p.result());
    }
    let log = s.log();
    assert_eq!(log.len(), COUNT, "each fetched once");
    let most = most_at_once(&log);
    assert!(
        most <= BACKLOG,
        "{most} at once, with a backlog of {BACKLOG}"
    );
    assert!(most > 1, "the backlog was kept busy: {most} at once");
}

/// The most requests the server was handling at once, from a head's arrival to the end of
/// its response.
fn most_at_once(log: &[LogEntry]) -> usize {
    let mut edges: Vec<(Instant, bool)> = log
        .iter()
        .flat_map(|e| [(e.arrived, true), (e.ended.expect("answered"), false)])
        .collect();
    // At the same instant an end comes before an arrival.
    edges.sort();
    let (mut now, mut most) = (0usize, 0usize);
    for (_, arrives) in edges {
        if arrives {
            now += 1;
            most = most.max(now);
        } else {
            now -= 1;
        }
    }
    most
}

/// `stop_now` gives up the hops in flight at once: their requests end with an "aborted"
/// transport error, and `run` returns without waiting for them.
pub fn stop_now_aborts_the_hops_in_flight<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    // One quick request and four that take 20 s: all five start together, so when the
    // quick one is finished the slow ones are in flight.
    let mut requests = vec![Probe::new(&s.url(0, "/quick"), 0)];
    for i in 1..5 {
        requests.push(Probe::new(&s.url(0, &format!("/delay?ms=20000&i={i}")), i));
    }
    let mut run_spec = fifo(
        Config {
            concurrency: 5,
            timeout: Duration::from_secs(60),
            ..test_config()
        },
        requests,
    );
    run_spec.options.stop_now_after = Some(1);
    let started = Instant::now();
    let out = run(driver, run_spec);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stop_now waited {took:?}");
    assert_eq!(out.finished.len(), 5, "every request finished");
    for p in &out.finished {
        let r = p.result();
        if p.tag == 0 {
            assert!(r.ok, "{r:?}");
        } else {
            assert_eq!(r.kind, "transport", "{r:?}");
            assert!(r.error.contains("aborted"), "{}", r.error);
        }
    }
    assert_eq!(out.stats.succeeded, 1);
    assert!(out.unfinished.is_empty());
}

/// Many requests to one host share a few kept-alive connections.
pub fn connections_are_reused<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let requests = (0..50)
        .map(|i| Probe::new(&s.url(0, &format!("/r/{i}")), i))
        .collect();
    let out = run(
        driver,
        polite(
            test_config(),
            Polite::new()
                .delay(Duration::from_millis(1))
                .allow_all(true),
            requests,
        ),
    );
    assert_eq!(out.finished.len(), 50);
    let connections = s.connections();
    assert!(
        connections <= 5,
        "50 sequential requests used {connections} connections"
    );
}

/// `count` requests for `route` (tagged by `?i=`) on the one host of `s`, one at a time,
/// `delay` apart, with no retries.
fn in_turn(s: &Servers, route: &str, count: u64, delay: Duration) -> Run {
    let requests = (0..count)
        .map(|i| Probe::new(&s.url(0, &format!("{route}?i={i}")), i))
        .collect();
    let policy = Polite::new().delay(delay).allow_all(true);
    polite(no_retries(), policy, requests)
}

/// A server that closes each connection after its response, unannounced (no `connection:
/// close`): once the close has arrived, the next request to it goes on a new connection,
/// and none fails (no retries allowed). The delay between requests lets the close land (a
/// request sent at the very moment of the close is the next case).
pub fn connections_the_server_closed_are_not_reused<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let out = run(
        driver,
        in_turn(&s, "/then-close", 10, Duration::from_millis(30)),
    );
    assert_eq!(out.finished.len(), 10);
    for p in &out.finished {
        assert!(p.result().ok, "{}: {:?}", p.url, p.result());
    }
    assert_eq!(s.connections(), 10, "one connection per request");
}

/// A reused connection that the server closes as the next request arrives (its idle
/// timeout struck at that moment): the request had no answer, so it is sent again on
/// another connection, and none fails (no retries allowed). Every request after the first
/// meets a dropping connection when the driver reuses it.
pub fn a_request_a_reused_connection_drops_is_sent_again<D: Driver>(driver: &D) {
    const COUNT: u64 = 6;
    let s = Servers::start(1);
    let delay = Duration::from_millis(20);
    let out = run(driver, in_turn(&s, "/then-drop-next", COUNT, delay));
    assert_eq!(out.finished.len(), COUNT as usize);
    for p in &out.finished {
        assert!(p.result().ok, "{}: {:?}", p.url, p.result());
        assert_eq!(p.result().body, b"see you");
        assert_eq!(p.result().retries, 0, "sent again, not retried");
    }
    // Connections are reused (`connections_are_reused`): the race was met.
    assert!(s.dropped() >= 1, "no request met a dropping connection");
    assert_eq!(
        s.connections(),
        1 + s.dropped(),
        "a new connection for each request sent again"
    );
    assert_eq!(s.log().len(), COUNT as usize, "each request served once");
}

/// Two idle connections to a host that the server closes together (its idle timeout struck
/// for both): a request meets one, then the other, and goes on a third; none fails (no
/// retries allowed).
pub fn a_request_two_reused_connections_drop_in_turn_is_sent_again<D: Driver>(driver: &D) {
    const DELAY: Duration = Duration::from_millis(300);
    let s = Servers::start(1);
    // Two at once open two connections. The third may go the delay after the first one
    // ends, and the second ends at about the same time (both are answered at once): by
    // then both connections are idle.
    let requests = (0..3)
        .map(|i| Probe::new(&s.url(0, &format!("/then-drop-next?i={i}")), i))
        .collect();
    let policy = Polite::new().per_host(2).delay(DELAY).allow_all(true);
    let out = run(driver, polite(no_retries(), policy, requests));
    let done = by_tag(out.finished);
    assert_eq!(done.len(), 3);
    let log = s.log();
    let third = log
        .iter()
        .find(|e| e.path.ends_with("i=2"))
        .expect("logged");
    assert!(
        log.iter()
            .filter(|e| !e.path.ends_with("i=2"))
            .all(|e| e.ended.is_some_and(|end| end < third.arrived)),
        "the first two were not both answered before the third went out: {log:?}"
    );
    for p in done.values() {
        assert!(p.result().ok, "{}: {:?}", p.url, p.result());
        assert_eq!(p.result().retries, 0, "sent again, not retried");
    }
    assert_eq!(
        s.dropped(),
        2,
        "the third request met both idle connections"
    );
    assert_eq!(s.connections(), 3);
    assert_eq!(s.log().len(), 3, "each request served once");
}

/// A fresh connection that closes as the request arrives is a failure, not sent again: only
/// a reused connection may have been closed for idling.
pub fn a_request_a_fresh_connection_drops_is_not_sent_again<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let p = one(driver, no_retries(), &s.url(0, "/drop"));
    assert!(!p.result().ok, "{:?}", p.result());
    assert_eq!(s.dropped(), 1, "sent once");
    assert_eq!(s.connections(), 1);
}

/// A reused connection on which the server began to answer, then went away: the server saw
/// the request, so it is not sent again (how the cut head is reported is the HTTP stack's:
/// hyper and ureq fail it, curl takes the status line for a response without a body).
pub fn a_request_answered_in_part_on_a_reused_connection_is_not_sent_again<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let out = run(
        driver,
        in_turn(&s, "/then-cut-next", 2, Duration::from_millis(20)),
    );
    let done = by_tag(out.finished);
    assert!(done[&0].result().ok, "{:?}", done[&0].result());
    assert_eq!(
        s.connections(),
        1,
        "the second request reused the connection"
    );
    assert!(done[&1].result().body.is_empty(), "{:?}", done[&1].result());
    assert_eq!(s.log().len(), 2, "the second request was sent once");
}

/// `User-Agent` comes from the config.
pub fn user_agent_is_sent<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let config = Config {
        user_agent: "conformance-bot/1.0 (+https://example.com/bot)".into(),
        ..test_config()
    };
    let p = one(driver, config, &s.url(0, "/echo"));
    let body = String::from_utf8_lossy(&p.result().body).into_owned();
    assert!(
        body.contains("user-agent: conformance-bot/1.0 (+https://example.com/bot)"),
        "{body}"
    );
}

/// A URL far longer than a request line usually is (20 KB of query) is sent whole.
pub fn long_urls_are_sent<D: Driver>(driver: &D) {
    let s = Servers::start(1);
    let path = format!("/echo?q={}", "x".repeat(20_000));
    let p = one(driver, no_retries(), &s.url(0, &path));
    assert!(p.result().ok, "{:?}", p.result());
    let log = s.log();
    assert_eq!(log.len(), 1, "one request: {} logged", log.len());
    assert_eq!(log[0].path, path, "the path arrived cut or changed");
}

/// HTTPS to a server whose certificate the driver was told to trust.
pub fn https_with_a_trusted_certificate<D: Driver>(driver: &D) {
    let s = Servers::start_with_tls(0, true);
    let mut r = fifo(test_config(), vec![Probe::new(&s.tls_url("/secure"), 0)]);
    r.options.extra_root_certificates.push(s.tls_certificate());
    let out = run(driver, r);
    let p = &out.finished[0];
    assert!(p.result().ok, "{:?}", p.result());
    assert_eq!(p.result().body, b"ok /secure");
    assert!(s.log()[0].tls);
}

/// HTTPS to a self-signed server not trusted: a TLS error.
pub fn https_with_an_untrusted_certificate_fails<D: Driver>(driver: &D) {
    let s = Servers::start_with_tls(0, true);
    let p = one(driver, no_retries(), &s.tls_url("/secure"));
    expect_kind(&p, "tls");
}

fn proxy_run<D: Driver>(
    driver: &D,
    proxy: &Tinyproxy,
    rules: ProxyRules,
    requests: Vec<Probe>,
    trust: Option<Vec<u8>>,
) -> HashMap<u64, Probe> {
    let _ = proxy;
    let mut r = fifo(no_retries(), requests);
    r.options.proxy = Some(rules);
    r.options.extra_root_certificates.extend(trust);
    by_tag(run(driver, r).finished)
}

/// An `http` URL through the proxy (absolute form): the origin sees tinyproxy's `Via`.
pub fn proxy_for_http<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start(1);
    let rules = ProxyRules {
        http: Some(proxy.url()),
        ..Default::default()
    };
    let done = proxy_run(
        driver,
        &proxy,
        rules,
        vec![Probe::new(&s.url(0, "/echo"), 0)],
        None,
    );
    let r = done[&0].result();
    assert!(r.ok, "{r:?}");
    let body = String::from_utf8_lossy(&r.body).to_lowercase();
    assert!(
        body.contains("via:") && body.contains("tinyproxy"),
        "not proxied: {body}"
    );
}

/// An `https` URL through the proxy with `CONNECT`.
pub fn proxy_for_https<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start_with_tls(0, true);
    let rules = ProxyRules {
        https: Some(proxy.url()),
        ..Default::default()
    };
    let done = proxy_run(
        driver,
        &proxy,
        rules,
        vec![Probe::new(&s.tls_url("/through"), 0)],
        Some(s.tls_certificate()),
    );
    let r = done[&0].result();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.body, b"ok /through");
    assert!(
        proxy.log().contains("CONNECT"),
        "no CONNECT in the proxy's log:\n{}",
        proxy.log()
    );
}

/// Credentials in the proxy URL are sent (`Proxy-Authorization`) for http and https;
/// without them the proxy refuses, and the error never shows them.
pub fn proxy_credentials<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(Some(("crawler", "s3cret-pw"))) else {
        return;
    };
    let s = Servers::start_with_tls(1, true);
    let good = ProxyRules {
        http: Some(proxy.url()),
        https: Some(proxy.url()),
        no: String::new(),
    };
    let done = proxy_run(
        driver,
        &proxy,
        good,
        vec![
            Probe::new(&s.url(0, "/echo"), 0),
            Probe::new(&s.tls_url("/x"), 1),
        ],
        Some(s.tls_certificate()),
    );
    assert!(done[&0].result().ok, "{:?}", done[&0].result());
    let echoed = String::from_utf8_lossy(&done[&0].result().body).to_lowercase();
    assert!(
        !echoed.contains("proxy-authorization"),
        "credentials leaked to the origin: {echoed}"
    );
    assert!(done[&1].result().ok, "{:?}", done[&1].result());

    let bad = ProxyRules {
        http: Some(proxy.url_without_credentials()),
        https: Some(proxy.url_without_credentials()),
        no: String::new(),
    };
    let done = proxy_run(
        driver,
        &proxy,
        bad,
        vec![
            Probe::new(&s.url(0, "/echo"), 0),
            Probe::new(&s.tls_url("/x"), 1),
        ],
        Some(s.tls_certificate()),
    );
    assert_eq!(
        done[&0].result().status,
        Some(407),
        "{:?}",
        done[&0].result()
    );
    expect_kind(&done[&1], "proxy");
    for p in done.values() {
        assert!(
            !p.result().error.contains("s3cret-pw"),
            "{}",
            p.result().error
        );
    }
}

/// A request's own proxy wins over no proxy at all.
pub fn proxy_per_request<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start(1);
    let mut via = Probe::new(&s.url(0, "/echo?via"), 0);
    via.proxy = Some(proxy.url().parse().unwrap());
    let direct = Probe::new(&s.url(0, "/echo?direct"), 1);
    let done = by_tag(run(driver, fifo(no_retries(), vec![via, direct])).finished);
    let body = |t: u64| String::from_utf8_lossy(&done[&t].result().body).to_lowercase();
    assert!(body(0).contains("tinyproxy"), "not proxied: {}", body(0));
    assert!(!body(1).contains("tinyproxy"), "proxied: {}", body(1));
}

/// Hosts in `no_proxy` go direct.
pub fn no_proxy_bypasses_the_proxy<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start(2);
    let rules = ProxyRules {
        http: Some(proxy.url()),
        https: None,
        no: s.addr(1).ip().to_string(),
    };
    let done = proxy_run(
        driver,
        &proxy,
        rules,
        vec![
            Probe::new(&s.url(0, "/echo"), 0),
            Probe::new(&s.url(1, "/echo"), 1),
        ],
        None,
    );
    let body = |t: u64| String::from_utf8_lossy(&done[&t].result().body).to_lowercase();
    assert!(body(0).contains("tinyproxy"), "not proxied: {}", body(0));
    assert!(
        !body(1).contains("tinyproxy"),
        "no_proxy ignored: {}",
        body(1)
    );
}

/// `http_proxy` and `NO_PROXY` from the environment (either case), read by the driver's
/// default options. It sets the process's environment: run it alone in its test binary.
pub fn proxy_variables_from_the_environment_are_honoured<D: Driver>(driver: &D) {
    let Some(proxy) = Tinyproxy::start(None) else {
        return;
    };
    let s = Servers::start(2);
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
    std::env::set_var("NO_PROXY", s.addr(1).ip().to_string());
    let mut r = fifo(
        no_retries(),
        vec![
            Probe::new(&s.url(0, "/echo"), 0),
            Probe::new(&s.url(1, "/echo"), 1),
        ],
    );
    r.options.proxy_from_environment = true;
    let done = by_tag(run(driver, r).finished);
    let body = |t: u64| String::from_utf8_lossy(&done[&t].result().body).to_lowercase();
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

/// 20,000 requests over 500 hosts: each done exactly once, and the servers' own clocks
/// show no politeness violation.
pub fn many_hosts_each_request_exactly_once_and_polite<D: Driver>(driver: &D) {
    const HOSTS: usize = 500;
    const REQUESTS: usize = 20_000;
    let delay = Duration::from_millis(20);
    let s = Servers::start(HOSTS);
    let requests: Vec<Probe> = (0..REQUESTS)
        .map(|i| Probe::new(&s.url(i % HOSTS, &format!("/page/{i}")), i as u64))
        .collect();
    let config = Config {
        concurrency: HOSTS,
        ..test_config()
    };
    let policy: Box<dyn Policy> = Box::new(Polite::new().delay(delay).allow_all(true));
    let started = Instant::now();
    let out = run(
        driver,
        Run {
            config,
            policy,
            requests,
            options: Options::default(),
        },
    );
    let took = started.elapsed();
    let done = by_tag(out.finished);
    assert_eq!(done.len(), REQUESTS, "every request finished");
    let failed: Vec<_> = done
        .values()
        .filter(|p| !p.result().ok)
        .take(5)
        .map(|p| p.result().clone())
        .collect();
    assert!(failed.is_empty(), "failures: {failed:?}");
    let log = s.log();
    assert_eq!(log.len(), REQUESTS, "each request fetched exactly once");
    let mut paths: Vec<&str> = log.iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), REQUESTS, "no request fetched twice");
    assert_polite(&s, delay);
    eprintln!("{REQUESTS} requests over {HOSTS} hosts in {took:?}");
}
