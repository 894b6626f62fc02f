//! Simulation and fuzzing of the core in virtual time: a testing aid.
//!
//! Compiled only with the `sim` cargo feature; nothing in it is meant for production. It
//! holds:
//!
//! - [`Clock`]: virtual time, a fixed origin plus an offset that only moves forward;
//! - [`Origin`]: a seeded fake web of many hosts, with latencies, rate limits (with and
//!   without `Retry-After`), 5xx, connection resets, stalls, oversized bodies, redirect chains
//!   and loops, and robots.txt in many variants;
//! - [`simulate`]: runs a [`Scheduler`] against the origin as a driver does, with many hops
//!   overlapping and completing out of order, then checks that everything drains;
//! - [`Checker`]: the invariants, checked after every step: politeness, in-flight limits,
//!   robots.txt, retries and redirects, the order of callbacks, the counters;
//! - [`fuzz_one`]: decodes arbitrary bytes into a sequence of inputs, with the same checks.
//!
//! A broken invariant panics with a message that says what broke and when.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, DATE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode, Version};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use url::{Position, Url};

use crate::action::{Action, Persist};
use crate::callback::{Callback, CallbackReport};
use crate::config::{Config, RobotsConfig};
use crate::fetch::{
    Fetch, FetchId, HopResponse, HopResult, Purpose, TransportError, TransportErrorKind,
};
use crate::outcome::{FetchError, Outcome, Response};
use crate::policy::{Fifo, Policy, Polite};
use crate::request::{Context, Request, RequestId};
use crate::scheduler::Scheduler;
use crate::{redirect, robots};

// ----- virtual time -----

/// Virtual time: a fixed origin and an offset that only moves forward.
///
/// Runs are compared by offsets, never by the origin, so the same seed gives the same trace.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    offset: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The wall-clock date virtual time starts at (for `Date` and `Retry-After` headers).
const WALL_ORIGIN: Duration = Duration::from_secs(1_700_000_000);

impl Clock {
    /// A clock at offset zero.
    pub fn new() -> Self {
        Clock {
            base: real_origin(),
            offset: Duration::ZERO,
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }

    /// Virtual time elapsed since the origin.
    pub fn elapsed(&self) -> Duration {
        self.offset
    }

    /// The offset of an instant from the origin.
    pub fn offset_of(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.base)
    }

    /// The instant at this offset.
    pub fn at(&self, offset: Duration) -> Instant {
        self.base + offset
    }

    /// Moves time forward.
    pub fn advance(&mut self, by: Duration) {
        self.offset += by;
    }

    /// Moves time forward to `at`; an instant in the past changes nothing.
    pub fn advance_to(&mut self, at: Instant) {
        self.offset = self.offset.max(self.offset_of(at));
    }

    /// The virtual wall-clock time, for HTTP dates.
    pub fn wall(&self) -> SystemTime {
        UNIX_EPOCH + WALL_ORIGIN + self.offset
    }
}

#[allow(clippy::disallowed_methods)] // The one real clock reading: the origin of virtual time.
fn real_origin() -> Instant {
    Instant::now()
}

// ----- the request type -----

/// A callback of [`SimRequest`], to make it panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// `on_status`.
    Status,
    /// `on_headers`.
    Headers,
    /// `on_url`.
    Url,
    /// `on_success`.
    Success,
    /// `on_error`.
    Error,
    /// `on_done`.
    Done,
}

/// One callback a [`SimRequest`] received, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// `on_status`.
    Status(u16),
    /// `on_headers`.
    Headers,
    /// `on_url`.
    Url(Url),
    /// `on_success`, with the final status.
    Success(u16),
    /// `on_error`, with the error's kind.
    Error(String),
    /// `on_done`.
    Done {
        /// The outcome was a success.
        ok: bool,
        /// The error's kind, when it was not.
        error: Option<String>,
        /// Redirects followed.
        redirects: u32,
        /// Attempts retried.
        retries: u32,
        /// The last URL.
        url: Url,
    },
    /// A follow-up (by key) the context refused.
    Refused(u64),
}

/// The payload of the deliberate panics of [`SimRequest`] callbacks.
pub const DELIBERATE_PANIC: &str = "sim: deliberate panic in a callback";

/// The request type of simulations: it logs every callback it gets, and can panic in one of
/// them or enqueue follow-ups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRequest {
    /// Unique in a run.
    pub key: u64,
    /// The URL.
    pub url: Url,
    /// `POST` with a small body instead of `GET`.
    pub post: bool,
    /// The priority.
    pub priority: i32,
    /// This callback panics (after logging).
    pub panic_in: Option<Hook>,
    /// Follow-ups to enqueue (key and URL), from `on_success`, or from `on_done` when
    /// `follow_in_done`.
    pub follow_ups: Vec<(u64, Url)>,
    /// Enqueue the follow-ups from `on_done` rather than `on_success`.
    pub follow_in_done: bool,
    /// Every callback received, in order.
    pub log: Vec<Event>,
}

impl SimRequest {
    /// A plain `GET` of `url`.
    pub fn new(key: u64, url: Url) -> Self {
        SimRequest {
            key,
            url,
            post: false,
            priority: 0,
            panic_in: None,
            follow_ups: Vec::new(),
            follow_in_done: false,
            log: Vec::new(),
        }
    }

    /// The `on_done` event, once finished.
    pub fn done(&self) -> Option<&Event> {
        self.log
            .iter()
            .rev()
            .find(|e| matches!(e, Event::Done { .. }))
    }

    /// The outcome's kind: `"ok"`, or the error's kind; `None` while unfinished.
    pub fn outcome_kind(&self) -> Option<&str> {
        match self.done()? {
            Event::Done { ok: true, .. } => Some("ok"),
            Event::Done { error, .. } => Some(error.as_deref().unwrap_or("?")),
            _ => None,
        }
    }

    fn hook(&self, hook: Hook) {
        if self.panic_in == Some(hook) {
            std::panic::panic_any(DELIBERATE_PANIC);
        }
    }

    fn send_follow_ups(&mut self, ctx: &mut Context<Self>) {
        for (key, url) in std::mem::take(&mut self.follow_ups) {
            if ctx.enqueue(SimRequest::new(key, url)).is_err() {
                self.log.push(Event::Refused(key));
            }
        }
    }
}

impl Request for SimRequest {
    fn url(&self) -> &Url {
        &self.url
    }

    fn method(&self) -> Method {
        if self.post {
            Method::POST
        } else {
            Method::GET
        }
    }

    fn body(&self) -> Bytes {
        if self.post {
            Bytes::from_static(b"a=1")
        } else {
            Bytes::new()
        }
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn on_url(&mut self, _: &mut Context<Self>, url: &Url) {
        self.log.push(Event::Url(url.clone()));
        self.hook(Hook::Url);
    }

    fn on_status(&mut self, _: &mut Context<Self>, _: Version, status: StatusCode) {
        self.log.push(Event::Status(status.as_u16()));
        self.hook(Hook::Status);
    }

    fn on_headers(&mut self, _: &mut Context<Self>, _: &HeaderMap) {
        self.log.push(Event::Headers);
        self.hook(Hook::Headers);
    }

    fn on_success(&mut self, ctx: &mut Context<Self>, response: &Response) {
        self.log.push(Event::Success(response.status.as_u16()));
        if !self.follow_in_done {
            self.send_follow_ups(ctx);
        }
        self.hook(Hook::Success);
    }

    fn on_error(&mut self, _: &mut Context<Self>, error: &FetchError) {
        self.log.push(Event::Error(error.kind().to_string()));
        self.hook(Hook::Error);
    }

    fn on_done(&mut self, ctx: &mut Context<Self>, outcome: &Outcome) {
        if self.follow_in_done {
            self.send_follow_ups(ctx);
        }
        self.log.push(Event::Done {
            ok: outcome.is_success(),
            error: outcome.result.as_ref().err().map(|e| e.kind().to_string()),
            redirects: outcome.redirects,
            retries: outcome.retries,
            url: outcome.url().clone(),
        });
        self.hook(Hook::Done);
    }
}

/// Keeps the deliberate panics of [`SimRequest`] callbacks quiet (the scheduler's callback
/// runner catches them); every other panic still goes to the hook installed before. Call it
/// after any hook that aborts on panic (a fuzzer's) is in place.
pub fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&DELIBERATE_PANIC) {
                previous(info);
            }
        }));
    });
}

// ----- a trace digest -----

/// FNV-1a over a run's observable events: equal digests, equal runs.
#[derive(Debug, Clone, Copy)]
struct Digest(u64);

impl Digest {
    fn new() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn time(&mut self, d: Duration) {
        self.u64(d.as_nanos() as u64);
    }
}

// ----- robots.txt as the checker reads it -----

/// The rules of a robots.txt, read independently of the scheduler's parser. Only the simple
/// files the fake origin and the fuzzer serve are understood: one `*` group, `Disallow`
/// prefixes and `Crawl-delay`.
#[derive(Debug, Clone, PartialEq)]
struct Rules {
    disallow: Vec<String>,
    crawl_delay: Option<Duration>,
}

impl Rules {
    fn allow_all() -> Self {
        Rules {
            disallow: Vec::new(),
            crawl_delay: None,
        }
    }

    fn parse(body: &[u8], max_crawl_delay: Duration) -> Self {
        let mut rules = Rules::allow_all();
        let mut crawl = None;
        for line in String::from_utf8_lossy(body).split('\n') {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "disallow" if !value.is_empty() => rules.disallow.push(value.to_string()),
                "crawl-delay" if crawl.is_none() => {
                    crawl = value.parse::<f32>().ok().filter(|d| *d >= 0.0);
                }
                _ => {}
            }
        }
        rules.crawl_delay = crawl.and_then(|s| robots::crawl_delay(s, max_crawl_delay));
        rules
    }

    fn allows(&self, url: &Url) -> bool {
        let path = &url[Position::BeforePath..];
        // RFC 9309: robots.txt itself is always allowed.
        path == "/robots.txt" || !self.disallow.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// `scheme://host:port`, as RFC 9309 scopes robots.txt.
fn origin_key(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

// ----- the checker -----

/// The policy a scheduler runs, or that the [`Checker`] holds it to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyKind {
    /// [`Polite`] with these settings.
    Polite {
        /// Most hops in flight per host.
        per_host: u32,
        /// Delay from the end of a response to the next start, per host.
        delay: Duration,
        /// Skip robots.txt.
        allow_all: bool,
        /// Adaptive delay on (it only lengthens waits).
        adaptive: bool,
    },
    /// [`Fifo`]: no politeness, no robots.txt.
    Fifo,
}

impl PolicyKind {
    /// The policy itself.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::Polite {
                per_host,
                delay,
                allow_all,
                adaptive,
            } => {
                let mut p = Polite::new()
                    .per_host(per_host)
                    .delay(delay)
                    .allow_all(allow_all);
                if adaptive {
                    p = p.adaptive(1.5, Duration::from_secs(10));
                }
                Box::new(p)
            }
            PolicyKind::Fifo => Box::new(Fifo::new()),
        }
    }

    fn obeys_robots(self) -> bool {
        matches!(
            self,
            PolicyKind::Polite {
                allow_all: false,
                ..
            }
        )
    }
}

