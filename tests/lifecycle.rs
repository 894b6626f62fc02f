//! The request lifecycle, scenario by scenario, in virtual time: redirects, retries,
//! robots.txt, cancellation, panicking callbacks, persistence order, stopping.

#![allow(clippy::disallowed_methods)] // one real Instant as the origin of virtual time

use std::time::{Duration, Instant};

use downpour::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use downpour::{
    partition_of, Action, Bytes, Config, ConfigError, Context, Fetch, FetchError, Fifo, HandOff,
    HopResponse, HopResult, Outcome, Partition, Persist, Policy, Polite, Request, Response,
    RobotsConfig, Scheduler, TransportError, TransportErrorKind, Url,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct Req {
    url: String,
    method: Option<String>,
    body: Option<String>,
    priority: i32,
    /// Callback name that panics.
    panic_in: Option<String>,
    /// URLs enqueued from on_success.
    follow: Vec<String>,
    log: Vec<String>,
    parsed: Option<Url>,
    /// The outcome's `started_at`.
    #[serde(skip)]
    started_at: Option<Instant>,
}

impl Req {
    fn new(url: &str) -> Self {
        Req {
            url: url.to_string(),
            parsed: Some(Url::parse(url).unwrap()),
            ..Req::default()
        }
    }
    fn maybe_panic(&self, name: &str) {
        if self.panic_in.as_deref() == Some(name) {
            panic!("{name} exploded");
        }
    }
}

impl Request for Req {
    fn url(&self) -> &Url {
        self.parsed.as_ref().unwrap()
    }
    fn method(&self) -> Method {
        self.method
            .as_deref()
            .map_or(Method::GET, |m| m.parse().unwrap())
    }
    fn body(&self) -> Bytes {
        self.body.clone().map(Bytes::from).unwrap_or_default()
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn on_url(&mut self, _: &mut Context<Self>, url: &Url) {
        self.log.push(format!("url {url}"));
        self.maybe_panic("on_url");
    }
    fn on_status(&mut self, _: &mut Context<Self>, _: downpour::http::Version, status: StatusCode) {
        self.log.push(format!("status {}", status.as_u16()));
        self.maybe_panic("on_status");
    }
    fn on_headers(&mut self, _: &mut Context<Self>, _: &HeaderMap) {
        self.log.push("headers".into());
    }
    fn on_success(&mut self, ctx: &mut Context<Self>, response: &Response) {
        self.log.push(format!("success {}", response.url));
        for url in std::mem::take(&mut self.follow) {
            ctx.enqueue(Req::new(&url)).unwrap();
        }
        self.maybe_panic("on_success");
    }
    fn on_error(&mut self, _: &mut Context<Self>, error: &FetchError) {
        self.log.push(format!("error {}", error.kind()));
    }
    fn on_done(&mut self, _: &mut Context<Self>, outcome: &Outcome) {
        self.started_at = outcome.started_at;
        self.log
            .push(format!("done r{} x{}", outcome.redirects, outcome.retries));
    }
}

/// Drives a scheduler by hand: fetches wait in `pending` until the test answers them.
struct Harness {
    s: Scheduler<Req>,
    t0: Instant,
    now: Instant,
    pending: Vec<Fetch>,
    /// Every fetch started: (time since t0, method, URL, body).
    started: Vec<(Duration, Method, String, Bytes)>,
    done: Vec<Req>,
    persisted: Vec<Persist>,
    /// Requests handed to another partition.
    handed_off: Vec<HandOff<Req>>,
    panics: usize,
}

impl Harness {
    fn new(config: Config, policy: impl Policy + 'static) -> Self {
        let t0 = Instant::now();
        Harness {
            s: Scheduler::new(config, policy).unwrap(),
            t0,
            now: t0,
            pending: Vec::new(),
            started: Vec::new(),
            done: Vec::new(),
            persisted: Vec::new(),
            handed_off: Vec::new(),
            panics: 0,
        }
    }

    fn polite(delay_ms: u64, allow_all: bool) -> Self {
        let policy = Polite::new()
            .delay(Duration::from_millis(delay_ms))
            .allow_all(allow_all);
        Harness::new(Config::default(), policy)
    }

    fn enqueue(&mut self, r: Req) {
        self.s.enqueue(self.now, r).unwrap();
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.s.poll_action() {
            match action {
                Action::Fetch(f) => {
                    self.started.push((
                        self.now - self.t0,
                        f.method.clone(),
                        f.url.to_string(),
                        f.body.clone(),
                    ));
                    self.pending.push(f);
                }
                Action::Callback(cb) => {
                    let report = cb.run();
                    if report.panic().is_some() {
                        self.panics += 1;
                    }
                    if let Some(done) = self.s.handle_callback(self.now, report).unwrap() {
                        self.done.push(done);
                    }
                }
                Action::Persist(p) => self.persisted.push(p),
                Action::HandOff(h) => self.handed_off.push(h),
            }
        }
    }

    /// Answers the pending fetch of this URL.
    fn answer(&mut self, url: &str, result: HopResult) {
        let i = self
            .pending
            .iter()
            .position(|f| f.url.as_str() == url)
            .unwrap_or_else(|| {
                panic!(
                    "no pending fetch of {url}; pending: {:?}",
                    self.pending_urls()
                )
            });
        let f = self.pending.remove(i);
        self.s.handle_fetch(self.now, f.id, result).unwrap();
        self.drain();
    }

    fn pending_urls(&self) -> Vec<String> {
        self.pending.iter().map(|f| f.url.to_string()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
        self.drain();
    }

    /// Advances to the scheduler's next deadline, if any.
    fn advance_to_deadline(&mut self) -> bool {
        match self.s.poll_timeout() {
            Some(t) if t > self.now => {
                self.now = t;
                self.s.handle_timeout(t);
                self.drain();
                true
            }
            Some(_) => {
                self.s.handle_timeout(self.now);
                self.drain();
                true
            }
            None => false,
        }
    }

    fn start_time(&self, url: &str) -> Duration {
        self.started
            .iter()
            .find(|s| s.2 == url)
            .unwrap_or_else(|| panic!("{url} never started"))
            .0
    }

    fn log_of(&self, url: &str) -> Vec<String> {
        self.done
            .iter()
            .find(|r| r.url == url)
            .unwrap_or_else(|| panic!("{url} is not done"))
            .log
            .clone()
    }
}

fn ok(body: &str) -> HopResult {
    let mut r = HopResponse::new(StatusCode::OK);
    r.body = Bytes::from(body.to_string());
    HopResult::Response(r)
}

fn status(code: u16) -> HopResult {
    HopResult::Response(HopResponse::new(StatusCode::from_u16(code).unwrap()))
}

fn with_header(code: u16, name: header::HeaderName, value: &str) -> HopResult {
    let mut r = HopResponse::new(StatusCode::from_u16(code).unwrap());
    r.headers
        .insert(name, HeaderValue::from_str(value).unwrap());
    HopResult::Response(r)
}

fn redirect(code: u16, location: &str) -> HopResult {
    with_header(code, header::LOCATION, location)
}

fn failed(kind: TransportErrorKind) -> HopResult {
    HopResult::Failed(TransportError::new(kind, "test failure"))
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn redirects_resolve_against_the_current_hop_and_report_each_hop() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/start"));
    h.answer("http://a.test/start", redirect(302, "http://b.test/x/y"));
    h.answer("http://b.test/x/y", redirect(301, "../z"));
    h.answer("http://b.test/z", ok("fine"));
    assert_eq!(
        h.log_of("http://a.test/start"),
        vec![
            "status 302",
            "headers",
            "url http://b.test/x/y",
            "status 301",
            "headers",
            "url http://b.test/z",
            "status 200",
            "headers",
            "success http://b.test/z",
            "done r2 x0",
        ]
    );
    assert_eq!(h.s.stats().redirects, 2);
}

#[test]
fn a_redirect_to_another_host_waits_for_that_hosts_delay() {
    let mut h = Harness::polite(1000, true);
    h.enqueue(Req::new("http://b.test/1"));
    h.enqueue(Req::new("http://a.test/r"));
    h.now += 10 * MS;
    h.answer("http://b.test/1", ok(""));
    h.answer("http://a.test/r", redirect(302, "http://b.test/2"));
    assert!(h.pending.is_empty(), "b.test is cooling down");
    while h.advance_to_deadline() {
        let urls = h.pending_urls();
        for url in urls {
            h.answer(&url, ok(""));
        }
    }
    assert_eq!(
        h.start_time("http://b.test/2"),
        1010 * MS,
        "end of b.test/1 + 1 s"
    );
    assert_eq!(h.done.len(), 2);
}

#[test]
fn a_hop_reported_late_counts_its_delay_from_its_end_and_nothing_starts_in_the_past() {
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    let policy = Polite::new().delay(Duration::from_secs(1)).allow_all(true);
    let mut h = Harness::new(config, policy);
    h.enqueue(Req::new("http://a.test/1"));
    h.enqueue(Req::new("http://a.test/2"));
    h.enqueue(Req::new("http://d.test/1"));
    assert_eq!(h.pending_urls(), ["http://a.test/1"], "one slot");
    // a.test/1 ended at 10 ms; the driver hears of it at 300 ms.
    h.advance(300 * MS);
    let a1 = h.pending.remove(0);
    h.s.handle_fetch(h.t0 + 10 * MS, a1.id, ok("")).unwrap();
    h.drain();
    // The freed slot goes to d.test at the latest time handed in, not at a.test's end.
    h.answer("http://d.test/1", ok(""));
    let d1 = h.done.iter().find(|r| r.url == "http://d.test/1").unwrap();
    assert_eq!(d1.started_at, Some(h.t0 + 300 * MS));
    assert_eq!(
        h.s.poll_timeout(),
        Some(h.t0 + 1010 * MS),
        "a.test waits from the end of its response, not from when it was reported"
    );
    assert!(h.advance_to_deadline());
    assert_eq!(h.start_time("http://a.test/2"), 1010 * MS);
}

#[test]
fn see_other_and_post_redirects_become_get_without_body() {
    let mut h = Harness::polite(0, true);
    let mut post = Req::new("http://a.test/form");
    post.method = Some("POST".into());
    post.body = Some("payload".into());
    h.enqueue(post);
    h.answer("http://a.test/form", redirect(307, "/again"));
    h.answer("http://a.test/again", redirect(303, "/result"));
    h.answer("http://a.test/result", ok(""));
    let hops: Vec<(Method, Bytes)> = h
        .started
        .iter()
        .map(|s| (s.1.clone(), s.3.clone()))
        .collect();
    assert_eq!(
        hops,
        vec![
            (Method::POST, Bytes::from("payload")),
            (Method::POST, Bytes::from("payload")),
            (Method::GET, Bytes::new()),
        ]
    );
}

#[test]
fn redirect_loops_and_long_chains_end_with_clear_errors() {
    let config = Config {
        max_redirects: 3,
        ..Config::default()
    };
    let mut h = Harness::new(config, Polite::new().delay(Duration::ZERO).allow_all(true));
    h.enqueue(Req::new("http://a.test/loop"));
    h.answer("http://a.test/loop", redirect(302, "/other"));
    h.answer("http://a.test/other", redirect(302, "/loop"));
    let log = h.log_of("http://a.test/loop");
    assert_eq!(log[log.len() - 2], "error redirect_loop");

    h.enqueue(Req::new("http://a.test/0"));
    for (from, to) in [("0", "/1"), ("1", "/2"), ("2", "/3"), ("3", "/4")] {
        h.answer(&format!("http://a.test/{from}"), redirect(302, to));
    }
    let log = h.log_of("http://a.test/0");
    assert_eq!(log[log.len() - 2], "error too_many_redirects");
    assert!(!h.started.iter().any(|s| s.2 == "http://a.test/4"));

    h.enqueue(Req::new("http://a.test/bad"));
    h.answer("http://a.test/bad", redirect(302, "mailto:someone@a.test"));
    let log = h.log_of("http://a.test/bad");
    assert_eq!(log[log.len() - 2], "error bad_redirect");
}

#[test]
fn server_errors_are_retried_with_backoff_then_succeed() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/flaky"));
    // 500, not 503: a 503 also backs the whole host off (tested elsewhere).
    h.answer("http://a.test/flaky", status(500));
    assert!(h.pending.is_empty());
    // retry_base is 1 s with jitter in [0.5, 1): not before 500 ms.
    h.advance(499 * MS);
    assert!(h.pending.is_empty(), "retried too early");
    h.advance_to_deadline();
    let first_retry = h.now - h.t0;
    assert!(
        first_retry >= 500 * MS && first_retry < 1000 * MS,
        "{first_retry:?}"
    );
    h.answer("http://a.test/flaky", failed(TransportErrorKind::Reset));
    h.advance_to_deadline();
    let second_retry = h.now - h.t0 - first_retry;
    assert!(
        second_retry >= 1000 * MS && second_retry < 2000 * MS,
        "{second_retry:?}"
    );
    h.answer("http://a.test/flaky", ok(""));
    assert_eq!(
        h.log_of("http://a.test/flaky"),
        vec![
            "status 500",
            "headers",
            "status 200",
            "headers",
            "success http://a.test/flaky",
            "done r0 x2"
        ]
    );
}

#[test]
fn a_503_backs_the_host_off_before_the_retry() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/busy"));
    h.answer("http://a.test/busy", status(503));
    // The retry's own back-off is under 1 s, but the host backs off 1 s after a 503.
    h.advance_to_deadline();
    h.advance_to_deadline();
    assert_eq!(h.start_time("http://a.test/busy"), Duration::ZERO);
    assert_eq!(h.started.len(), 2);
    assert_eq!(h.started[1].0, 1000 * MS);
}

#[test]
fn retry_after_is_honoured_and_retries_run_out() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/busy"));
    h.answer(
        "http://a.test/busy",
        with_header(429, header::RETRY_AFTER, "7"),
    );
    h.advance(6999 * MS);
    assert!(h.pending.is_empty(), "Retry-After: 7 not honoured");
    h.advance(MS);
    h.answer("http://a.test/busy", status(500));
    h.advance_to_deadline();
    h.advance_to_deadline();
    h.answer("http://a.test/busy", status(500));
    let log = h.log_of("http://a.test/busy");
    assert_eq!(log[log.len() - 2..], ["error status", "done r0 x2"]);
    assert_eq!(h.started.len(), 3);
}