/// Counters the checker keeps from what it saw, to compare with [`Stats`](crate::Stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests accepted (enqueued, restored, follow-ups).
    pub accepted: u64,
    /// Requests finished (returned by `handle_callback`).
    pub done: u64,
    /// Of those, successful.
    pub succeeded: u64,
    /// Of those, refused by robots.txt.
    pub disallowed: u64,
    /// Retries over finished requests.
    pub retries: u64,
    /// Redirects over finished requests.
    pub redirects: u64,
    /// Requests taken back with `take_unfinished`.
    pub taken: u64,
    /// Hops started.
    pub fetches: u64,
    /// robots.txt jobs seen (each counted at its first hop).
    pub robots_jobs: u64,
    /// Callback reports with a panic.
    pub callback_panics: u64,
    /// Final deliveries out with the driver.
    pub lent_final: u64,
}

#[derive(Debug, Default)]
struct HostCheck {
    in_flight: u32,
    /// No hop to the host may start before this.
    not_before: Option<Instant>,
    /// Origins of the host seen so far (robots.txt is per origin, pacing per host).
    origins: Vec<String>,
}

#[derive(Debug, Default)]
struct OriginCheck {
    /// Rules read, with when (each robots.txt that settled).
    settles: Vec<(Instant, Rules)>,
}

#[derive(Debug)]
struct Flight {
    host: String,
    url: Url,
    robots: bool,
}

#[derive(Debug)]
struct RobotsJob {
    origin: String,
    redirects: u32,
    failures: u32,
}

/// What may follow a request's (or robots.txt job's) hop.
#[derive(Debug, Clone)]
enum Next {
    /// Nothing: the result was final (or a redirect not followed yet).
    Nothing,
    /// A retry of the same URL, not before the back-off.
    Retry { url: Url, not_before: Instant },
    /// The redirect's target.
    Redirect(Url),
}

#[derive(Debug)]
struct Progress {
    next: Next,
    retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    Pending,
    Done,
    Taken,
}

#[derive(Debug, Default)]
struct PersistCheck {
    accepted: FxHashSet<RequestId>,
    restored: FxHashSet<RequestId>,
    finished: FxHashSet<RequestId>,
    finished_count: u64,
    accepted_count: u64,
}

/// The invariants. Feed it everything the driver sees, in order; it panics at the first
/// violation.
///
/// - **Politeness** (with [`Polite`]): no hop to a host starts before the end of the previous
///   response from that host plus the delay, which is the policy's delay or, once the host's
///   robots.txt was read, its `Crawl-delay` when larger (robots.txt hops count too); at most
///   `per_host` hops in flight per host.
/// - **Limits**: at most [`Config::concurrency`] hops in flight.
/// - **robots.txt** (when obeyed): no URL is fetched before its origin's robots.txt was read
///   (2xx, or 4xx: allow all), nor when the rules read disallow it.
/// - **Retries and redirects**: a hop after a retryable failure refetches the same URL, no
///   sooner than the smallest jittered back-off (or `Retry-After`); a robots.txt retry waits
///   `retry_delay`, doubling; a hop after a redirect fetches its target; nothing is fetched
///   after a final result or a `cancel`.
/// - **Callbacks**: every accepted request finishes exactly once; `on_done` comes last, right
///   after exactly one of `on_success` and `on_error`; `on_status` is always followed by
///   `on_headers`.
/// - **Counters**: [`Stats`](crate::Stats) agree with what was seen.
/// - **Persistence** (with [`Config::persist`]): a request's `Finished` comes after its own
///   `Accepted` and after the `Accepted` of each follow-up it enqueued.
#[derive(Debug)]
pub struct Checker {
    base: Instant,
    kind: PolicyKind,
    concurrency: usize,
    timeout: Duration,
    max_body_size: u64,
    robots: RobotsConfig,
    hosts: FxHashMap<String, HostCheck>,
    origins: FxHashMap<String, OriginCheck>,
    fetches: FxHashMap<FetchId, Flight>,
    robots_jobs: FxHashMap<RequestId, RobotsJob>,
    /// When a request was last admitted (checked against robots.txt), when known.
    admitted: FxHashMap<RequestId, Instant>,
    /// Callbacks out with the driver: whether each is the final delivery.
    lent: FxHashMap<RequestId, bool>,
    /// What may come after each request's last hop.
    progress: FxHashMap<RequestId, Progress>,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
    max_retry_after: Duration,
    keys: FxHashMap<u64, KeyState>,
    /// Requests known to be removed (finished or taken): ids are never reused.
    gone: FxHashSet<RequestId>,
    /// Requests known to be unfinished.
    live: FxHashSet<RequestId>,
    /// Requests `cancel` returned true for.
    cancels: FxHashSet<RequestId>,
    /// Requests cancelled while not finishing: they must end cancelled (or panicked).
    cancelled: FxHashSet<RequestId>,
    persist: Option<PersistCheck>,
    counts: Counts,
    /// Every hop result is handed over when it ends: outcomes then finish exactly at `now`.
    results_on_time: bool,
}

impl Checker {
    /// A checker for a scheduler with this config, held to `kind`. `base` is the origin of
    /// virtual time (for messages).
    pub fn new(config: &Config, kind: PolicyKind, base: Instant) -> Self {
        Checker {
            base,
            kind,
            concurrency: config.concurrency,
            timeout: config.timeout,
            max_body_size: config.max_body_size,
            robots: config.robots.clone(),
            hosts: FxHashMap::default(),
            origins: FxHashMap::default(),
            fetches: FxHashMap::default(),
            robots_jobs: FxHashMap::default(),
            admitted: FxHashMap::default(),
            lent: FxHashMap::default(),
            progress: FxHashMap::default(),
            max_retries: config.max_retries,
            retry_base: config.retry_base,
            retry_max: config.retry_max,
            max_retry_after: config.max_retry_after,
            keys: FxHashMap::default(),
            gone: FxHashSet::default(),
            live: FxHashSet::default(),
            cancels: FxHashSet::default(),
            cancelled: FxHashSet::default(),
            persist: config.persist.then(PersistCheck::default),
            counts: Counts::default(),
            results_on_time: true,
        }
    }

    /// Some hop results are handed over after they ended (with their end time): an outcome
    /// may then finish at the latest time handed in, which can be before `now`.
    pub fn results_late(&mut self) {
        self.results_on_time = false;
    }

    /// What was seen so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Hops in flight.
    pub fn in_flight(&self) -> usize {
        self.fetches.len()
    }

    fn note_origin(&mut self, url: &Url) {
        let Some(host) = url.host_str() else { return };
        let key = origin_key(url);
        let h = match self.hosts.get_mut(host) {
            Some(h) => h,
            None => self.hosts.entry(host.to_string()).or_default(),
        };
        if !h.origins.contains(&key) {
            h.origins.push(key);
        }
    }

    /// A request was accepted at `now` (`id` when the API returned it).
    pub fn accepted(&mut self, now: Instant, id: Option<RequestId>, request: &SimRequest) {
        let previous = self.keys.insert(request.key, KeyState::Pending);
        assert!(
            previous.is_none(),
            "request key {} accepted twice",
            request.key
        );
        self.counts.accepted += 1;
        if let Some(id) = id {
            assert!(!self.gone.contains(&id), "{id:?} reused");
            self.admitted.insert(id, now);
            self.live.insert(id);
        }
        self.note_origin(&request.url);
    }

    /// A request was restored (accepted without a `Persist::Accepted`).
    pub fn restored(&mut self, now: Instant, id: RequestId, request: &SimRequest) {
        self.accepted(now, Some(id), request);
        if let Some(p) = &mut self.persist {
            p.restored.insert(id);
        }
    }

    /// A hop was handed out.
    pub fn fetch_started(&mut self, now: Instant, fetch: &Fetch) {
        let host = fetch.url.host_str().unwrap_or("").to_string();
        assert!(!host.is_empty(), "fetch of {} without a host", fetch.url);
        assert!(
            !self.fetches.contains_key(&fetch.id),
            "{:?} handed out twice",
            fetch.id
        );
        assert!(
            self.fetches.len() < self.concurrency,
            "{} at {}: more than {} hops in flight",
            fetch.url,
            secs(self.base, now),
            self.concurrency
        );
        assert_eq!(fetch.timeout, self.timeout, "fetch timeout");
        assert!(
            !self.gone.contains(&fetch.id.request),
            "{} fetched for {:?}, which is finished or taken",
            fetch.url,
            fetch.id.request
        );
        self.note_origin(&fetch.url);
        let robots = match fetch.purpose {
            Purpose::Robots => {
                assert!(
                    self.kind.obeys_robots(),
                    "robots.txt fetched ({}) by a policy that does not obey it",
                    fetch.url
                );
                assert_eq!(
                    fetch.max_body_size, self.robots.max_size,
                    "robots.txt size limit"
                );
                assert_eq!(fetch.method, Method::GET, "robots.txt method");
                if !self.robots_jobs.contains_key(&fetch.id.request) {
                    assert!(
                        fetch.url.path() == "/robots.txt" && fetch.url.query().is_none(),
                        "a robots.txt job starts at {}",
                        fetch.url
                    );
                    self.counts.robots_jobs += 1;
                    self.robots_jobs.insert(
                        fetch.id.request,
                        RobotsJob {
                            origin: origin_key(&fetch.url),
                            redirects: 0,
                            failures: 0,
                        },
                    );
                }
                true
            }
            Purpose::Request(id) => {
                assert_eq!(id, fetch.id.request, "purpose and fetch id disagree");
                assert_eq!(fetch.max_body_size, self.max_body_size, "body size limit");
                assert!(
                    !self.robots_jobs.contains_key(&id),
                    "{id:?} was a robots.txt job"
                );
                if self.kind.obeys_robots() {
                    self.check_robots(now, id, &fetch.url);
                }
                self.live.insert(id);
                false
            }
        };
        self.check_next(now, fetch);
        let h = self.hosts.get_mut(&host).expect("noted above");
        if let PolicyKind::Polite { per_host, .. } = self.kind {
            assert!(
                h.in_flight < per_host,
                "{} at {}: more than {per_host} hops in flight to {host}",
                fetch.url,
                secs(self.base, now)
            );
            if let Some(not_before) = h.not_before {
                assert!(
                    now >= not_before,
                    "{} started at {}, before {host} may be fetched again at {}",
                    fetch.url,
                    secs(self.base, now),
                    secs(self.base, not_before)
                );
            }
        }
        h.in_flight += 1;
        self.counts.fetches += 1;
        self.fetches.insert(
            fetch.id,
            Flight {
                host,
                url: fetch.url.clone(),
                robots,
            },
        );
    }

    fn check_robots(&self, now: Instant, id: RequestId, url: &Url) {
        let key = origin_key(url);
        let settles = self.origins.get(&key).map_or(&[][..], |o| &o.settles[..]);
        assert!(
            !settles.is_empty(),
            "{url} fetched at {} before robots.txt of {key} was read",
            secs(self.base, now)
        );
        // The rules in force when the request was last admitted, or any read since.
        let from = match self.admitted.get(&id) {
            Some(&at) => settles.iter().rposition(|(t, _)| *t < at).unwrap_or(0),
            None => 0,
        };
        assert!(
            settles[from..].iter().any(|(_, rules)| rules.allows(url)),
            "{url} fetched at {} although robots.txt of {key} disallows it ({:?})",
            secs(self.base, now),
            settles.last().map(|s| &s.1)
        );
    }

    /// A hop's result is about to be handed to the scheduler.
    pub fn hop_ended(&mut self, now: Instant, id: FetchId, result: &HopResult) {
        let flight = self
            .fetches
            .remove(&id)
            .unwrap_or_else(|| panic!("result for {id:?}, which is not in flight"));
        let settled = if flight.robots {
            self.robots_hop(now, id.request, &flight.url, result)
        } else {
            self.request_hop(now, id.request, &flight.url, result);
            None
        };
        let h = self.hosts.get_mut(&flight.host).expect("in flight");
        h.in_flight -= 1;
        let PolicyKind::Polite {
            delay, allow_all, ..
        } = self.kind
        else {
            return;
        };
        // Crawl-delay counts once robots.txt was read: from this very response when it was
        // the robots.txt, and after every request hop (its request was admitted with the
        // rules). A host with several origins may have several: only the policy's delay then.
        let crawl = if allow_all || h.origins.len() != 1 {
            None
        } else if flight.robots {
            settled.and_then(|(origin, crawl)| crawl.filter(|_| h.origins[0] == origin))
        } else {
            self.origins
                .get(&h.origins[0])
                .and_then(|o| o.settles.last())
                .and_then(|(_, rules)| rules.crawl_delay)
        };
        let wait = crawl.map_or(delay, |c| c.max(delay));
        let until = now + wait;
        h.not_before = Some(h.not_before.map_or(until, |t| t.max(until)));
    }

    /// The robots.txt model: returns the origin and its crawl delay when this hop settled it.
    fn robots_hop(
        &mut self,
        now: Instant,
        job: RequestId,
        url: &Url,
        result: &HopResult,
    ) -> Option<(String, Option<Duration>)> {
        let max_redirects = self.robots.max_redirects;
        let state = self.robots_jobs.get_mut(&job).expect("robots job");
        let failed = match result {
            HopResult::Failed(_) => true,
            HopResult::Response(r) => {
                r.status == StatusCode::TOO_MANY_REQUESTS || r.status.is_server_error()
            }
        };
        let rules = match result {
            _ if failed => {
                // Tried again after `retry_delay`, doubling, until `max_attempts`.
                state.failures += 1;
                let next = if state.failures < self.robots.max_attempts {
                    let doublings = (state.failures - 1).min(16);
                    let wait = self.robots.retry_delay.saturating_mul(1 << doublings);
                    Next::Retry {
                        url: url.clone(),
                        not_before: now + wait,
                    }
                } else {
                    Next::Nothing
                };
                self.set_next(job, next);
                return None;
            }
            HopResult::Response(r) if redirect::is_redirect(r.status) => {
                match redirect::follow(url, &Method::GET, r.status, &r.headers) {
                    Some(Ok(to)) if state.redirects < max_redirects => {
                        state.redirects += 1;
                        self.set_next(job, Next::Redirect(to.url));
                        return None;
                    }
                    _ => Rules::allow_all(),
                }
            }
            HopResult::Response(r) if r.status.is_success() => {
                Rules::parse(&r.body, self.robots.max_crawl_delay)
            }
            _ => Rules::allow_all(),
        };
        self.progress.remove(&job);
        let origin = self.robots_jobs.remove(&job).expect("robots job").origin;
        let crawl = rules.crawl_delay;
        self.origins
            .entry(origin.clone())
            .or_default()
            .settles
            .push((now, rules));
        Some((origin, crawl))
    }

    fn set_next(&mut self, id: RequestId, next: Next) {
        self.progress
            .entry(id)
            .or_insert(Progress {
                next: Next::Nothing,
                retries: 0,
            })
            .next = next;
    }

    /// What a request's hop allows next: a retry (same URL, after the back-off) for a
    /// retryable failure with retries left, else nothing until a redirect's callback.
    fn request_hop(&mut self, now: Instant, id: RequestId, url: &Url, result: &HopResult) {
        let retry_after = match result {
            HopResult::Failed(e) if e.kind.is_retryable() => Some(None),
            HopResult::Response(r)
                if !r.truncated
                    && (r.status == StatusCode::TOO_MANY_REQUESTS
                        || r.status.is_server_error()) =>
            {
                Some(crate::ratelimit::retry_after(&r.headers))
            }
            _ => None,
        };
        let retries = self.progress.get(&id).map_or(0, |p| p.retries);
        let next = match retry_after {
            Some(asked)
                if retries < self.max_retries
                    && asked.is_none_or(|a| a <= self.max_retry_after) =>
            {
                // The back-off's smallest jitter is one half (less a rounding margin).
                let backoff = self
                    .retry_base
                    .saturating_mul(1 << retries.min(20))
                    .min(self.retry_max);
                let least = (backoff / 2).saturating_sub(Duration::from_micros(1));
                Next::Retry {
                    url: url.clone(),
                    not_before: now + least.max(asked.unwrap_or(Duration::ZERO)),
                }
            }
            _ => Next::Nothing,
        };
        self.set_next(id, next);
    }

    /// A request's next hop is what its last one allowed.
    fn check_next(&mut self, now: Instant, fetch: &Fetch) {
        let id = fetch.id.request;
        assert!(
            !self.cancels.contains(&id),
            "{} fetched for {id:?} after it was cancelled",
            fetch.url
        );
        let Some(progress) = self.progress.get_mut(&id) else {
            return;
        };
        match &progress.next {
            Next::Nothing => panic!(
                "{} fetched at {} for {id:?}, whose last hop was final",
                fetch.url,
                secs(self.base, now)
            ),
            Next::Retry { url, not_before } => {
                assert_eq!(*url, fetch.url, "a retry of {id:?} fetched another URL");
                assert!(
                    now >= *not_before,
                    "{} retried at {}, before its back-off ends at {}",
                    fetch.url,
                    secs(self.base, now),
                    secs(self.base, *not_before)
                );
                progress.retries += 1;
            }
            Next::Redirect(url) => {
                assert_eq!(*url, fetch.url, "a redirect of {id:?} fetched another URL");
            }
        }
        progress.next = Next::Nothing;
    }

    /// A callback was handed out.
    pub fn callback_issued(&mut self, now: Instant, callback: &Callback<SimRequest>) {
        let id = callback.id();
        let key = callback.request().key;
        assert_eq!(
            self.keys.get(&key),
            Some(&KeyState::Pending),
            "callbacks of request {key} ({id:?}), which is not unfinished"
        );
        let last = callback.outcome().is_some();
        let before = self.lent.insert(id, last);
        assert!(before.is_none(), "{id:?} lent twice");
        self.live.insert(id);
        if last {
            self.counts.lent_final += 1;
        }
        if let Some(url) = &callback.redirect {
            self.note_origin(url);
            self.set_next(id, Next::Redirect(url.clone()));
        }
        if let Some(o) = callback.outcome() {
            if self.results_on_time {
                assert_eq!(o.finished_at, now, "finished_at of {key}");
            } else {
                // The latest time handed in, earlier than now if a result came in late.
                assert!(o.finished_at <= now, "finished_at of {key}");
            }
            assert!(o.enqueued_at <= o.finished_at, "enqueued_at of {key}");
            if let Some(started) = o.started_at {
                assert!(
                    o.enqueued_at <= started && started <= o.finished_at,
                    "started_at of {key}"
                );
            }
        }
    }

    /// A callback ran and its report is about to be handed back.
    pub fn callback_returned(&mut self, now: Instant, report: &CallbackReport<SimRequest>) {
        let id = report.id();
        let last = self
            .lent
            .remove(&id)
            .unwrap_or_else(|| panic!("report of {id:?}, which was not lent"));
        if last {
            self.counts.lent_final -= 1;
        }
        if report.panic().is_some() {
            self.counts.callback_panics += 1;
        }
        for child in report.follow_ups() {
            self.accepted(now, None, child);
        }
    }

    /// A redirect was followed at `now`: its next hop is admitted (checked against
    /// robots.txt) now.
    pub fn redirected(&mut self, now: Instant, id: RequestId) {
        self.admitted.insert(id, now);
    }

    /// `handle_callback` gave back `finished` for a report of `id` whose delivery was final
    /// (`last`) or not.
    pub fn callback_handled(&mut self, id: RequestId, last: bool, finished: Option<&SimRequest>) {
        assert_eq!(
            finished.is_some(),
            last,
            "handle_callback of {id:?}: a request comes back exactly when its on_done ran"
        );
        let Some(request) = finished else { return };
        self.finished(id, request);
    }

    fn finished(&mut self, id: RequestId, request: &SimRequest) {
        let key = request.key;
        let state = self.keys.get_mut(&key);
        assert_eq!(
            state.as_deref(),
            Some(&KeyState::Pending),
            "request {key} finished, but it was not unfinished"
        );
        *state.expect("checked") = KeyState::Done;
        self.gone.insert(id);
        self.admitted.remove(&id);
        self.live.remove(&id);
        self.cancels.remove(&id);
        self.progress.remove(&id);
        check_log(request);
        let Some(Event::Done {
            ok,
            error,
            retries,
            redirects,
            ..
        }) = request.log.last()
        else {
            unreachable!("checked by check_log")
        };
        if self.cancelled.remove(&id) {
            assert!(
                matches!(
                    error.as_deref(),
                    Some("cancelled") | Some("callback_panicked")
                ),
                "request {key} was cancelled but ended with {error:?}: {:?}",
                request.log
            );
        }
        self.counts.done += 1;
        self.counts.succeeded += u64::from(*ok);
        self.counts.disallowed += u64::from(error.as_deref() == Some("disallowed"));
        self.counts.retries += u64::from(*retries);
        self.counts.redirects += u64::from(*redirects);
    }

    /// `cancel(id)` returned `unfinished`: true exactly for an unfinished request not
    /// cancelled before.
    pub fn cancel_returned(&mut self, id: RequestId, unfinished: bool) {
        let again = self.cancels.contains(&id);
        if unfinished {
            assert!(
                !self.gone.contains(&id),
                "cancel of finished {id:?} returned true"
            );
            assert!(!again, "cancel of {id:?} returned true twice");
            assert!(
                !self.robots_jobs.contains_key(&id),
                "a robots.txt job was cancelled"
            );
            self.cancels.insert(id);
            self.live.insert(id);
            // A final delivery already out keeps its outcome.
            if self.lent.get(&id) != Some(&true) {
                self.cancelled.insert(id);
            }
        } else {
            assert!(
                again || !self.live.contains(&id),
                "cancel of unfinished {id:?} returned false"
            );
        }
    }

    /// `take_unfinished` handed this request back.
    pub fn taken(&mut self, id: RequestId, request: &SimRequest) {
        let state = self.keys.get_mut(&request.key);
        assert_eq!(
            state.as_deref(),
            Some(&KeyState::Pending),
            "request {} taken back, but it was not unfinished",
            request.key
        );
        *state.expect("checked") = KeyState::Taken;
        assert!(
            request.done().is_none(),
            "a finished request was taken back"
        );
        assert!(
            !self.lent.contains_key(&id),
            "a lent request was taken back"
        );
        self.gone.insert(id);
        self.live.remove(&id);
        self.cancels.remove(&id);
        self.cancelled.remove(&id);
        self.progress.remove(&id);
        self.counts.taken += 1;
    }

    /// A persist action came out.
    pub fn persisted(&mut self, action: Persist) {
        let p = self
            .persist
            .as_mut()
            .expect("a Persist action without Config::persist");
        match action {
            Persist::Accepted { id, parent } => {
                assert!(p.accepted.insert(id), "{id:?} persisted as accepted twice");
                if let Some(parent) = parent {
                    assert!(
                        !p.finished.contains(&parent),
                        "follow-up {id:?} persisted after its parent {parent:?} finished"
                    );
                }
                p.accepted_count += 1;
            }
            Persist::Finished { id } => {
                assert!(
                    p.accepted.contains(&id) || p.restored.contains(&id),
                    "{id:?} persisted as finished but never as accepted"
                );
                assert!(p.finished.insert(id), "{id:?} persisted as finished twice");
                p.finished_count += 1;
            }
        }
    }