#[test]
fn a_retry_after_beyond_the_limit_gives_up_at_once() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/later"));
    h.answer(
        "http://a.test/later",
        with_header(503, header::RETRY_AFTER, "86400"),
    );
    let log = h.log_of("http://a.test/later");
    assert_eq!(
        log[log.len() - 2..],
        ["error retry_after_too_long", "done r0 x0"]
    );
}

#[test]
fn only_transient_transport_errors_are_retried() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://nowhere.test/"));
    h.answer("http://nowhere.test/", failed(TransportErrorKind::Dns));
    let log = h.log_of("http://nowhere.test/");
    assert_eq!(log, vec!["error dns", "done r0 x0"]);
    h.enqueue(Req::new("http://slow.test/"));
    h.answer("http://slow.test/", failed(TransportErrorKind::Timeout));
    h.advance_to_deadline();
    assert_eq!(
        h.pending_urls(),
        vec!["http://slow.test/"],
        "a timeout is retried"
    );
}

#[test]
fn client_errors_fail_with_the_response_and_bodies_over_the_cap_fail() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/missing"));
    h.answer("http://a.test/missing", status(404));
    assert_eq!(
        h.log_of("http://a.test/missing"),
        vec!["status 404", "headers", "error status", "done r0 x0"]
    );
    h.enqueue(Req::new("http://a.test/huge"));
    let mut r = HopResponse::new(StatusCode::OK);
    r.truncated = true;
    h.answer("http://a.test/huge", HopResult::Response(r));
    let log = h.log_of("http://a.test/huge");
    assert_eq!(log[log.len() - 2], "error body_too_large");
    h.enqueue(Req::new("http://a.test/unchanged"));
    h.answer("http://a.test/unchanged", status(304));
    let log = h.log_of("http://a.test/unchanged");
    assert_eq!(log[log.len() - 2], "success http://a.test/unchanged");
}

#[test]
fn robots_txt_is_fetched_first_and_obeyed() {
    let mut h = Harness::polite(100, false);
    h.enqueue(Req::new("http://a.test/public"));
    h.enqueue(Req::new("http://a.test/private/x"));
    assert_eq!(h.pending_urls(), vec!["http://a.test/robots.txt"]);
    assert_eq!(h.s.stats().waiting_robots, 2);
    h.now += 5 * MS;
    h.answer(
        "http://a.test/robots.txt",
        ok("User-agent: *\nDisallow: /private\n"),
    );
    // The disallowed one ends at once and is never fetched.
    assert_eq!(
        h.log_of("http://a.test/private/x"),
        vec!["error disallowed", "done r0 x0"]
    );
    assert!(
        h.pending.is_empty(),
        "the host's delay runs after robots.txt too"
    );
    h.advance_to_deadline();
    assert_eq!(h.start_time("http://a.test/public"), 105 * MS);
    h.answer("http://a.test/public", ok(""));
    assert!(!h.started.iter().any(|s| s.2.contains("private")));
    assert_eq!(h.s.stats().disallowed, 1);
}

#[test]
fn robots_txt_404_allows_everything_and_crawl_delay_slows_the_host() {
    let mut h = Harness::polite(100, false);
    h.enqueue(Req::new("http://a.test/1"));
    h.answer("http://a.test/robots.txt", status(404));
    h.advance_to_deadline();
    h.answer("http://a.test/1", ok(""));
    assert_eq!(h.done.len(), 1);

    h.enqueue(Req::new("http://b.test/1"));
    h.enqueue(Req::new("http://b.test/2"));
    h.answer(
        "http://b.test/robots.txt",
        ok("User-agent: *\nCrawl-delay: 3\n"),
    );
    h.advance_to_deadline();
    let first = h.now;
    h.answer("http://b.test/1", ok(""));
    h.advance_to_deadline();
    assert_eq!(
        h.now - first,
        3000 * MS,
        "Crawl-delay: 3 replaces the 100 ms delay"
    );
}