    /// The checks that hold between any two inputs (once actions are drained).
    pub fn check(&self, s: &Scheduler<SimRequest>) {
        let st = s.stats();
        let c = &self.counts;
        let unfinished = c.accepted - c.done - c.taken;
        assert_eq!(st.accepted, c.accepted, "stats.accepted");
        assert_eq!(st.finished, c.done, "stats.finished");
        assert_eq!(st.succeeded, c.succeeded, "stats.succeeded");
        assert_eq!(st.failed, c.done - c.succeeded, "stats.failed");
        assert_eq!(st.unfinished as u64, unfinished, "stats.unfinished");
        assert_eq!(s.len() as u64, unfinished, "len()");
        assert_eq!(st.in_flight, self.fetches.len(), "stats.in_flight");
        assert_eq!(s.in_flight(), self.fetches.len(), "in_flight()");
        assert_eq!(st.fetches, c.fetches, "stats.fetches");
        assert_eq!(
            st.callback_panics, c.callback_panics,
            "stats.callback_panics"
        );
        assert!(
            st.disallowed >= c.disallowed && st.disallowed <= c.disallowed + c.lent_final,
            "stats.disallowed {} vs {} finished (+{} finishing)",
            st.disallowed,
            c.disallowed,
            c.lent_final
        );
        assert!(st.robots_fetches >= c.robots_jobs, "stats.robots_fetches");
        assert!(st.retries >= c.retries, "stats.retries");
        assert!(st.redirects >= c.redirects, "stats.redirects");
        // Every unfinished request is somewhere.
        assert!(
            st.unfinished
                <= st.queued + st.delayed + st.waiting_robots + st.in_flight + self.lent.len(),
            "requests lost: {st:?}, {} lent",
            self.lent.len()
        );
        if let Some(p) = &self.persist {
            assert_eq!(p.finished_count, c.done, "Persist::Finished count");
        }
        if s.is_idle() {
            assert!(
                self.fetches.is_empty() && self.lent.is_empty(),
                "idle with work out"
            );
            if !s.is_stopped() {
                assert_eq!(unfinished, 0, "idle with requests unfinished");
            }
        }
    }

    /// The checks that hold once everything drained: all done, counters exact.
    /// `exact_jobs`: no robots.txt job was dropped unfetched (by `stop` or `take_unfinished`).
    pub fn check_drained(&self, s: &Scheduler<SimRequest>, exact_jobs: bool) {
        self.check(s);
        assert!(s.is_idle(), "not idle at the end");
        assert!(self.fetches.is_empty(), "hops in flight at the end");
        assert!(self.lent.is_empty(), "callbacks out at the end");
        let c = &self.counts;
        assert_eq!(
            c.accepted,
            c.done + c.taken,
            "requests unfinished at the end"
        );
        let st = s.stats();
        assert_eq!(st.disallowed, c.disallowed, "stats.disallowed at the end");
        if c.taken == 0 {
            assert_eq!(st.retries, c.retries, "stats.retries at the end");
            assert_eq!(st.redirects, c.redirects, "stats.redirects at the end");
        }
        if exact_jobs {
            assert_eq!(
                st.robots_fetches, c.robots_jobs,
                "stats.robots_fetches at the end"
            );
        }
        assert_eq!(
            st.queued + st.delayed + st.waiting_robots + st.in_flight,
            0,
            "{st:?}"
        );
        if let Some(p) = &self.persist {
            assert_eq!(p.finished_count, c.done, "Persist::Finished at the end");
        }
    }
}

fn fail_log(request: &SimRequest, what: &str) -> ! {
    panic!("request {}: {what}: {:?}", request.key, request.log)
}

/// A virtual instant, for messages.
fn secs(base: Instant, at: Instant) -> String {
    format!("{:.3}s", at.saturating_duration_since(base).as_secs_f64())
}

/// A finished request's callbacks came in a valid order.
fn check_log(request: &SimRequest) {
    let log = &request.log;
    let dones = log
        .iter()
        .filter(|e| matches!(e, Event::Done { .. }))
        .count();
    if dones != 1 || !matches!(log.last(), Some(Event::Done { .. })) {
        fail_log(request, "on_done must come exactly once, last");
    }
    let ends: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Success(_) | Event::Error(_)))
        .map(|(i, _)| i)
        .collect();
    let [end] = ends[..] else {
        fail_log(
            request,
            "exactly one of on_success and on_error must come before on_done",
        );
    };
    if !log[end + 1..log.len() - 1]
        .iter()
        .all(|e| matches!(e, Event::Refused(_)))
    {
        fail_log(request, "on_done must follow on_success or on_error");
    }
    let ok = matches!(log[end], Event::Success(_));
    if !matches!(log.last(), Some(Event::Done { ok: o, .. }) if *o == ok) {
        fail_log(
            request,
            "on_done's outcome disagrees with on_success/on_error",
        );
    }
    for (i, e) in log.iter().enumerate() {
        if matches!(e, Event::Status(_)) && log.get(i + 1) != Some(&Event::Headers) {
            fail_log(request, "on_headers must follow on_status");
        }
    }
}

// ----- the fake origin -----

/// How a host of the [`Origin`] answers `/robots.txt`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RobotsKind {
    /// 200, `Allow: /`.
    AllowAll,
    /// 200, disallows `/private` and `/admin`.
    Disallow,
    /// 200, disallows `/private`, asks for this `Crawl-delay` (in tenths of seconds).
    CrawlDelay(u32),
    /// 404: everything allowed.
    NotFound,
    /// 401 or 403: everything allowed (RFC 9309).
    Forbidden,
    /// 5xx, always.
    Down,
    /// Fails this many times (5xx, reset, stall) while faults are on, then as `Disallow`.
    Flaky(u32),
    /// Longer than the robots.txt size limit: `Disallow: /private` first, then padding, then
    /// `Disallow: /p/`, which a crawler reading only the limit never sees.
    Huge,
    /// 301 to `/robots-real.txt` (as `Disallow`).
    RedirectLocal,
    /// 301 to the `/robots.txt` of this other host (one with a simple file).
    RedirectTo(usize),
    /// `/robots.txt` and `/robots-loop.txt` redirect to each other: too many redirects, so
    /// everything is allowed.
    RedirectLoop,
}

impl RobotsKind {
    fn is_simple(self) -> bool {
        matches!(
            self,
            RobotsKind::AllowAll | RobotsKind::Disallow | RobotsKind::CrawlDelay(_)
        )
    }
}

/// One host of the [`Origin`].
#[derive(Debug, Clone)]
pub struct HostProfile {
    /// `h{index}.test`.
    pub name: String,
    /// Served over https (port 443) rather than http.
    pub https: bool,
    /// Fastest answer.
    pub latency_min: Duration,
    /// Extra latency, uniformly up to this.
    pub latency_spread: Duration,
    /// Per mille of hops, while faults are on: reset, stall, 429/503, other 5xx, oversized.
    pub faults: [u32; 5],
    /// robots.txt.
    pub robots: RobotsKind,
    robots_hits: u32,
}

impl HostProfile {
    /// Whether the host ever misbehaves (while faults are on).
    pub fn is_faulty(&self) -> bool {
        self.faults.iter().any(|&f| f > 0)
    }

    fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.name)
    }
}

/// A seeded fake web: many hosts, each with its own latency, faults and robots.txt.
///
/// Paths of pages, by first segment: `chain/{k}/…` redirects `k` times; `hop/{j}/{n}` redirects
/// to host `j`; `loop`, `loop2` redirect to each other; `self` redirects to itself; `gone` is
/// 404/410; `big` is longer than the body limit; `form` answers 303; `bad` redirects to ftp;
/// `nolocation` is a 302 without `Location`; `rel/x/{n}` redirects relatively to `/p/{n}`;
/// anything else is a small 200 page.
#[derive(Debug)]
pub struct Origin {
    rng: fastrand::Rng,
    /// The hosts.
    pub hosts: Vec<HostProfile>,
    /// Random faults on (rate limits, 5xx, resets, stalls, oversized pages, flaky robots.txt).
    pub faults: bool,
    huge_robots: usize,
    big_page: usize,
}

const PAGE: &[u8] = b"<html><head><title>sim</title></head><body>hello</body></html>";
static FILL: [u8; 1 << 16] = [b'x'; 1 << 16];
const DISALLOW: &str = "User-agent: *\nDisallow: /private\nDisallow: /admin\n";

impl Origin {
    /// `hosts` hosts, drawn from `seed`, for a scheduler with `config` (whose limits decide
    /// what is too large).
    pub fn new(seed: u64, hosts: usize, config: &Config) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut list: Vec<HostProfile> = (0..hosts)
            .map(|i| {
                let faulty = rng.u32(0..100) < 40;
                let faults = if faulty {
                    [
                        rng.u32(0..60),
                        rng.u32(0..25),
                        rng.u32(0..100),
                        rng.u32(0..50),
                        rng.u32(0..15),
                    ]
                } else {
                    [0; 5]
                };
                let (min, spread) = match rng.u32(0..50) {
                    0 => (2_000, 8_000),
                    n => {
                        let min = [2, 20, 80, 300][n as usize % 4];
                        (min, rng.u64(0..=min * 4))
                    }
                };
                let robots = match rng.u32(0..100) {
                    0..=19 => RobotsKind::AllowAll,
                    20..=44 => RobotsKind::Disallow,
                    45..=54 => RobotsKind::CrawlDelay(
                        rng.choice([5, 10, 20, 30, 50, 100, 900]).unwrap_or(10),
                    ),
                    55..=66 => RobotsKind::NotFound,
                    67..=71 => RobotsKind::Forbidden,
                    72..=75 => RobotsKind::Down,
                    76..=81 => RobotsKind::Flaky(1 + rng.u32(0..4)),
                    82..=84 => RobotsKind::Huge,
                    85..=89 => RobotsKind::RedirectLocal,
                    90..=94 => RobotsKind::RedirectTo(usize::MAX),
                    _ => RobotsKind::RedirectLoop,
                };
                HostProfile {
                    name: format!("h{i}.test"),
                    https: rng.u32(0..100) < 15,
                    latency_min: Duration::from_millis(min),
                    latency_spread: Duration::from_millis(spread),
                    faults,
                    robots,
                    robots_hits: 0,
                }
            })
            .collect();
        for i in 0..list.len() {
            if list[i].robots == RobotsKind::RedirectTo(usize::MAX) {
                let j = rng.usize(0..list.len());
                list[i].robots = if list[j].robots.is_simple() {
                    RobotsKind::RedirectTo(j)
                } else {
                    RobotsKind::RedirectLocal
                };
            }
        }
        Origin {
            rng,
            hosts: list,
            faults: true,
            huge_robots: config.robots.max_size as usize + 4096,
            big_page: (config.max_body_size as usize * 2).clamp(1, FILL.len()),
        }
    }

    /// The index of the host of `url`, if it is one of ours.
    pub fn host_index(&self, url: &Url) -> Option<usize> {
        let i: usize = url
            .host_str()?
            .strip_prefix('h')?
            .strip_suffix(".test")?
            .parse()
            .ok()?;
        (i < self.hosts.len()).then_some(i)
    }

    /// The URL of `path` on host `i`.
    pub fn url(&self, i: usize, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.hosts[i].base())).expect("valid URL")
    }

    /// Whether host `i`'s robots.txt (at the end of its redirects) disallows `path`; `None`
    /// when it is never available.
    fn robots_disallow(&self, i: usize, path: &str) -> Option<bool> {
        let private = path.starts_with("/private");
        let admin = path.starts_with("/admin");
        match self.hosts[i].robots {
            RobotsKind::AllowAll | RobotsKind::NotFound | RobotsKind::Forbidden => Some(false),
            RobotsKind::RedirectLoop => Some(false),
            RobotsKind::CrawlDelay(_) | RobotsKind::Huge => Some(private),
            RobotsKind::Disallow | RobotsKind::Flaky(_) | RobotsKind::RedirectLocal => {
                Some(private || admin)
            }
            RobotsKind::RedirectTo(j) => self.robots_disallow(j, path),
            RobotsKind::Down => None,
        }
    }

    /// Answers one hop at the clock's time: how long it takes, and what comes back.
    pub fn respond(&mut self, clock: &Clock, fetch: &Fetch) -> (Duration, HopResult) {
        let Some(i) = self.host_index(&fetch.url) else {
            let error = TransportError::new(TransportErrorKind::Dns, "no such host");
            return (Duration::from_millis(5), HopResult::Failed(error));
        };
        let host = &self.hosts[i];
        let spread = host.latency_spread.as_millis() as u64;
        let latency = host.latency_min + Duration::from_millis(self.rng.u64(0..=spread));
        let path = fetch.url.path();
        let robots = matches!(
            path,
            "/robots.txt" | "/robots-real.txt" | "/robots-loop.txt"
        );
        if self.faults {
            let [reset, stall, limit, error, oversized] = host.faults;
            let roll = self.rng.u32(0..1000);
            if roll < reset {
                let error = TransportError::new(TransportErrorKind::Reset, "connection reset");
                return (latency / 2, HopResult::Failed(error));
            }
            if roll < reset + stall {
                let error = TransportError::new(TransportErrorKind::Timeout, "stalled");
                return (fetch.timeout, HopResult::Failed(error));
            }
            if roll < reset + stall + limit {
                return (latency, self.rate_limited(clock));
            }
            if roll < reset + stall + limit + error {
                let status = self.rng.choice([500, 502, 504]).unwrap_or(500);
                return (latency, status_only(status));
            }
            if !robots && roll < reset + stall + limit + error + oversized {
                return (latency, self.big(fetch));
            }
        }
        let result = if robots {
            self.robots_txt(i, path, fetch)
        } else {
            self.page(i, fetch)
        };
        (latency, result)
    }

    fn rate_limited(&mut self, clock: &Clock) -> HopResult {
        let status = if self.rng.bool() { 429 } else { 503 };
        let mut response = HopResponse::new(StatusCode::from_u16(status).expect("valid"));
        let headers = &mut response.headers;
        match self.rng.u32(0..10) {
            0..=3 => {}
            4..=7 => {
                let secs = if self.rng.u32(0..50) == 0 {
                    100_000
                } else {
                    self.rng.u64(0..=30)
                };
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            n => {
                let wall = clock.wall();
                let at = wall + Duration::from_secs(self.rng.u64(1..=40));
                let at = HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("date");
                headers.insert(RETRY_AFTER, at);
                // Without `Date`, an HTTP date cannot be read: the plain back-off applies.
                if n == 8 {
                    let date = HeaderValue::from_str(&httpdate::fmt_http_date(wall));
                    headers.insert(DATE, date.expect("date"));
                }
            }
        }
        HopResult::Response(response)
    }

    fn big(&self, fetch: &Fetch) -> HopResult {
        let limit = usize::try_from(fetch.max_body_size).unwrap_or(usize::MAX);
        let mut response = HopResponse::new(StatusCode::OK);
        response.body = Bytes::from_static(&FILL[..self.big_page.min(limit)]);
        response.truncated = self.big_page > limit;
        HopResult::Response(response)
    }

    fn robots_txt(&mut self, i: usize, path: &str, fetch: &Fetch) -> HopResult {
        let host = &mut self.hosts[i];
        let local = |to: &str| redirect_to(301, to);
        match (host.robots, path) {
            (_, "/robots-real.txt") => ok(DISALLOW.as_bytes()),
            (RobotsKind::RedirectLoop, "/robots.txt") => redirect_to(302, "/robots-loop.txt"),
            (RobotsKind::RedirectLoop, _) => redirect_to(302, "/robots.txt"),
            (_, "/robots-loop.txt") => status_only(404),
            (RobotsKind::AllowAll, _) => ok(b"User-agent: *\nAllow: /\n"),
            (RobotsKind::Disallow, _) => ok(DISALLOW.as_bytes()),
            (RobotsKind::CrawlDelay(tenths), _) => {
                let delay = tenths as f32 / 10.0;
                ok(format!("User-agent: *\nCrawl-delay: {delay}\nDisallow: /private\n").as_bytes())
            }
            (RobotsKind::NotFound, _) => status_only(404),
            (RobotsKind::Forbidden, _) => status_only(if i % 2 == 0 { 401 } else { 403 }),
            (RobotsKind::Down, _) => status_only(if i % 2 == 0 { 500 } else { 503 }),
            (RobotsKind::Flaky(failures), _) => {
                host.robots_hits += 1;
                if self.faults && host.robots_hits <= failures {
                    match host.robots_hits % 3 {
                        0 => status_only(503),
                        1 => HopResult::Failed(TransportError::new(
                            TransportErrorKind::Reset,
                            "connection reset",
                        )),
                        _ => status_only(500),
                    }
                } else {
                    ok(DISALLOW.as_bytes())
                }
            }
            (RobotsKind::Huge, _) => {
                let limit = usize::try_from(fetch.max_body_size).unwrap_or(usize::MAX);
                let mut body = Vec::with_capacity(self.huge_robots.min(limit));
                body.extend_from_slice(b"User-agent: *\nDisallow: /private\n");
                let line = b"# padding padding padding padding padding padding padding pad\n";
                while body.len() + line.len() < self.huge_robots - 16 && body.len() < limit {
                    body.extend_from_slice(line);
                }
                body.extend_from_slice(b"Disallow: /p/\n");
                let truncated = body.len() > limit;
                body.truncate(limit);
                let mut response = HopResponse::new(StatusCode::OK);
                response.body = body.into();
                response.truncated = truncated;
                HopResult::Response(response)
            }
            (RobotsKind::RedirectLocal, _) => local("/robots-real.txt"),
            (RobotsKind::RedirectTo(j), _) => {
                let to = format!("{}/robots.txt", self.hosts[j].base());
                redirect_to(301, &to)
            }
        }
    }

    fn page(&mut self, i: usize, fetch: &Fetch) -> HopResult {
        let url = &fetch.url;
        let mut segments = url.path().trim_start_matches('/').split('/');
        let first = segments.next().unwrap_or("");
        let second = segments.next().unwrap_or("");
        let third = segments.next().unwrap_or("");
        match first {
            "chain" => match second.parse::<u32>() {
                Ok(k) if k > 0 => redirect_to(302, &format!("/chain/{}/{third}", k - 1)),
                _ => ok(PAGE),
            },
            "hop" => {
                let j = second.parse::<usize>().unwrap_or(0) % self.hosts.len();
                let to = format!("{}/p/{third}", self.hosts[j].base());
                redirect_to(301, &to)
            }
            "loop" => redirect_to(302, &format!("/loop2/{second}")),
            "loop2" => redirect_to(302, &format!("/loop/{second}")),
            "self" => redirect_to(307, url.as_str()),
            "gone" => status_only(if i % 2 == 0 { 404 } else { 410 }),
            "big" => self.big(fetch),
            "form" => redirect_to(303, &format!("/p/{second}")),
            "bad" => redirect_to(302, "ftp://files.test/x"),
            "nolocation" => status_only(302),
            "rel" => redirect_to(302, &format!("../../p/{third}")),
            _ => ok(PAGE),
        }
    }
}

fn ok(body: &[u8]) -> HopResult {
    let mut response = HopResponse::new(StatusCode::OK);
    response.body = Bytes::copy_from_slice(body);
    HopResult::Response(response)
}

fn status_only(status: u16) -> HopResult {
    HopResult::Response(HopResponse::new(
        StatusCode::from_u16(status).expect("valid status"),
    ))
}

fn redirect_to(status: u16, location: &str) -> HopResult {
    let mut response = HopResponse::new(StatusCode::from_u16(status).expect("valid status"));
    response
        .headers
        .insert(LOCATION, HeaderValue::from_str(location).expect("valid"));
    HopResult::Response(response)
}

// ----- the simulation -----

/// One simulation run: the scheduler's settings, the policy, and the origin's size.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Seeds everything.
    pub seed: u64,
    /// The scheduler's settings.
    pub config: Config,
    /// The policy the scheduler runs.
    pub policy: PolicyKind,
    /// The policy the checker holds it to (normally the same).
    pub expect: PolicyKind,
    /// Hosts of the origin.
    pub hosts: usize,
    /// Percent of callbacks the driver runs a little later rather than at once.
    pub late_callbacks: u32,
    /// Percent of hop results the driver hands over a little after the hop ended, with the
    /// time it ended (as a driver whose I/O runs on other threads does): `now` then goes
    /// back in time for [`Scheduler::handle_fetch`].
    pub late_results: u32,
}

impl Setup {
    /// A setup drawn from `seed`: the policy (polite with 1 to 3 per host, various delays,
    /// sometimes allow-all; sometimes fifo), concurrency, limits, retries and robots.txt
    /// settings all vary.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5157_5eed);
        let policy = match rng.u32(0..10) {
            0 => PolicyKind::Fifo,
            n => PolicyKind::Polite {
                per_host: 1 + rng.u32(0..3),
                delay: Duration::from_millis(
                    rng.choice([0, 100, 500, 1000, 1000, 2000]).unwrap_or(1000),
                ),
                allow_all: n == 1,
                adaptive: rng.u32(0..10) == 0,
            },
        };
        let config = Config {
            concurrency: rng.choice([1, 4, 16, 64, 64, 256]).unwrap_or(64),
            timeout: Duration::from_secs(rng.u64(5..=30)),
            max_body_size: rng.choice([1024, 4096, 16384]).unwrap_or(4096),
            max_redirects: rng.u32(3..=10),
            max_retries: rng.u32(0..=3),
            retry_base: Duration::from_millis(rng.u64(100..=2000)),
            retry_max: Duration::from_secs(rng.u64(10..=60)),
            max_retry_after: Duration::from_secs(rng.choice([30, 120, 300]).unwrap_or(300)),
            robots: RobotsConfig {
                ttl: Duration::from_secs(rng.choice([60, 3600, 86_400]).unwrap_or(86_400)),
                cache_size: rng.choice([20, 200, 10_000]).unwrap_or(10_000),
                max_size: rng.choice([1024, 2048, 4096, 8192]).unwrap_or(2048),
                max_redirects: rng.u32(2..=5),
                retry_delay: Duration::from_secs(rng.u64(1..=30)),
                max_attempts: rng.u32(1..=4),
                unavailable_for: Duration::from_secs(rng.u64(30..=600)),
                max_crawl_delay: Duration::from_secs(rng.choice([3, 10, 60]).unwrap_or(60)),
            },
            persist: rng.u32(0..3) == 0,
            seed: rng.u64(..),
            ..Config::default()
        };
        Setup {
            seed,
            config,
            policy,
            expect: policy,
            hosts: 1000 + rng.usize(0..=200),
            late_callbacks: rng.choice([0, 5, 20]).unwrap_or(5),
            late_results: rng.choice([0, 10, 50, 100]).unwrap_or(10),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Digest of the whole trace: the same setup gives the same digest.
    pub digest: u64,
    /// Requests accepted.
    pub requests: u64,
    /// Hops fetched.
    pub fetches: u64,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// Finished requests by outcome kind (`"ok"` or the error's kind).
    pub outcomes: BTreeMap<String, u64>,
}

/// What a request must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Any,
    Success,
    Disallowed,
    RobotsUnavailable,
    NotSuccess,
}