#[test]
fn robots_txt_that_redirects_is_followed_and_applies_to_the_first_origin() {
    let mut h = Harness::polite(0, false);
    h.enqueue(Req::new("http://a.test/secret/1"));
    h.answer(
        "http://a.test/robots.txt",
        redirect(301, "http://cdn.test/robots-a.txt"),
    );
    h.answer(
        "http://cdn.test/robots-a.txt",
        ok("User-agent: *\nDisallow: /secret\n"),
    );
    assert_eq!(
        h.log_of("http://a.test/secret/1"),
        vec!["error disallowed", "done r0 x0"]
    );
}

#[test]
fn unavailable_robots_txt_is_retried_then_the_origin_is_off_limits() {
    let robots = RobotsConfig {
        retry_delay: Duration::from_secs(10),
        max_attempts: 2,
        unavailable_for: Duration::from_secs(600),
        ..RobotsConfig::default()
    };
    let config = Config {
        robots,
        ..Config::default()
    };
    let mut h = Harness::new(config, Polite::new().delay(Duration::ZERO));
    h.enqueue(Req::new("http://a.test/page"));
    h.answer("http://a.test/robots.txt", status(500));
    h.advance(9999 * MS);
    assert!(h.pending.is_empty(), "robots.txt retried too early");
    h.advance(MS);
    h.answer(
        "http://a.test/robots.txt",
        failed(TransportErrorKind::Connect),
    );
    assert_eq!(
        h.log_of("http://a.test/page"),
        vec!["error robots_unavailable", "done r0 x0"]
    );
    // Meanwhile new requests fail at once, without a fetch.
    h.enqueue(Req::new("http://a.test/other"));
    assert!(h.pending.is_empty());
    assert_eq!(
        h.log_of("http://a.test/other"),
        vec!["error robots_unavailable", "done r0 x0"]
    );
    // Later, robots.txt is tried again.
    h.advance(Duration::from_secs(600));
    h.enqueue(Req::new("http://a.test/again"));
    assert_eq!(h.pending_urls(), vec!["http://a.test/robots.txt"]);
    h.answer("http://a.test/robots.txt", ok(""));
    h.answer("http://a.test/again", ok(""));
    assert!(h
        .log_of("http://a.test/again")
        .contains(&"success http://a.test/again".to_string()));
}

#[test]
fn a_truncated_robots_txt_is_used_as_far_as_it_was_read() {
    let mut h = Harness::polite(0, false);
    h.enqueue(Req::new("http://a.test/no"));
    let mut r = HopResponse::new(StatusCode::OK);
    r.body = Bytes::from("User-agent: *\nDisallow: /no\n# and much more");
    r.truncated = true;
    h.answer("http://a.test/robots.txt", HopResult::Response(r));
    assert_eq!(
        h.log_of("http://a.test/no"),
        vec!["error disallowed", "done r0 x0"]
    );
}

#[test]
fn a_panicking_callback_ends_its_request_with_an_error_and_disturbs_nothing_else() {
    let mut h = Harness::polite(0, true);
    let mut bad = Req::new("http://a.test/r");
    bad.panic_in = Some("on_status".into());
    h.enqueue(bad);
    h.enqueue(Req::new("http://b.test/fine"));
    h.answer("http://a.test/r", redirect(302, "/next"));
    h.answer("http://b.test/fine", ok(""));
    assert_eq!(
        h.log_of("http://a.test/r"),
        vec![
            "status 302",
            "headers",
            "url http://a.test/next",
            "error callback_panicked",
            "done r0 x0"
        ]
    );
    assert!(!h.started.iter().any(|s| s.2 == "http://a.test/next"));
    assert_eq!(h.log_of("http://b.test/fine").len(), 4);

    let mut bad = Req::new("http://c.test/");
    bad.panic_in = Some("on_success".into());
    h.enqueue(bad);
    h.answer("http://c.test/", ok(""));
    let log = h.log_of("http://c.test/");
    assert_eq!(
        log.last().unwrap(),
        "done r0 x0",
        "on_done runs after a panicking on_success"
    );
    assert_eq!(h.panics, 2);
    assert_eq!(h.s.stats().callback_panics, 2);
    assert!(h.s.is_idle());
}