enum Due {
    /// A hop's result, and when the hop ended (since the start).
    Hop(FetchId, HopResult, Duration),
    Callback(Box<Callback<SimRequest>>),
    Enqueue(SimRequest),
}

struct World {
    setup: Setup,
    clock: Clock,
    s: Scheduler<SimRequest>,
    origin: Origin,
    checker: Checker,
    /// Completions and other events, by (offset, tie-break).
    queue: BTreeMap<(Duration, u64), Due>,
    ready: Vec<Callback<SimRequest>>,
    seq: u64,
    rng: fastrand::Rng,
    digest: Digest,
    expect: FxHashMap<u64, Expect>,
    report: Report,
    next_key: u64,
}

/// Runs one simulation, panicking at the first broken invariant.
///
/// Phase one enqueues requests to every host (some at once, some later), with faults on, and
/// runs until idle. Phase two turns faults off, lets the robots.txt unavailability pass, and
/// enqueues a fresh public and private page on a fifth of the hosts: each must end exactly as
/// the host's robots.txt says (fetched, disallowed, or robots.txt unavailable).
pub fn simulate(setup: &Setup) -> Report {
    let clock = Clock::new();
    let s =
        Scheduler::with_policy(setup.config.clone(), setup.policy.build()).expect("a valid setup");
    let mut world = World {
        setup: setup.clone(),
        clock,
        s,
        origin: Origin::new(setup.seed, setup.hosts, &setup.config),
        checker: {
            let mut checker = Checker::new(&setup.config, setup.expect, clock.now());
            if setup.late_results > 0 {
                checker.results_late();
            }
            checker
        },
        queue: BTreeMap::new(),
        ready: Vec::new(),
        seq: 0,
        rng: fastrand::Rng::with_seed(setup.seed.rotate_left(17) ^ 0xd1ce),
        digest: Digest::new(),
        expect: FxHashMap::default(),
        report: Report::default(),
        next_key: 0,
    };
    world.phase_one();
    world.run(Duration::from_secs(30 * 86_400));
    world.checker.check_drained(&world.s, true);
    world.phase_two();
    world.run(world.clock.elapsed() + Duration::from_secs(30 * 86_400));
    world.checker.check_drained(&world.s, true);
    assert!(
        world.expect.is_empty(),
        "{} requests never finished",
        world.expect.len()
    );
    world.report.digest = world.digest.0;
    world.report.requests = world.checker.counts.accepted;
    world.report.fetches = world.checker.counts.fetches;
    world.report.virtual_time = world.clock.elapsed();
    world.report
}

impl World {
    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn phase_one(&mut self) {
        let obeys = self.setup.policy.obeys_robots();
        let max_redirects = self.setup.config.max_redirects;
        let mut now_batch = Vec::new();
        for i in 0..self.origin.hosts.len() {
            for _ in 0..1 + self.rng.u32(0..3) {
                let n = self.rng.u32(0..1_000_000);
                let (path, mut expect) = match self.rng.u32(0..100) {
                    0..=44 => (format!("/p/{n}"), Expect::Any),
                    45..=54 => (format!("/private/{n}"), Expect::Any),
                    55..=57 => ("/admin".to_string(), Expect::Any),
                    58..=65 => {
                        let k = self.rng.u32(1..=12);
                        let e = if k > max_redirects {
                            Expect::NotSuccess
                        } else {
                            Expect::Any
                        };
                        (format!("/chain/{k}/{n}"), e)
                    }
                    66..=72 => {
                        let j = self.rng.usize(0..self.origin.hosts.len());
                        (format!("/hop/{j}/{n}"), Expect::Any)
                    }
                    73..=75 => (format!("/loop/{n}"), Expect::NotSuccess),
                    76..=77 => (format!("/self/{n}"), Expect::NotSuccess),
                    78..=82 => (format!("/gone/{n}"), Expect::NotSuccess),
                    83..=87 => (format!("/big/{n}"), Expect::NotSuccess),
                    88..=91 => (format!("/form/{n}"), Expect::Any),
                    92..=93 => (format!("/bad/{n}"), Expect::NotSuccess),
                    94..=95 => (format!("/nolocation/{n}"), Expect::Any),
                    _ => (format!("/rel/x/{n}"), Expect::Any),
                };
                let key = self.key();
                let mut request = SimRequest::new(key, self.origin.url(i, &path));
                request.post = path.starts_with("/form");
                request.priority = self.rng.i32(-1..=1);
                if self.rng.u32(0..100) < 3 {
                    request.panic_in = self.rng.choice([
                        Hook::Status,
                        Hook::Headers,
                        Hook::Url,
                        Hook::Success,
                        Hook::Error,
                        Hook::Done,
                    ]);
                }
                if self.rng.u32(0..100) < 8 {
                    for _ in 0..self.rng.u32(1..=2) {
                        let key = self.key();
                        let url = if self.rng.u32(0..10) == 0 {
                            Url::parse("ftp://files.test/x").expect("valid")
                        } else {
                            let j = self.rng.usize(0..self.origin.hosts.len());
                            let p = if self.rng.bool() { "p" } else { "private" };
                            self.origin.url(j, &format!("/{p}/f{key}"))
                        };
                        request.follow_ups.push((key, url));
                    }
                    request.follow_in_done = self.rng.bool();
                }
                // Requests that must end one way: plain pages on well-behaved hosts.
                let host = &self.origin.hosts[i];
                if request.panic_in.is_none() && !host.is_faulty() {
                    let private = path.starts_with("/private") || path.starts_with("/admin");
                    let clean_robots = !matches!(
                        host.robots,
                        RobotsKind::Down | RobotsKind::Flaky(_) | RobotsKind::RedirectTo(_)
                    );
                    if path.starts_with("/p/") && (!obeys || clean_robots) {
                        expect = Expect::Success;
                    } else if private && obeys && clean_robots {
                        expect = match self.origin.robots_disallow(i, &path) {
                            Some(true) => Expect::Disallowed,
                            _ => Expect::Success,
                        };
                    }
                }
                self.expect.insert(key, expect);
                if self.rng.u32(0..100) < 70 {
                    now_batch.push(request);
                } else {
                    let at = Duration::from_millis(self.rng.u64(0..120_000));
                    self.schedule(at, Due::Enqueue(request));
                }
            }
        }
        let now = self.clock.now();
        for request in &now_batch {
            self.checker.accepted(now, None, request);
        }
        let refused = self.s.extend(now, now_batch);
        assert!(refused.is_empty(), "valid requests refused: {refused:?}");
        self.pump();
    }

    fn phase_two(&mut self) {
        let obeys = self.setup.policy.obeys_robots();
        self.origin.faults = false;
        // Past any robots.txt unavailability and back-off from phase one.
        let config = &self.setup.config;
        self.clock.advance(
            config.robots.unavailable_for + config.max_retry_after + Duration::from_secs(1),
        );
        let now = self.clock.now();
        self.s.handle_timeout(now);
        self.pump();
        for i in (0..self.origin.hosts.len()).step_by(5) {
            for private in [false, true] {
                let key = self.key();
                let path = if private { "private" } else { "p" };
                let url = self.origin.url(i, &format!("/{path}/fresh{key}"));
                let expect = if !obeys {
                    Expect::Success
                } else {
                    match self.origin.robots_disallow(i, url.path()) {
                        None => Expect::RobotsUnavailable,
                        Some(true) => Expect::Disallowed,
                        Some(false) => Expect::Success,
                    }
                };
                self.expect.insert(key, expect);
                self.enqueue(SimRequest::new(key, url));
            }
        }
    }

    fn schedule(&mut self, at: Duration, due: Due) {
        self.seq += 1;
        // Equal times complete in a random order.
        let tie = (u64::from(self.rng.u32(..)) << 32) | (self.seq & 0xffff_ffff);
        self.queue.insert((at, tie), due);
    }

    fn enqueue(&mut self, request: SimRequest) {
        let now = self.clock.now();
        let key = request.key;
        let probe = request.clone();
        match self.s.enqueue(now, request) {
            Ok(id) => self.checker.accepted(now, Some(id), &probe),
            Err(e) => panic!("request {key} refused: {e}"),
        }
        self.pump();
    }

    /// Drains actions, carrying each out; runs ready callbacks one by one. Checks after
    /// every input, once its actions are drained.
    fn pump(&mut self) {
        loop {
            let now = self.clock.now();
            while let Some(action) = self.s.poll_action() {
                match action {
                    Action::Fetch(fetch) => {
                        self.checker.fetch_started(now, &fetch);
                        self.digest.time(self.clock.elapsed());
                        self.digest.bytes(fetch.url.as_str().as_bytes());
                        let (latency, result) = self.origin.respond(&self.clock, &fetch);
                        let ended = self.clock.elapsed() + latency;
                        let at = if self.rng.u32(0..100) < self.setup.late_results {
                            ended + Duration::from_micros(self.rng.u64(1..=50_000))
                        } else {
                            ended
                        };
                        self.schedule(at, Due::Hop(fetch.id, result, ended));
                    }
                    Action::Callback(callback) => {
                        self.checker.callback_issued(now, &callback);
                        if self.rng.u32(0..100) < self.setup.late_callbacks {
                            let later = Duration::from_millis(self.rng.u64(1..=500));
                            let at = self.clock.elapsed() + later;
                            self.schedule(at, Due::Callback(Box::new(callback)));
                        } else {
                            self.ready.push(callback);
                        }
                    }
                    Action::Persist(p) => self.checker.persisted(p),
                    Action::HandOff(_) => unreachable!("the simulation runs without partitions"),
                }
            }
            self.checker.check(&self.s);
            if self.ready.is_empty() {
                break;
            }
            let callback = self.ready.remove(0);
            self.run_callback(callback);
        }
    }

    fn run_callback(&mut self, callback: Callback<SimRequest>) {
        let now = self.clock.now();
        let id = callback.id();
        let last = callback.outcome().is_some();
        let redirect = callback.redirect.is_some();
        let report = callback.run();
        self.checker.callback_returned(now, &report);
        let back = self
            .s
            .handle_callback(now, report)
            .unwrap_or_else(|e| panic!("handle_callback refused a callback it lent: {e}"));
        if redirect {
            self.checker.redirected(now, id);
        }
        self.checker.callback_handled(id, last, back.as_ref());
        if let Some(request) = back {
            self.judge(&request);
        }
    }

    fn judge(&mut self, request: &SimRequest) {
        let kind = request.outcome_kind().expect("finished").to_string();
        self.digest.u64(request.key);
        self.digest.bytes(kind.as_bytes());
        *self.report.outcomes.entry(kind.clone()).or_default() += 1;
        let expect = self.expect.remove(&request.key).unwrap_or(Expect::Any);
        let fine = match expect {
            Expect::Any => true,
            Expect::Success => kind == "ok",
            Expect::Disallowed => kind == "disallowed",
            Expect::RobotsUnavailable => kind == "robots_unavailable",
            Expect::NotSuccess => kind != "ok",
        };
        assert!(
            fine,
            "request {} ({}) should end {expect:?} but ended {kind}: {:?}",
            request.key, request.url, request.log
        );
    }

    fn deliver(&mut self, due: Due) {
        match due {
            Due::Hop(id, result, ended) => {
                // The scheduler takes the hop's end as `now`, however late it hears of it.
                let now = self.clock.at(ended);
                self.digest.u64(id.request.as_u64());
                match &result {
                    HopResult::Response(r) => self.digest.u64(u64::from(r.status.as_u16())),
                    HopResult::Failed(e) => self.digest.bytes(e.kind.as_str().as_bytes()),
                }
                self.checker.hop_ended(now, id, &result);
                self.s
                    .handle_fetch(now, id, result)
                    .unwrap_or_else(|e| panic!("handle_fetch refused a fetch it issued: {e}"));
            }
            Due::Callback(callback) => self.run_callback(*callback),
            Due::Enqueue(request) => {
                self.enqueue(request);
                return;
            }
        }
        self.pump();
    }