#[test]
fn follow_ups_are_persisted_before_their_parent_is_removed() {
    let config = Config {
        persist: true,
        ..Config::default()
    };
    let mut h = Harness::new(config, Polite::new().delay(Duration::ZERO).allow_all(true));
    let mut parent = Req::new("http://a.test/");
    parent.follow = vec!["http://a.test/child1".into(), "http://b.test/child2".into()];
    h.enqueue(parent);
    h.answer("http://a.test/", ok(""));
    let kinds: Vec<String> = h
        .persisted
        .iter()
        .map(|p| match p {
            Persist::Accepted { parent: None, .. } => "accepted".to_string(),
            Persist::Accepted {
                parent: Some(_), ..
            } => "accepted child".to_string(),
            Persist::Finished { .. } => "finished".to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["accepted", "accepted child", "accepted child", "finished"]
    );
    h.advance_to_deadline();
    let mut urls = h.pending_urls();
    urls.sort();
    assert_eq!(urls, vec!["http://a.test/child1", "http://b.test/child2"]);
}

#[test]
fn cancel_ends_queued_requests_at_once_and_in_flight_ones_when_they_return() {
    let config = Config {
        concurrency: 1,
        ..Config::default()
    };
    let mut h = Harness::new(config, Fifo::new());
    let first = h.s.enqueue(h.now, Req::new("http://a.test/1")).unwrap();
    let second = h.s.enqueue(h.now, Req::new("http://a.test/2")).unwrap();
    h.drain();
    assert!(h.s.cancel(h.now, second));
    h.drain();
    assert_eq!(
        h.log_of("http://a.test/2"),
        vec!["error cancelled", "done r0 x0"]
    );
    assert!(h.s.cancel(h.now, first));
    assert!(!h.s.cancel(h.now, first), "cancelling twice does nothing");
    h.answer("http://a.test/1", redirect(302, "/elsewhere"));
    assert_eq!(
        h.log_of("http://a.test/1"),
        vec!["error cancelled", "done r0 x0"]
    );
    assert!(h.pending.is_empty());
    assert!(h.s.is_idle());
}

#[test]
fn stop_keeps_the_queue_and_hands_it_back_in_order() {
    let config = Config {
        concurrency: 2,
        ..Config::default()
    };
    let mut h = Harness::new(config, Fifo::new());
    for i in 0..5 {
        h.enqueue(Req::new(&format!("http://a.test/{i}")));
    }
    h.s.stop();
    h.answer("http://a.test/0", ok(""));
    assert_eq!(h.pending.len(), 1, "no new fetch after stop");
    assert!(!h.s.is_idle());
    h.answer("http://a.test/1", ok(""));
    assert!(h.s.is_idle());
    let rest: Vec<String> =
        h.s.take_unfinished()
            .into_iter()
            .map(|(_, r)| r.url)
            .collect();
    assert_eq!(
        rest,
        vec!["http://a.test/2", "http://a.test/3", "http://a.test/4"]
    );
    assert_eq!(h.s.len(), 0);
}

#[test]
fn requests_that_cannot_be_fetched_are_handed_back_with_a_reason() {
    let mut h = Harness::polite(0, true);
    let refused = h.s.extend(
        h.now,
        vec![
            Req::new("ftp://a.test/file"),
            Req::new("http://a.test/ok"),
            Req::new("file:///etc/passwd"),
        ],
    );
    let reasons: Vec<String> = refused.iter().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("only http and https"), "{}", reasons[0]);
    assert_eq!(refused[1].request.url, "file:///etc/passwd");
    assert_eq!(h.s.len(), 1);
}

#[test]
fn unexpected_inputs_are_refused_and_change_nothing() {
    let mut h = Harness::polite(0, true);
    h.enqueue(Req::new("http://a.test/"));
    let f = h.pending.remove(0);
    h.s.handle_fetch(h.now, f.id, ok("")).unwrap();
    assert!(
        h.s.handle_fetch(h.now, f.id, ok("")).is_err(),
        "a second result for one hop"
    );
    h.drain();
    assert_eq!(h.done.len(), 1);
    assert_eq!(h.s.stats().finished, 1);
}

#[test]
fn fifo_keeps_the_pool_size_and_priority() {
    let config = Config {
        concurrency: 2,
        ..Config::default()
    };
    let mut h = Harness::new(config, Fifo::new());
    let requests = (0..4).map(|i| {
        let mut r = Req::new(&format!("http://a.test/{i}"));
        r.priority = if i == 3 { 10 } else { 0 };
        r
    });
    assert!(h.s.extend(h.now, requests).is_empty());
    h.drain();
    assert_eq!(h.pending_urls(), vec!["http://a.test/3", "http://a.test/0"]);
    h.answer("http://a.test/3", ok(""));
    assert_eq!(h.pending_urls(), vec!["http://a.test/0", "http://a.test/1"]);
}

#[test]
fn finished_hosts_are_forgotten_once_their_delay_has_passed() {
    let mut h = Harness::polite(1000, true);
    for i in 0..50 {
        h.enqueue(Req::new(&format!("http://h{i}.test/")));
    }
    let urls = h.pending_urls();
    for url in urls {
        h.answer(&url, ok(""));
    }
    assert_eq!(h.s.stats().hosts, 50);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.s.stats().hosts,
        0,
        "host state must not grow without bound"
    );
    assert!(h.s.is_idle());
}

#[test]
fn host_waits_are_explained() {
    let mut h = Harness::polite(1000, true);
    h.enqueue(Req::new("http://a.test/1"));
    h.enqueue(Req::new("http://a.test/2"));
    let wait = h.s.host_wait(h.now, "a.test").unwrap();
    assert_eq!(wait.reason, downpour::WaitReason::InFlightLimit);
    h.answer(
        "http://a.test/1",
        with_header(503, header::RETRY_AFTER, "30"),
    );
    let wait = h.s.host_wait(h.now, "a.test").unwrap();
    assert_eq!(wait.reason, downpour::WaitReason::Backoff);
    assert_eq!(wait.remaining(h.now), Some(Duration::from_secs(30)));
    assert_eq!(h.s.wait_summary(h.now).backoff, 1);
}