    /// Runs until idle, like a driver: deliver what is due, else wake at the scheduler's
    /// deadline, else sleep until the next completion.
    fn run(&mut self, limit: Duration) {
        let mut stalls = 0;
        loop {
            if self.s.is_idle() && self.queue.is_empty() {
                return;
            }
            let now = self.clock.now();
            let elapsed = self.clock.elapsed();
            if let Some(entry) = self.queue.first_entry() {
                if entry.key().0 <= elapsed {
                    let due = entry.remove();
                    self.deliver(due);
                    stalls = 0;
                    continue;
                }
            }
            let deadline = self.s.poll_timeout();
            if deadline.is_some_and(|t| t <= now) {
                let before = self.checker.counts.fetches;
                self.s.handle_timeout(now);
                self.pump();
                // A deadline that stays in the past without anything happening spins a driver.
                stalls = if self.checker.counts.fetches == before {
                    stalls + 1
                } else {
                    0
                };
                assert!(
                    stalls < 3,
                    "poll_timeout stays at {deadline:?} <= now, nothing starts"
                );
                continue;
            }
            let next_event = self
                .queue
                .first_key_value()
                .map(|(k, _)| self.clock.at(k.0));
            let next = match (deadline, next_event) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or_else(|| {
                    panic!(
                        "stuck at {:?}: not idle, no deadline, nothing in flight: {:?}",
                        elapsed,
                        self.s.stats()
                    )
                }),
            };
            // Sometimes wake early: nothing may be due before the announced deadline.
            if self.rng.u32(0..40) == 0 {
                let early = now + (next - now) / 2;
                self.clock.advance_to(early);
                self.s.handle_timeout(early);
                if let Some(action) = self.s.poll_action() {
                    panic!(
                        "at {:?}, before the deadline {deadline:?}, handle_timeout produced {action:?}",
                        self.clock.elapsed()
                    );
                }
                self.checker.check(&self.s);
            }
            self.clock.advance_to(next);
            stalls = 0;
            assert!(
                self.clock.elapsed() <= limit,
                "not drained after {:?} of virtual time: {:?}",
                self.clock.elapsed(),
                self.s.stats()
            );
        }
    }
}

// ----- fuzzing -----

/// The bytes of a fuzz input, read front to back; zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.byte() as usize % n
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

const FUZZ_URLS: &[&str] = &[
    "http://a.test/",
    "http://a.test/p",
    "http://a.test/private/x",
    "http://a.test/x?y=1",
    "http://b.test/",
    "http://b.test/private",
    "http://b.test/a/b",
    "http://b.test/p?q",
    "https://a.test/p",
    "http://a.test:8080/p",
    "http://c.test/private/y",
    "http://c.test/pub",
    "http://127.0.0.1/p",
    "http://[::1]:8080/private",
    "http://A.TEST/Private",
    "http://u:pw@b.test/p#frag",
    "http://a.test/robots.txt",
    "ftp://a.test/",
    "mailto:x@a.test",
    "data:,x",
    "file:///etc/passwd",
];

const FUZZ_LOCATIONS: &[&str] = &[
    "/p",
    "/private/z",
    "../up",
    "http://b.test/moved",
    "https://c.test/private/1",
    "//a.test:8080/x",
    "ftp://a.test/f",
    "http://[",
    "",
    "?q=2",
    "#frag",
    "http://a.test/",
    "/robots.txt",
    "http://c.test/robots.txt",
];

const FUZZ_ROBOTS: &[&str] = &[
    "User-agent: *\nDisallow: /private\n",
    "User-agent: *\nDisallow: /\n",
    "User-agent: *\nCrawl-delay: 2\nDisallow: /private\n",
    "User-agent: *\nAllow: /\n",
    "",
    "User-agent: *\nCrawl-delay: 0.5\n",
    "User-agent: *\nCrawl-delay: 1000\nDisallow: /p\n",
    "User-agent: *\nDisallow: /a\nCrawl-delay: 7\nDisallow: /x\n",
];

const FUZZ_KINDS: &[TransportErrorKind] = &[
    TransportErrorKind::Dns,
    TransportErrorKind::Connect,
    TransportErrorKind::Timeout,
    TransportErrorKind::Reset,
    TransportErrorKind::Tls,
    TransportErrorKind::Protocol,
    TransportErrorKind::Decode,
    TransportErrorKind::Proxy,
    TransportErrorKind::Other,
];

const FUZZ_STEPS: &[Duration] = &[
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(86_400),
];

struct Fuzz {
    clock: Clock,
    s: Scheduler<SimRequest>,
    checker: Checker,
    fetches: Vec<Fetch>,
    callbacks: Vec<Callback<SimRequest>>,
    /// Reports run but not handed back: with whether final, and whether a redirect.
    reports: Vec<(CallbackReport<SimRequest>, bool, bool)>,
    stale: Vec<FetchId>,
    ids: Vec<RequestId>,
    next_key: u64,
    /// Some robots.txt job may have been dropped unfetched (stop, take_unfinished).
    dropped_jobs: bool,
}