#[test]
fn an_accepted_request_can_be_serialized_even_when_it_ends_at_once() {
    let config = Config {
        persist: true,
        ..Config::default()
    };
    let mut h = Harness::new(config, Polite::new().delay(Duration::ZERO));
    h.enqueue(Req::new("http://a.test/public"));
    h.answer(
        "http://a.test/robots.txt",
        ok("User-agent: *\nDisallow: /private\n"),
    );
    h.answer("http://a.test/public", ok(""));
    // robots.txt is cached now: this one is refused inside `enqueue`, and its callbacks
    // are queued right behind its `Accepted`.
    h.s.enqueue(h.now, Req::new("http://a.test/private/x"))
        .unwrap();
    let mut order = Vec::new();
    while let Some(action) = h.s.poll_action() {
        match action {
            Action::Persist(Persist::Accepted { id, .. }) => {
                let stored = h.s.request(id).map(|r| serde_json::to_string(r).unwrap());
                assert!(
                    stored.as_deref().is_some_and(|s| s.contains("private/x")),
                    "the request must still be readable when its Accepted is polled"
                );
                order.push("accepted");
            }
            Action::Persist(Persist::Finished { .. }) => order.push("finished"),
            Action::Callback(cb) => {
                order.push("callback");
                let report = cb.run();
                h.s.handle_callback(h.now, report).unwrap();
            }
            Action::Fetch(_) => panic!("a disallowed URL is never fetched"),
            Action::HandOff(_) => panic!("no partition is configured"),
        }
    }
    assert_eq!(order, vec!["accepted", "callback", "finished"]);
}

/// A host name of `.test` in each partition of two: (partition 0's, partition 1's).
fn hosts_of_two_partitions() -> (String, String) {
    let name = |p| {
        (0..)
            .map(|i| format!("h{i}.test"))
            .find(|h| partition_of(h, 2) == p)
            .unwrap()
    };
    (name(0), name(1))
}

fn partitioned(index: u32, delay_ms: u64) -> Harness {
    let config = Config {
        partition: Some(Partition { index, count: 2 }),
        ..Config::default()
    };
    let policy = Polite::new()
        .delay(Duration::from_millis(delay_ms))
        .allow_all(true);
    Harness::new(config, policy)
}

#[test]
fn a_redirect_to_a_host_of_another_partition_is_handed_to_its_owner() {
    let (mine, theirs) = hosts_of_two_partitions();
    let mut source = partitioned(0, 1000);
    let mut owner = partitioned(1, 1000);
    source.enqueue(Req::new(&format!("http://{mine}/r")));
    source.now += 5 * MS;
    // A redirect within the partition is followed here.
    source.answer(
        &format!("http://{mine}/r"),
        redirect(301, &format!("http://{mine}/r2")),
    );
    source.advance_to_deadline();
    let target = format!("http://{theirs}/moved");
    source.answer(&format!("http://{mine}/r2"), redirect(302, &target));
    assert!(source.pending.is_empty(), "{:?}", source.pending_urls());
    assert!(source.done.is_empty());
    assert!(source.s.is_idle() && source.s.is_empty());
    assert_eq!(source.s.stats().handed_off, 1);
    let hand_off = source.handed_off.pop().expect("handed off");
    assert_eq!(hand_off.partition(), 1);
    assert_eq!(hand_off.url().as_str(), target);

    // The owner's clock starts a second after the request was enqueued (its first input is
    // its own request), and it keeps its politeness for the host: that request is in flight.
    owner.now = source.now;
    owner.enqueue(Req::new(&format!("http://{theirs}/own")));
    owner.s.handle_hand_off(owner.now, hand_off);
    owner.drain();
    assert_eq!(owner.pending_urls(), vec![format!("http://{theirs}/own")]);
    owner.now += 10 * MS;
    owner.answer(&format!("http://{theirs}/own"), ok(""));
    let answered = owner.now;
    while owner.advance_to_deadline() {
        for url in owner.pending_urls() {
            owner.answer(&url, ok("moved here"));
        }
    }
    assert_eq!(owner.start_time(&target), answered - owner.t0 + 1000 * MS);
    let original = format!("http://{mine}/r");
    assert_eq!(
        owner.log_of(&original),
        vec![
            "status 301".to_string(),
            "headers".into(),
            format!("url http://{mine}/r2"),
            "status 302".into(),
            "headers".into(),
            format!("url {target}"),
            "status 200".into(),
            "headers".into(),
            format!("success {target}"),
            "done r2 x0".into(),
        ]
    );
    let done = owner.done.iter().find(|r| r.url == original).unwrap();
    assert_eq!(done.started_at, Some(source.t0), "started at the source");
    let stats = owner.s.stats();
    assert_eq!(
        (stats.handed_in, stats.finished, stats.unfinished),
        (1, 2, 0)
    );
}