/// Decodes `data` into a configuration and a sequence of inputs (enqueues of good and bad
/// URLs, hop results of any kind in any order, stale and unknown ids, callbacks in any order,
/// clock moves, cancel, stop and resume, take_unfinished), applies them with the [`Checker`]
/// watching after every step, then answers everything plainly and checks that it all drains.
/// Panics on a broken invariant.
pub fn fuzz_one(data: &[u8]) {
    let mut input = Input { data, pos: 0 };
    let (config, kind) = fuzz_config(&mut input);
    let clock = Clock::new();
    let s = Scheduler::with_policy(config.clone(), kind.build()).expect("a valid config");
    let mut f = Fuzz {
        clock,
        checker: Checker::new(&config, kind, clock.now()),
        s,
        fetches: Vec::new(),
        callbacks: Vec::new(),
        reports: Vec::new(),
        stale: Vec::new(),
        ids: Vec::new(),
        next_key: 0,
        dropped_jobs: false,
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 10_000 {
        steps += 1;
        f.step(&mut input);
        f.drain();
    }
    f.finish();
}

fn fuzz_config(input: &mut Input<'_>) -> (Config, PolicyKind) {
    let kind = match input.byte() % 4 {
        0 => PolicyKind::Fifo,
        n => PolicyKind::Polite {
            per_host: 1 + u32::from(input.byte() % 3),
            delay: input.pick(&[
                Duration::ZERO,
                Duration::from_millis(1),
                Duration::from_millis(250),
                Duration::from_secs(1),
                Duration::from_secs(5),
            ]),
            allow_all: n == 1,
            adaptive: input.byte() % 4 == 0,
        },
    };
    let config = Config {
        concurrency: 1 + input.below(6),
        timeout: input.pick(&[Duration::from_secs(1), Duration::from_secs(30)]),
        max_body_size: input.pick(&[1, 16, 1024]),
        max_redirects: input.below(5) as u32,
        max_retries: input.below(4) as u32,
        retry_base: input.pick(&[
            Duration::ZERO,
            Duration::from_millis(10),
            Duration::from_secs(1),
        ]),
        retry_max: input.pick(&[Duration::from_secs(1), Duration::from_secs(60)]),
        max_retry_after: input.pick(&[
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(300),
        ]),
        robots: RobotsConfig {
            ttl: input.pick(&[
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_secs(86_400),
            ]),
            cache_size: 1 + input.below(4),
            max_size: input.pick(&[16, 40, 500 << 10]),
            max_redirects: input.below(6) as u32,
            retry_delay: input.pick(&[
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(30),
            ]),
            max_attempts: 1 + input.below(3) as u32,
            unavailable_for: input.pick(&[
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(600),
            ]),
            max_crawl_delay: input.pick(&[Duration::from_secs(1), Duration::from_secs(60)]),
        },
        persist: input.byte() % 2 == 0,
        seed: u64::from(input.byte()),
        ..Config::default()
    };
    (config, kind)
}

impl Fuzz {
    fn request(&mut self, input: &mut Input<'_>) -> Option<SimRequest> {
        let url = Url::parse(input.pick(FUZZ_URLS)).ok()?;
        self.next_key += 1;
        let mut request = SimRequest::new(self.next_key, url);
        let options = input.byte();
        request.post = options & 1 != 0;
        request.priority = i32::from(options >> 6) - 1;
        request.panic_in = match (options >> 1) & 7 {
            0 => Some(Hook::Status),
            1 => Some(Hook::Url),
            2 => Some(Hook::Success),
            3 => Some(Hook::Done),
            4 => Some(Hook::Error),
            _ => None,
        };
        if options & 0x10 != 0 {
            for _ in 0..1 + input.below(2) {
                if let Ok(url) = Url::parse(input.pick(FUZZ_URLS)) {
                    self.next_key += 1;
                    request.follow_ups.push((self.next_key, url));
                }
            }
            request.follow_in_done = options & 0x20 != 0;
        }
        Some(request)
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let now = self.clock.now();
        match input.byte() % 18 {
            0 | 1 => {
                let Some(request) = self.request(input) else {
                    return;
                };
                let probe = request.clone();
                match self.s.enqueue(now, request) {
                    Ok(id) => {
                        self.checker.accepted(now, Some(id), &probe);
                        self.ids.push(id);
                    }
                    Err(e) => {
                        assert_eq!(e.request.key, probe.key, "a refused request comes back");
                        assert!(
                            !matches!(probe.url.scheme(), "http" | "https"),
                            "{} refused: {e}",
                            probe.url
                        );
                    }
                }
            }
            2 => {
                let mut batch = Vec::new();
                for _ in 0..1 + input.below(4) {
                    batch.extend(self.request(input));
                }
                let keys: Vec<u64> = batch.iter().map(|r| r.key).collect();
                let probes = batch.clone();
                let refused = self.s.extend(now, batch);
                let refused: Vec<u64> = refused.iter().map(|e| e.request.key).collect();
                for (key, probe) in keys.iter().zip(&probes) {
                    let web = matches!(probe.url.scheme(), "http" | "https");
                    assert_eq!(refused.contains(key), !web, "extend of {}", probe.url);
                    if web {
                        self.checker.accepted(now, None, probe);
                    }
                }
            }
            3 => {
                let Some(request) = self.request(input) else {
                    return;
                };
                let probe = request.clone();
                if let Ok(id) = self.s.restore(now, request) {
                    self.checker.restored(now, id, &probe);
                    self.ids.push(id);
                }
            }
            4..=6 => {
                if self.fetches.is_empty() {
                    return;
                }
                let i = input.below(self.fetches.len());
                let fetch = self.fetches.swap_remove(i);
                let result = hop_result(input, &fetch, &self.clock);
                self.checker.hop_ended(now, fetch.id, &result);
                self.s
                    .handle_fetch(now, fetch.id, result)
                    .unwrap_or_else(|e| panic!("handle_fetch refused {:?}: {e}", fetch.id));
                if self.stale.len() < 64 {
                    self.stale.push(fetch.id);
                }
            }
            7 => {
                // A stale or unknown fetch id: refused, and nothing changes.
                let id = if !self.stale.is_empty() && input.byte() % 2 == 0 {
                    self.stale[input.below(self.stale.len())]
                } else {
                    FetchId {
                        request: RequestId {
                            index: u32::from(input.byte() % 8),
                            generation: u32::from(input.byte() % 4),
                        },
                        hop: u32::from(input.byte() % 4),
                    }
                };
                if self.fetches.iter().any(|f| f.id == id) {
                    return;
                }
                let stats = self.s.stats();
                let result = HopResult::Response(HopResponse::new(StatusCode::OK));
                assert!(
                    self.s.handle_fetch(now, id, result).is_err(),
                    "stale {id:?} accepted"
                );
                assert_eq!(self.s.stats(), stats, "a stale fetch changed the counters");
                assert!(self.s.poll_action().is_none(), "a stale fetch made actions");
            }
            8 | 9 => {
                if self.callbacks.is_empty() {
                    return;
                }
                let callback = self
                    .callbacks
                    .swap_remove(input.below(self.callbacks.len()));
                let last = callback.outcome().is_some();
                let redirect = callback.redirect.is_some();
                let report = callback.run();
                if input.byte() % 2 == 0 {
                    self.hand_back(report, last, redirect);
                } else {
                    self.reports.push((report, last, redirect));
                }
            }
            10 => {
                if self.reports.is_empty() {
                    return;
                }
                let (report, last, redirect) =
                    self.reports.swap_remove(input.below(self.reports.len()));
                self.hand_back(report, last, redirect);
            }
            11 => {
                // A report for a request that has no callbacks out: refused, nothing changes.
                let id = if !self.ids.is_empty() && input.byte() % 2 == 0 {
                    self.ids[input.below(self.ids.len())]
                } else {
                    RequestId {
                        index: u32::from(input.byte() % 8),
                        generation: u32::from(input.byte() % 4),
                    }
                };
                let lent = self.callbacks.iter().any(|c| c.id() == id)
                    || self.reports.iter().any(|r| r.0.id() == id);
                if lent {
                    return;
                }
                self.next_key += 1;
                let url = Url::parse("http://a.test/forged").expect("valid");
                let report = CallbackReport {
                    id,
                    request: SimRequest::new(self.next_key, url.clone()),
                    follow_ups: vec![SimRequest::new(self.next_key + 1, url)],
                    panic: None,
                    succeeded: Some(true),
                };
                self.next_key += 1;
                let stats = self.s.stats();
                assert!(
                    self.s.handle_callback(now, report).is_err(),
                    "a forged report for {id:?} was accepted"
                );
                assert_eq!(
                    self.s.stats(),
                    stats,
                    "a forged report changed the counters"
                );
                assert!(
                    self.s.poll_action().is_none(),
                    "a forged report made actions"
                );
            }
            12 => {
                let step = input.pick(FUZZ_STEPS);
                self.clock.advance(step);
                self.s.handle_timeout(self.clock.now());
            }
            13 => {
                if let Some(t) = self.s.poll_timeout() {
                    self.clock.advance_to(t);
                }
                self.s.handle_timeout(self.clock.now());
            }
            14 => {
                // A spurious wake-up before the deadline does nothing.
                let deadline = self.s.poll_timeout();
                self.s.handle_timeout(now);
                if deadline.is_none_or(|t| t > now) {
                    if let Some(action) = self.s.poll_action() {
                        panic!("handle_timeout before the deadline {deadline:?} made {action:?}");
                    }
                }
                let _ = self.s.wait_summary(now);
                for host in ["a.test", "b.test", "c.test", "127.0.0.1", "[::1]"] {
                    let _ = self.s.host_wait(now, host);
                }
            }
            15 => {
                let id = if !self.ids.is_empty() && input.byte() % 4 != 0 {
                    self.ids[input.below(self.ids.len())]
                } else {
                    RequestId {
                        index: u32::from(input.byte() % 8),
                        generation: u32::from(input.byte() % 4),
                    }
                };
                let unfinished = self.s.cancel(now, id);
                self.checker.cancel_returned(id, unfinished);
            }
            16 => {
                if input.byte() % 2 == 0 {
                    self.s.stop();
                    self.dropped_jobs = true;
                } else {
                    self.s.resume(now);
                }
            }
            _ => {
                if input.byte() % 2 == 0 {
                    self.dropped_jobs = true;
                    for (id, request) in self.s.take_unfinished() {
                        self.checker.taken(id, &request);
                    }
                }
            }
        }
    }

    fn hand_back(&mut self, report: CallbackReport<SimRequest>, last: bool, redirect: bool) {
        let now = self.clock.now();
        let id = report.id();
        self.checker.callback_returned(now, &report);
        let back = self
            .s
            .handle_callback(now, report)
            .unwrap_or_else(|e| panic!("handle_callback refused a callback it lent: {e}"));
        if redirect {
            self.checker.redirected(now, id);
        }
        self.checker.callback_handled(id, last, back.as_ref());
    }

    fn drain(&mut self) {
        let now = self.clock.now();
        while let Some(action) = self.s.poll_action() {
            match action {
                Action::Fetch(fetch) => {
                    self.checker.fetch_started(now, &fetch);
                    if let Purpose::Request(id) = fetch.purpose {
                        if self.ids.len() < 256 && !self.ids.contains(&id) {
                            self.ids.push(id);
                        }
                    }
                    self.fetches.push(fetch);
                }
                Action::Callback(callback) => {
                    self.checker.callback_issued(now, &callback);
                    if self.ids.len() < 256 && !self.ids.contains(&callback.id()) {
                        self.ids.push(callback.id());
                    }
                    self.callbacks.push(callback);
                }
                Action::Persist(p) => self.checker.persisted(p),
                Action::HandOff(_) => unreachable!("the simulation runs without partitions"),
            }
        }
        self.checker.check(&self.s);
    }

    /// Liveness: answer everything plainly, run every callback, follow the deadlines.
    fn finish(&mut self) {
        if self.s.is_stopped() {
            self.s.resume(self.clock.now());
            self.drain();
        }
        for _ in 0..100_000 {
            let now = self.clock.now();
            if let Some(fetch) = self.fetches.pop() {
                let result = if fetch.purpose == Purpose::Robots {
                    status_only(404)
                } else {
                    status_only(200)
                };
                self.checker.hop_ended(now, fetch.id, &result);
                self.s
                    .handle_fetch(now, fetch.id, result)
                    .unwrap_or_else(|e| panic!("handle_fetch refused {:?}: {e}", fetch.id));
            } else if let Some((report, last, redirect)) = self.reports.pop() {
                self.hand_back(report, last, redirect);
            } else if let Some(callback) = self.callbacks.pop() {
                let last = callback.outcome().is_some();
                let redirect = callback.redirect.is_some();
                self.hand_back(callback.run(), last, redirect);
            } else if self.s.is_idle() {
                self.checker.check_drained(&self.s, !self.dropped_jobs);
                return;
            } else {
                let deadline = self.s.poll_timeout().unwrap_or_else(|| {
                    panic!(
                        "stuck: not idle, no deadline, nothing out: {:?}",
                        self.s.stats()
                    )
                });
                self.clock.advance_to(deadline);
                self.s.handle_timeout(self.clock.now());
            }
            self.drain();
        }
        panic!("not drained after 100,000 steps: {:?}", self.s.stats());
    }
}

/// A hop result of any kind, as the bytes say.
fn hop_result(input: &mut Input<'_>, fetch: &Fetch, clock: &Clock) -> HopResult {
    let robots = fetch.purpose == Purpose::Robots;
    let mut response = match input.byte() % 8 {
        0 | 1 => {
            let body = if robots {
                input.pick(FUZZ_ROBOTS).as_bytes()
            } else {
                PAGE
            };
            let mut response = HopResponse::new(StatusCode::OK);
            let limit = usize::try_from(fetch.max_body_size).unwrap_or(usize::MAX);
            if input.byte() % 4 == 0 {
                // Longer than the limit: cut there, as drivers do.
                let mut long = body.to_vec();
                while long.len() <= limit && long.len() < 4096 {
                    long.extend_from_slice(b"# padding\n");
                }
                response.truncated = long.len() > limit;
                long.truncate(limit);
                response.body = long.into();
            } else {
                response.body = Bytes::copy_from_slice(&body[..body.len().min(limit)]);
                response.truncated = body.len() > limit;
            }
            response
        }
        2 => {
            let status = input.pick(&[301u16, 302, 303, 307, 308]);
            let mut response = HopResponse::new(StatusCode::from_u16(status).expect("valid"));
            match input.byte() % 8 {
                0 => {}
                1 => {
                    let here = HeaderValue::from_str(fetch.url.as_str()).expect("valid");
                    response.headers.insert(LOCATION, here);
                }
                _ => {
                    let to = HeaderValue::from_static(input.pick(FUZZ_LOCATIONS));
                    response.headers.insert(LOCATION, to);
                }
            }
            response
        }
        3 => HopResponse::new(
            StatusCode::from_u16(input.pick(&[400u16, 401, 403, 404, 410, 418])).expect("valid"),
        ),
        4 => {
            let status = input.pick(&[429u16, 503]);
            let mut response = HopResponse::new(StatusCode::from_u16(status).expect("valid"));
            let wall = clock.wall();
            match input.byte() % 6 {
                0 => {}
                1 => {
                    let secs = input.pick(&[0u64, 1, 5, 100, 100_000]);
                    response
                        .headers
                        .insert(RETRY_AFTER, HeaderValue::from(secs));
                }
                2 | 3 => {
                    let at = wall + Duration::from_secs(u64::from(input.byte()));
                    let at = HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("date");
                    response.headers.insert(RETRY_AFTER, at);
                    if input.byte() % 4 != 0 {
                        let date = HeaderValue::from_str(&httpdate::fmt_http_date(wall));
                        response.headers.insert(DATE, date.expect("date"));
                    }
                }
                4 => {
                    response
                        .headers
                        .insert(RETRY_AFTER, HeaderValue::from_static("soon"));
                }
                _ => {
                    response.headers.insert(
                        RETRY_AFTER,
                        HeaderValue::from_static("18446744073709551615"),
                    );
                }
            }
            response
        }
        5 => HopResponse::new(
            StatusCode::from_u16(input.pick(&[500u16, 502, 504, 599])).expect("valid"),
        ),
        6 => {
            let kind = input.pick(FUZZ_KINDS);
            return HopResult::Failed(TransportError::new(kind, "fuzzed failure"));
        }
        _ => HopResponse::new(
            StatusCode::from_u16(input.pick(&[100u16, 204, 206, 300, 304, 399, 600, 999]))
                .expect("valid"),
        ),
    };
    response.version = input.pick(&[Version::HTTP_11, Version::HTTP_2, Version::HTTP_10]);
    HopResult::Response(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_like_the_parser() {
        let cap = Duration::from_secs(60);
        let body = b"User-agent: *\nCrawl-delay: 2\nDisallow: /private\n# Disallow: /p\n";
        let rules = Rules::parse(body, cap);
        assert_eq!(rules.crawl_delay, Some(Duration::from_secs(2)));
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(!rules.allows(&url("http://a.test/private/1")));
        assert!(rules.allows(&url("http://a.test/p")));
        for variant in FUZZ_ROBOTS.iter().chain([&DISALLOW]) {
            for cut in 16..=variant.len() {
                let body = &variant.as_bytes()[..cut];
                let rules = Rules::parse(body, cap);
                let Some(robot) = texting_robots::Robot::new("downpour", body).ok() else {
                    panic!("parser refused {body:?}");
                };
                for u in FUZZ_URLS.iter().filter(|u| u.starts_with("http")) {
                    assert_eq!(rules.allows(&url(u)), robot.allowed(u), "{u} with {body:?}");
                }
                let delay = robot.delay.and_then(|d| robots::crawl_delay(d, cap));
                assert_eq!(rules.crawl_delay, delay, "{body:?}");
            }
        }
    }
}