#[test]
fn a_scheduler_takes_back_its_own_hand_off_and_partitions_are_checked() {
    let (mine, theirs) = hosts_of_two_partitions();
    let mut h = partitioned(0, 0);
    h.enqueue(Req::new(&format!("http://{mine}/r")));
    let target = format!("http://{theirs}/x");
    h.answer(&format!("http://{mine}/r"), redirect(302, &target));
    // No way to the owner: the scheduler that made the hand-off fetches the target itself.
    let hand_off = h.handed_off.pop().unwrap();
    h.s.handle_hand_off(h.now, hand_off);
    h.drain();
    h.answer(&target, ok(""));
    assert_eq!(h.done.len(), 1);
    assert!(h.s.is_idle());

    let bad = Config {
        partition: Some(Partition { index: 2, count: 2 }),
        ..Config::default()
    };
    let error = Scheduler::<Req>::new(bad, Fifo::new()).err().unwrap();
    assert!(matches!(error, ConfigError::BadPartition(_)), "{error}");
    assert!(error.to_string().contains("partition 2 of 2"), "{error}");
    let mut h = partitioned(0, 0);
    let error = h.s.set_partition(Some(Partition { index: 1, count: 1 }));
    assert!(matches!(error, Err(ConfigError::BadPartition(_))));
    assert_eq!(
        h.s.config().partition,
        Some(Partition { index: 0, count: 2 })
    );
}

/// With durable storage, the hand-off comes before the request's `Finished` (so that storage
/// holds it before the request is removed), crosses as text, and the owner takes it as
/// stored: no `Accepted`, a `Finished` at its end.
#[test]
fn a_persisted_hand_off_precedes_its_removal_and_crosses_as_text() {
    let (mine, theirs) = hosts_of_two_partitions();
    let persisted = |index| Config {
        partition: Some(Partition { index, count: 2 }),
        persist: true,
        ..Config::default()
    };
    let mut source = Scheduler::<Req>::new(persisted(0), Fifo::new()).unwrap();
    let t0 = Instant::now();
    let original = format!("http://{mine}/r");
    let target = format!("http://{theirs}/moved");
    let id = source
        .enqueue(t0, Req::new(&format!("{original}?a")))
        .unwrap();
    let mut fetch = None;
    while let Some(action) = source.poll_action() {
        match action {
            Action::Fetch(f) => fetch = Some(f),
            Action::Persist(Persist::Accepted { id: a, .. }) => assert_eq!(a, id),
            _ => panic!("unexpected action"),
        }
    }
    source
        .handle_fetch(t0, fetch.unwrap().id, redirect(301, &target))
        .unwrap();
    let mut order = Vec::new();
    let mut hand_off = None;
    while let Some(action) = source.poll_action() {
        match action {
            Action::Callback(cb) => {
                order.push("callback");
                let report = cb.run();
                assert!(source.handle_callback(t0, report).unwrap().is_none());
            }
            Action::HandOff(h) => {
                order.push("hand-off");
                hand_off = Some(h);
            }
            Action::Persist(Persist::Finished { id: f }) => {
                assert_eq!(f, id);
                order.push("finished");
            }
            _ => panic!("unexpected action"),
        }
    }
    assert_eq!(order, vec!["callback", "hand-off", "finished"]);
    let stats = source.stats();
    assert_eq!(
        (
            stats.accepted,
            stats.handed_off,
            stats.finished,
            stats.unfinished
        ),
        (1, 1, 0, 0)
    );

    let text = serde_json::to_string(&hand_off.unwrap()).unwrap();
    let hand_off: HandOff<Req> = serde_json::from_str(&text).unwrap();
    assert_eq!(hand_off.partition(), 1);
    assert_eq!(hand_off.url().as_str(), target);

    // The owner runs another partition first; its worker moves to partition 1.
    let mut owner = Harness::new(persisted(0), Fifo::new());
    owner
        .s
        .set_partition(Some(Partition { index: 1, count: 2 }))
        .unwrap();
    owner.s.handle_hand_off(owner.now, hand_off);
    owner.drain();
    assert!(owner.persisted.is_empty(), "{:?}", owner.persisted);
    owner.answer(&target, ok("moved here"));
    assert!(
        matches!(owner.persisted[..], [Persist::Finished { .. }]),
        "{:?}",
        owner.persisted
    );
    assert_eq!(
        owner.log_of(&format!("{original}?a")),
        vec![
            "status 301".to_string(),
            "headers".into(),
            format!("url {target}"),
            "status 200".into(),
            "headers".into(),
            format!("success {target}"),
            "done r1 x0".into(),
        ]
    );
    // A redirect from partition 1 to a host of partition 0 is handed off again.
    let mut again = Req::new(&format!("http://{theirs}/r"));
    again.log.clear();
    owner.enqueue(again);
    owner.answer(
        &format!("http://{theirs}/r"),
        redirect(302, &format!("http://{mine}/back")),
    );
    assert_eq!(owner.handed_off.len(), 1);
    assert_eq!(owner.handed_off[0].partition(), 0);

    // Text that does not lead to a fetchable URL is refused, with the reason.
    let bad = text.replace(&target, "mailto:someone@example.com");
    let error = serde_json::from_str::<HandOff<Req>>(&bad).err().unwrap();
    assert!(error.to_string().contains("mailto"), "{error}");
    let bad = text.replace("\"GET\"", "\"G T\"");
    assert!(serde_json::from_str::<HandOff<Req>>(&bad).is_err());
}
